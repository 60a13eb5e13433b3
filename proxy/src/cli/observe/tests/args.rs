use super::*;
use crate::cli::observe::*;
use crate::flows::Criterion;

fn keys(a: &ObserveArgs) -> Vec<String> {
    a.filter()
        .expect("filter")
        .criteria()
        .iter()
        .map(|c| format!("{}={c}", c.key()))
        .collect()
}

#[test]
fn flags() {
    let a = parse(&[
        "--cluster",
        "c1",
        "-n",
        "demo",
        "--pod",
        "demo/front",
        "--verdict",
        "dropped",
        "--verdict",
        "ERROR",
        "-f",
        "-o",
        "table",
    ])
    .expect("parses");
    assert!(a.follow);
    assert_eq!(a.output, Output::Table);
    assert_eq!(a.last(), Some(0));
    assert_eq!(
        keys(&a),
        [
            "cluster=c1",
            "namespace=demo",
            "pod=demo/front",
            "verdict=DROPPED",
            "verdict=ERROR"
        ]
    );

    let a = parse(&[]).expect("parses");
    assert_eq!(
        (a.last(), a.output, a.follow),
        (Some(DEFAULT_LAST), Output::Compact, false)
    );
    assert!(parse(&["--verdict", "nope"]).is_err());
    assert!(parse(&["--pod", ""]).is_err());
}

#[test]
fn new_filter_flags() {
    let a = parse(&[
        "--from-namespace",
        "demo",
        "--to-namespace",
        "other",
        "--from-pod",
        "demo/frontend",
        "--to-pod",
        "db-",
        "-l",
        "k8s:app=web",
        "--label",
        "tier!=db,canary",
        "--from-label",
        "app in (a,b)",
        "--to-label",
        "!app",
        "--protocol",
        "http",
        "--protocol",
        "udp",
        "--port",
        "80",
        "--from-port",
        "41000",
        "--to-port",
        "8080",
        "--http-status",
        "5XX+",
        "--http-status",
        "404",
        "--http-method",
        "get",
        "--http-path",
        "^/api/",
        "--since",
        "2024-11-25T07:00:00+01:00",
        "--until",
        "2024-11-25T06:30:00.5Z",
        "-o",
        "json",
    ])
    .expect("parses");
    assert_eq!(a.output, Output::Json);
    assert_eq!(
        keys(&a),
        [
            "from-namespace=demo",
            "to-namespace=other",
            "from-pod=demo/frontend",
            "to-pod=db-",
            "label=k8s:app=web",
            "label=tier!=db,canary",
            "from-label=app in (a,b)",
            "to-label=!app",
            "protocol=HTTP",
            "protocol=UDP",
            "port=80",
            "from-port=41000",
            "to-port=8080",
            "http-status=5xx+",
            "http-status=404",
            "http-method=GET",
            "http-path=^/api/",
            "since=2024-11-25T06:00:00Z",
            "until=2024-11-25T06:30:00.500Z",
        ]
    );
    // A time bound shows every flow in it unless --last says otherwise.
    assert_eq!(a.last(), None);
    let q = a.query().expect("query");
    assert_eq!((q.last, q.follow), (None, false));
    assert_eq!(q.filter.criteria().len(), 19);
}

#[test]
fn since_is_absolute_and_composes_with_last() {
    let before = SystemTime::now();
    let a = parse(&["--since", "1h30m", "--last", "5"]).expect("parses");
    let after = SystemTime::now();
    let hour_and_half = Duration::from_secs(90 * 60);
    match &a.filters.since {
        Some(Criterion::Since(t)) => {
            assert!(
                *t >= before - hour_and_half && *t <= after - hour_and_half,
                "{t:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let q = a.query().expect("query");
    assert_eq!(q.last, Some(5));
    // What the agents receive is an RFC 3339 time, not the duration.
    let qs = q.to_query_string();
    assert!(qs.starts_with("last=5&since=20"), "{qs}");
    assert!(qs.ends_with('Z'), "{qs}");

    // With --follow, the backlog is every flow since then.
    let a = parse(&["--since", "5m", "-f"]).expect("parses");
    assert_eq!(a.last(), None);
    let a = parse(&["--until", "5m"]).expect("parses");
    assert_eq!(a.last(), None);
    assert_eq!(
        parse(&["--last", "3", "--until", "5m"])
            .expect("parses")
            .last(),
        Some(3)
    );

    let a = parse(&["--since", "1m", "--until", "1h"]).expect("parses");
    let err = a.query().expect_err("empty window");
    assert!(err.to_string().contains("is later than --until"), "{err}");
}

#[test]
fn invalid_flags_name_the_flag() {
    let cases = [
        (
            &["--http-status", "6xx"][..],
            "--http-status 6xx: expected NNN, Nxx or Nxx+",
        ),
        (
            &["--protocol", "sctp"],
            "--protocol sctp: expected TCP, UDP, HTTP, HTTP/1.1 or HTTP/2",
        ),
        (
            &["--to-port", "99999"],
            "--to-port 99999: expected a port number (1-65535)",
        ),
        (
            &["--from-label", "a b"],
            "--from-label a b: expected KEY, !KEY, KEY=VALUE",
        ),
        (
            &["--http-path", "("],
            "--http-path (: invalid regular expression: ",
        ),
        (
            &["--since", "last week"],
            "--since last week: expected an RFC 3339 time",
        ),
        (&["--from-pod", ""], "--from-pod needs a value"),
        (
            &["--verdict", "allowed"],
            "--verdict allowed: expected FORWARDED, DROPPED",
        ),
        (&["--cluster", ""], "--cluster needs a value"),
        (&["-n", ""], "--namespace needs a value"),
    ];
    for (args, want) in cases {
        let err = parse(args).expect_err("invalid");
        assert_eq!(
            err.kind(),
            clap::error::ErrorKind::ValueValidation,
            "{args:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with(&format!("error: {want}")),
            "{args:?}: {text}"
        );
    }
    // One time bound each, and --until cannot be followed.
    assert!(parse(&["--since", "1m", "--since", "2m"]).is_err());
    let err = parse(&["--until", "1m", "-f"]).expect_err("conflict");
    assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
}
