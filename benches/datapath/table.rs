//! The bench's table: rows of figures per column, their ratios to direct and issue 11's targets.

use serde_json::{Value, json};

use super::{MODES, Mode, ROUNDS, median};

// === targets ===

/// What issue 11 asks of a figure.
#[derive(Clone, Copy)]
pub enum Target {
    /// At least this fraction of direct.
    Ratio(f64),
    /// At most this many µs more than direct.
    Added(f64),
    /// At most this much (memory, KiB).
    Max(f64),
}

impl Target {
    fn met(self, direct: Option<f64>, v: f64) -> Option<bool> {
        Some(match self {
            Target::Ratio(r) => v / direct? >= r,
            Target::Added(us) => v - direct? <= us,
            Target::Max(m) => v <= m,
        })
    }

    fn describe(self) -> String {
        match self {
            Target::Ratio(r) => format!("≥ {r:.2}×"),
            Target::Added(us) => format!("≤ +{us:.0} µs"),
            Target::Max(kib) if kib >= 1024.0 => format!("≤ {:.0} MiB", kib / 1024.0),
            Target::Max(kib) => format!("≤ {kib:.0} KiB"),
        }
    }
}

// === the table ===

/// One table row: a figure per column (None where it does not apply or failed) and the
/// targets of the Strait columns.
pub struct Row {
    pub measure: String,
    unit: &'static str,
    /// Higher is better (throughput) rather than lower (latency, memory).
    higher: bool,
    figs: [Option<f64>; 5],
    targets: [Option<Target>; 5],
}

impl Row {
    pub fn new(measure: &str, unit: &'static str, higher: bool, figs: [Option<f64>; 5]) -> Self {
        Row {
            measure: measure.into(),
            unit,
            higher,
            figs,
            targets: [None; 5],
        }
    }

    pub fn target(mut self, mode: Mode, t: Target) -> Self {
        self.targets[mode.index()] = Some(t);
        self
    }

    /// Against direct: a factor for throughput, the added time for latency.
    fn ratio(&self, mode: Mode) -> Option<String> {
        let (d, v) = (self.figs[0]?, self.figs[mode.index()]?);
        if mode == Mode::Direct {
            return None;
        }
        Some(if self.higher {
            format!("{:.2}×", v / d)
        } else {
            format!("{:+.0} µs", v - d)
        })
    }

    /// Whether the column meets its target; None without a target or a figure.
    pub fn met(&self, mode: Mode) -> Option<bool> {
        let i = mode.index();
        self.targets[i]?.met(self.figs[0], self.figs[i]?)
    }

    fn cell(&self, mode: Mode) -> String {
        let Some(v) = self.figs[mode.index()] else {
            return "–".into();
        };
        let mut cell = match self.unit {
            "Gbit/s" => format!("{v:.2} {}", self.unit),
            "KiB" if v >= 1024.0 => format!("{:.1} MiB", v / 1024.0),
            "KiB" => format!("{v:.1} KiB"),
            unit => format!("{v:.0} {unit}"),
        };
        if let Some(r) = self.ratio(mode) {
            cell += &format!(" ({r})");
        }
        if let Some(t) = self.targets[mode.index()] {
            let mark = if self.met(mode) == Some(true) {
                "ok"
            } else {
                "MISS"
            };
            cell += &format!(" [{} {mark}]", t.describe());
        }
        cell
    }

    pub fn json(&self) -> Value {
        let mut cols = serde_json::Map::new();
        for m in MODES {
            cols.insert(
                m.key().into(),
                json!({
                    "value": self.figs[m.index()],
                    "vs_direct": self.ratio(m),
                    "target": self.targets[m.index()].map(Target::describe),
                    "met": self.met(m),
                }),
            );
        }
        json!({"measure": self.measure, "unit": self.unit, "columns": cols})
    }
}

/// Collects rows, printing each as it is measured and reporting failures once.
#[derive(Default)]
pub struct Table {
    pub rows: Vec<Row>,
    pub errors: Vec<String>,
}

impl Table {
    pub fn keep<T>(&mut self, what: &str, r: Result<T, String>) -> Option<T> {
        r.map_err(|e| {
            eprintln!("datapath: {what}: {e}");
            self.errors.push(format!("{what}: {e}"));
        })
        .ok()
    }

    /// Runs `f` ROUNDS times for each of `modes`, the modes interleaved within each round so
    /// that the machine's other load drifts over all of them alike; returns, per column, the
    /// median of each figure `f` yields (throughput: one; latency: p50 and p99).
    fn sample<const N: usize>(
        &mut self,
        what: &str,
        modes: &[Mode],
        mut f: impl FnMut(Mode) -> Result<[f64; N], String>,
    ) -> [[Option<f64>; N]; 5] {
        let mut got: Vec<Vec<[f64; N]>> = vec![Vec::new(); MODES.len()];
        for _ in 0..ROUNDS {
            for &m in modes {
                if let Some(v) = self.keep(&format!("{what} ({})", m.name()), f(m)) {
                    got[m.index()].push(v);
                }
            }
        }
        std::array::from_fn(|i| {
            std::array::from_fn(|k| median(got[i].iter().map(|r| r[k]).collect()))
        })
    }

    /// One row of throughput over `modes`, with the kernel path's and L7's targets.
    pub fn throughput(
        &mut self,
        measure: &str,
        unit: &'static str,
        modes: &[Mode],
        targets: [Option<f64>; 2],
        mut f: impl FnMut(Mode) -> Result<f64, String>,
    ) {
        let v = self.sample(measure, modes, |m| f(m).map(|x| [x]));
        let mut row = Row::new(measure, unit, true, v.map(|x| x[0]));
        for (mode, t) in [Mode::Kernel, Mode::L7].into_iter().zip(targets) {
            if let Some(t) = t {
                row = row.target(mode, Target::Ratio(t));
            }
        }
        self.push(row);
    }

    /// A p50 row (with targets) and a p99 row, each column sampled by `f`.
    pub fn latency(&mut self, measure: &str, f: impl FnMut(Mode) -> Result<[f64; 2], String>) {
        let v = self.sample(measure, &MODES, f);
        let p50 = Row::new(&format!("{measure} p50"), "µs", false, v.map(|x| x[0]))
            .target(Mode::Kernel, Target::Added(20.0))
            .target(Mode::L7, Target::Added(60.0));
        self.push(p50);
        self.push(Row::new(
            &format!("{measure} p99"),
            "µs",
            false,
            v.map(|x| x[1]),
        ));
    }

    pub fn push(&mut self, row: Row) {
        let cells: Vec<String> = MODES
            .iter()
            .map(|m| format!("{} {}", m.name(), row.cell(*m)))
            .collect();
        eprintln!("datapath: {}: {}", row.measure, cells.join(", "));
        self.rows.push(row);
    }

    pub fn print(&self) {
        let names: Vec<&str> = MODES.iter().map(|m| m.name()).collect();
        println!("| measure | {} |", names.join(" | "));
        println!("|---|{}", "---|".repeat(MODES.len()));
        for r in &self.rows {
            let cells: Vec<String> = MODES.iter().map(|m| r.cell(*m)).collect();
            println!("| {} | {} |", r.measure, cells.join(" | "));
        }
    }
}
