//! Compiles every `bpf/*.bpf.c` (and `bpf/test/*.bpf.c`) with clang into `OUT_DIR`.
//!
//! The objects are embedded by `src/loader.rs` with `aya::include_bytes_aligned!`.

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
