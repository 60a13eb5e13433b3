//! The flags of `strait observe` and what they ask the agents for.

use std::ffi::OsStr;

use anyhow::bail;
use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

use super::DEFAULT_LAST;
use crate::admin::FlowsQuery;
use crate::flows::{Criterion, FilterError, FlowFilter, PodSelector, Verdict};

/// Arguments of `strait observe`.
#[derive(Debug, Clone, clap::Args)]
pub struct ObserveArgs {
    /// Show the last N matching flows [default: 20; every match with --since or --until; 0
    /// with --follow].
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Keep running and print flows as they are recorded.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Compact)]
    pub output: Output,
    /// Which flows to show (boxed: the flags make a large struct). Last, so its help heading
    /// covers only its own flags.
    #[command(flatten)]
    pub filters: Box<FilterArgs>,
}

/// The filter flags of `strait observe`, with Hubble's names and combining rules.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Filters (a repeated flag ORs its values, different flags AND)")]
pub struct FilterArgs {
    /// Flows recorded in, or with an endpoint in, this cluster.
    #[arg(long, value_name = "CLUSTER",
          value_parser = Flag(|s| Criterion::parse("cluster", s).map(|_| s.to_string())))]
    pub cluster: Vec<String>,
    /// Flows with either endpoint in this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("namespace", s).map(|_| s.to_string())))]
    pub namespace: Vec<String>,
    /// Flows whose source is in this namespace.
    #[arg(long, value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("from-namespace", s)))]
    pub from_namespace: Vec<Criterion>,
    /// Flows whose destination is in this namespace.
    #[arg(long, value_name = "NAMESPACE",
          value_parser = Flag(|s| Criterion::parse("to-namespace", s)))]
    pub to_namespace: Vec<Criterion>,
    /// Flows with either endpoint a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| s.parse::<PodSelector>()))]
    pub pod: Vec<PodSelector>,
    /// Flows whose source is a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| Criterion::parse("from-pod", s)))]
    pub from_pod: Vec<Criterion>,
    /// Flows whose destination is a pod whose name starts with POD.
    #[arg(long, value_name = "[NS/]POD",
          value_parser = Flag(|s| Criterion::parse("to-pod", s)))]
    pub to_pod: Vec<Criterion>,
    /// Flows with either endpoint matching a label selector: `key=value`, `key!=value`, `key`,
    /// `!key`, `key in (a,b)`, `key notin (a,b)`; commas AND requirements; keys may carry a
    /// `k8s:` or `any:` prefix.
    #[arg(long, short = 'l', value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("label", s)))]
    pub label: Vec<Criterion>,
    /// Flows whose source matches a label selector (as --label).
    #[arg(long, value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("from-label", s)))]
    pub from_label: Vec<Criterion>,
    /// Flows whose destination matches a label selector (as --label).
    #[arg(long, value_name = "SELECTOR",
          value_parser = Flag(|s| Criterion::parse("to-label", s)))]
    pub to_label: Vec<Criterion>,
    /// Flows with this verdict: FORWARDED, DROPPED, ERROR or AUDIT.
    #[arg(long, value_name = "VERDICT",
          value_parser = Flag(|s| s.parse::<Verdict>()))]
    pub verdict: Vec<Verdict>,
    /// Flows of this protocol: TCP (HTTP included), UDP, HTTP (either version), HTTP/1.1 or
    /// HTTP/2.
    #[arg(long, value_name = "PROTOCOL",
          value_parser = Flag(|s| Criterion::parse("protocol", s)))]
    pub protocol: Vec<Criterion>,
    /// Flows with this port on either side.
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("port", s)))]
    pub port: Vec<Criterion>,
    /// Flows with this source port.
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("from-port", s)))]
    pub from_port: Vec<Criterion>,
    /// Flows with this destination port (the backend's, after service translation).
    #[arg(long, value_name = "PORT",
          value_parser = Flag(|s| Criterion::parse("to-port", s)))]
    pub to_port: Vec<Criterion>,
    /// HTTP flows answered with this status: `404`, `4xx` or `5xx+` (500 and above).
    #[arg(long, value_name = "STATUS",
          value_parser = Flag(|s| Criterion::parse("http-status", s)))]
    pub http_status: Vec<Criterion>,
    /// HTTP flows with this request method (case-insensitive).
    #[arg(long, value_name = "METHOD",
          value_parser = Flag(|s| Criterion::parse("http-method", s)))]
    pub http_method: Vec<Criterion>,
    /// HTTP flows whose path matches this regular expression anywhere (anchor with ^ and $).
    #[arg(long, value_name = "REGEX",
          value_parser = Flag(|s| Criterion::parse("http-path", s)))]
    pub http_path: Vec<Criterion>,
    /// Flows recorded at or after TIME: RFC 3339 (2024-11-25T06:01:02Z) or a duration ago (5m,
    /// 1h30m). Without --last, shows every such flow.
    #[arg(long, value_name = "TIME",
          value_parser = Flag(|s| Criterion::parse("since", s)))]
    pub since: Option<Criterion>,
    /// Flows recorded at or before TIME (as --since).
    #[arg(long, value_name = "TIME", conflicts_with = "follow",
          value_parser = Flag(|s| Criterion::parse("until", s)))]
    pub until: Option<Criterion>,
}

/// How flows are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow, like `hubble observe`.
    Compact,
    /// Aligned columns under a header.
    Table,
    /// One FlowRecord JSON object per line, with stable field names.
    Json,
}

/// A clap value parser whose errors are the [`FilterError`]s, which name the flag themselves.
#[derive(Clone, Copy)]
struct Flag<T>(fn(&str) -> Result<T, FilterError>);

impl<T: Clone + Send + Sync + 'static> TypedValueParser for Flag<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let s = value
            .to_str()
            .ok_or_else(|| clap::Error::new(ErrorKind::InvalidUtf8).with_cmd(cmd))?;
        (self.0)(s).map_err(|e| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{e}\n")).with_cmd(cmd)
        })
    }
}

impl FilterArgs {
    /// The filter the flags describe, in flag order.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        let mut f = FlowFilter::new();
        for c in &self.cluster {
            f.push(Criterion::parse("cluster", c)?);
        }
        for ns in &self.namespace {
            f.push(Criterion::parse("namespace", ns)?);
        }
        for c in self.from_namespace.iter().chain(&self.to_namespace) {
            f.push(c.clone());
        }
        for p in &self.pod {
            f.push(Criterion::Pod(p.clone()));
        }
        for c in [
            &self.from_pod,
            &self.to_pod,
            &self.label,
            &self.from_label,
            &self.to_label,
        ] {
            f.extend(c.iter().cloned());
        }
        for v in &self.verdict {
            f.push(Criterion::Verdict(*v));
        }
        for c in [
            &self.protocol,
            &self.port,
            &self.from_port,
            &self.to_port,
            &self.http_status,
            &self.http_method,
            &self.http_path,
        ] {
            f.extend(c.iter().cloned());
        }
        f.extend(self.since.iter().chain(&self.until).cloned());
        Ok(f)
    }
}

impl ObserveArgs {
    /// The filter the flags describe, in flag order.
    pub fn filter(&self) -> Result<FlowFilter, FilterError> {
        self.filters.filter()
    }

    /// How many past flows to show; `None` for every matching flow the agents hold.
    pub fn last(&self) -> Option<usize> {
        let bounded = self.filters.since.is_some() || self.filters.until.is_some();
        match self.last {
            Some(n) => Some(n),
            None if bounded => None,
            None if self.follow => Some(0),
            None => Some(DEFAULT_LAST),
        }
    }

    /// The request every agent gets.
    pub fn query(&self) -> anyhow::Result<FlowsQuery> {
        let f = &self.filters;
        if let (Some(since @ Criterion::Since(from)), Some(until @ Criterion::Until(to))) =
            (&f.since, &f.until)
            && from > to
        {
            bail!("--since {since} is later than --until {until}");
        }
        Ok(FlowsQuery {
            last: self.last(),
            follow: self.follow,
            filter: self.filter()?,
        })
    }
}
