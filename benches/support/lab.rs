//! The lab a benchmark runs on, driven through the `strait` binary as a user would; shared by the
//! benches that need one (`#[path = "support/lab.rs"] mod lab;`). Each bench adds its own
//! helpers in an `impl BenchLab` block of its own.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// The binary under test.
pub const STRAIT: &str = env!("CARGO_BIN_EXE_strait");

/// A bench's own lab; `lab down` on drop, also when a measure panics.
pub struct BenchLab {
    pub name: String,
    /// Scratch directory for the topology and manifests, removed on drop.
    pub dir: PathBuf,
}

impl BenchLab {
    /// Brings up lab `<prefix><pid>` with `topology` (YAML).
    pub fn up(prefix: &str, topology: &str) -> Self {
        let name = format!("{prefix}{:x}", std::process::id());
        let dir = std::env::temp_dir().join(format!("strait-bench-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let topo = dir.join("topology.yaml");
        std::fs::write(&topo, topology).unwrap();
        let lab = BenchLab { name, dir };
        lab.strait_ok(&["lab", "up", "-f", topo.to_str().unwrap()]);
        lab
    }

    /// Runs `strait` against this lab.
    pub fn strait(&self, args: &[&str]) -> Output {
        Command::new(STRAIT)
            .args(args)
            .env("STRAIT_LAB", &self.name)
            .output()
            .expect("running strait")
    }

    /// As [`Self::strait`], panicking with its output unless it succeeds.
    pub fn strait_ok(&self, args: &[&str]) -> Output {
        let out = self.strait(args);
        assert!(out.status.success(), "strait {args:?}: {}", text(&out));
        out
    }

    /// `lab apply` of `yaml` (written to `file` in the scratch directory) to `cluster`.
    pub fn apply(&self, cluster: &str, file: &str, yaml: &str) {
        let f = self.dir.join(file);
        std::fs::write(&f, yaml).unwrap();
        self.strait_ok(&[
            "lab",
            "apply",
            "--cluster",
            cluster,
            "-f",
            f.to_str().unwrap(),
        ]);
    }

    /// `lab status -o json`.
    pub fn status(&self) -> Value {
        let out = self.strait_ok(&["lab", "status", "-o", "json"]);
        serde_json::from_slice(&out.stdout).expect("lab status JSON")
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        let out = self.strait(&["lab", "down"]);
        if !out.status.success() {
            eprintln!("lab down failed: {}", text(&out));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A command's exit status and output, for failure messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
