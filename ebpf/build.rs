//! Compiles every `bpf/*.bpf.c` (and `bpf/test/*.bpf.c`) with clang into `OUT_DIR`, and
//! generates `OUT_DIR/abi_lists.rs` from the X-macro lists in `strait_abi.h` (drop reasons,
//! reserved identities, IP protocols), so each list is written once, in C.
//!
//! The objects are embedded by `src/loader.rs` with `aya::include_bytes_aligned!`; the generated
//! Rust is included by `src/abi.rs`.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const INSTALL_HINT: &str = "install the eBPF toolchain: apt-get install clang llvm libbpf-dev";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let bpf_dir = manifest_dir.join("bpf");
    let include_dir = bpf_dir.join("include");

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed={}", include_dir.display());
    for header in files_with_suffix(&include_dir, ".h") {
        println!("cargo:rerun-if-changed={}", header.display());
    }

    let abi_header = include_dir.join("strait_abi.h");
    let header = fs::read_to_string(&abi_header)
        .unwrap_or_else(|e| panic!("read {}: {e}", abi_header.display()));
    fs::write(out_dir.join("abi_lists.rs"), abi_lists(&header)).expect("write abi_lists.rs");

    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let multiarch_include = multiarch_include_dir(&clang);

    let test_dir = bpf_dir.join("test");
    let test_out = out_dir.join("test");
    let mut jobs: Vec<(PathBuf, PathBuf)> = files_with_suffix(&bpf_dir, ".bpf.c")
        .into_iter()
        .map(|src| (src, out_dir.clone()))
        .collect();
    if test_dir.is_dir() {
        println!("cargo:rerun-if-changed={}", test_dir.display());
        fs::create_dir_all(&test_out).expect("create OUT_DIR/test");
        jobs.extend(
            files_with_suffix(&test_dir, ".bpf.c")
                .into_iter()
                .map(|src| (src, test_out.clone())),
        );
    }

    for (src, dest_dir) in jobs {
        println!("cargo:rerun-if-changed={}", src.display());
        let file_name = src
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 file name");
        let object = dest_dir.join(file_name.replace(".bpf.c", ".bpf.o"));
        compile(
            &clang,
            &src,
            &object,
            &include_dir,
            multiarch_include.as_deref(),
        );
    }
}

fn compile(clang: &str, src: &Path, object: &Path, include_dir: &Path, multiarch: Option<&Path>) {
    let mut cmd = Command::new(clang);
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg("-I")
        .arg(include_dir);
    if let Some(dir) = multiarch {
        cmd.arg("-I").arg(dir);
    }
    cmd.arg("-c").arg(src).arg("-o").arg(object);

    let output = match cmd.output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            panic!("`{clang}` not found, needed to build the eBPF programs: {INSTALL_HINT}")
        }
        Err(error) => panic!("could not run `{clang}`: {error}; {INSTALL_HINT}"),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("bpf/bpf_helpers.h") || stderr.contains("asm/types.h") {
            format!("\nhint: {INSTALL_HINT}")
        } else {
            String::new()
        };
        panic!(
            "clang failed to compile {} ({}):\n{stderr}{hint}",
            src.display(),
            output.status
        );
    }
}

/// `/usr/include/<multiarch>` (for `asm/types.h`), as clang or the target triple names it.
fn multiarch_include_dir(clang: &str) -> Option<PathBuf> {
    let from_clang = Command::new(clang)
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty());
    let from_arch = env::var("CARGO_CFG_TARGET_ARCH")
        .ok()
        .map(|arch| format!("{arch}-linux-gnu"));
    [from_clang, from_arch]
        .into_iter()
        .flatten()
        .map(|triple| Path::new("/usr/include").join(triple))
        .find(|dir| dir.join("asm").is_dir())
}

fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(suffix))
        })
        .collect();
    files.sort();
    files
}

/// One `X(...)` entry of an X-macro list: its arguments and the comment after it.
struct Entry {
    args: Vec<String>,
    doc: String,
}

/// The entries of `#define <list>(X) \ ...` in `header`.
fn x_list(header: &str, list: &str) -> Vec<Entry> {
    let start = format!("#define {list}(X)");
    let mut lines = header.lines().skip_while(|l| !l.starts_with(&start));
    assert!(lines.next().is_some(), "strait_abi.h: no `{start}` list");
    let mut entries = Vec::new();
    for line in lines {
        let body = line.trim().trim_end_matches('\\').trim();
        let (call, comment) = match body.split_once("/*") {
            Some((call, comment)) => (call.trim(), comment.trim_end_matches("*/").trim()),
            None => (body, ""),
        };
        let args = call
            .strip_prefix("X(")
            .and_then(|c| c.strip_suffix(')'))
            .unwrap_or_else(|| panic!("strait_abi.h {list}: cannot read `{line}`"));
        entries.push(Entry {
            args: args.split(',').map(|a| a.trim().to_owned()).collect(),
            doc: comment.to_owned(),
        });
        if !line.trim_end().ends_with('\\') {
            break;
        }
    }
    entries
}

/// `POLICY_DENIED` -> `PolicyDenied`.
fn camel(name: &str) -> String {
    name.split('_')
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_string() + &chars.as_str().to_ascii_lowercase()
            })
        })
        .collect()
}

/// Rust source for the lists: `DropReason`, reserved identities, IP protocols.
fn abi_lists(header: &str) -> String {
    use std::fmt::Write;
    let mut out = String::from("// Generated by build.rs from strait_abi.h; do not edit.\n\n");

    let reasons = x_list(header, "STRAIT_DROP_REASONS");
    out.push_str(
        "/// `enum strait_drop_reason`: why Strait dropped or refused something. Kernel drops, \
         proxy\n/// denials, flow records and metrics all use this one list \
         (`STRAIT_DROP_REASONS` in\n/// `strait_abi.h`).\n\
         #[repr(u32)]\n#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]\n\
         pub enum DropReason {\n",
    );
    for e in &reasons {
        let doc = if e.doc.is_empty() { "No drop." } else { &e.doc };
        writeln!(
            out,
            "    /// {doc}\n    {} = {},",
            camel(&e.args[0]),
            e.args[1]
        )
        .ok();
    }
    out.push_str("}\n\nimpl DropReason {\n    /// Every reason, in list order.\n");
    writeln!(
        out,
        "    pub const ALL: [DropReason; {}] = [",
        reasons.len()
    )
    .ok();
    for e in &reasons {
        writeln!(out, "        DropReason::{},", camel(&e.args[0])).ok();
    }
    let kernel: Vec<&Entry> = reasons.iter().filter(|e| e.args[2] == "1").collect();
    out.push_str(
        "    ];\n\n    /// The reasons the eBPF programs report (each has a drop counter).\n",
    );
    writeln!(
        out,
        "    pub const KERNEL: [DropReason; {}] = [",
        kernel.len()
    )
    .ok();
    for e in &kernel {
        writeln!(out, "        DropReason::{},", camel(&e.args[0])).ok();
    }
    out.push_str(
        "    ];\n\n    /// The C enumerator without its `STRAIT_DROP_` prefix: the flow JSON value \
         and metric label.\n    pub const fn as_str(self) -> &'static str {\n        match self {\n",
    );
    for e in &reasons {
        writeln!(
            out,
            "            DropReason::{} => \"{}\",",
            camel(&e.args[0]),
            e.args[0]
        )
        .ok();
    }
    out.push_str("        }\n    }\n\n    /// The reason named `name` (as [`Self::as_str`] spells it).\n    pub fn from_name(name: &str) -> Option<Self> {\n        match name {\n");
    for e in &reasons {
        writeln!(
            out,
            "            \"{}\" => Some(DropReason::{}),",
            e.args[0],
            camel(&e.args[0])
        )
        .ok();
    }
    out.push_str("            _ => None,\n        }\n    }\n}\n\n");

    out.push_str("/// Reserved identities (`STRAIT_RESERVED_IDENTITIES` in `strait_abi.h`).\npub mod reserved_identity {\n");
    let ids = x_list(header, "STRAIT_RESERVED_IDENTITIES");
    for e in &ids {
        writeln!(
            out,
            "    /// `STRAIT_ID_{}`: {}.\n    pub const {}: u32 = {};",
            e.args[0], e.doc, e.args[0], e.args[1]
        )
        .ok();
    }
    out.push_str("\n    /// Every reserved identity with its policy entity name.\n");
    writeln!(out, "    pub const NAMES: [(u32, &str); {}] = [", ids.len()).ok();
    for e in &ids {
        writeln!(out, "        ({}, {}),", e.args[0], e.args[2]).ok();
    }
    out.push_str("    ];\n}\n\n");

    let protos = x_list(header, "STRAIT_IP_PROTOCOLS");
    for e in &protos {
        writeln!(
            out,
            "/// `STRAIT_IPPROTO_{0}`.\npub const IPPROTO_{0}: u8 = {1};",
            e.args[0], e.args[1]
        )
        .ok();
    }
    out.push_str("\n/// Every IP protocol Strait names, with its name (`STRAIT_IP_PROTOCOLS`).\n");
    writeln!(
        out,
        "pub const IP_PROTOCOLS: [(u8, &str); {}] = [",
        protos.len()
    )
    .ok();
    for e in &protos {
        writeln!(out, "    (IPPROTO_{0}, \"{0}\"),", e.args[0]).ok();
    }
    out.push_str("];\n");
    out
}
