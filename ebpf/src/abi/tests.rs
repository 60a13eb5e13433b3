#![allow(clippy::unwrap_used)]

use std::{
    fmt::Write as _,
    mem::{offset_of, size_of, size_of_val},
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

/// One field of a mirrored struct: C struct name, field name, Rust offset and size.
struct Field {
    c_struct: &'static str,
    name: &'static str,
    offset: usize,
    size: usize,
}

macro_rules! fields {
    ($ty:ty, $c:literal, [$($f:ident),* $(,)?]) => {
        vec![$(Field {
            c_struct: $c,
            name: stringify!($f),
            offset: offset_of!($ty, $f),
            size: size_of_val(&<$ty>::default().$f),
        }),*]
    };
}

fn structs() -> Vec<(&'static str, usize)> {
    vec![
        ("strait_config", size_of::<Config>()),
        ("strait_orig_dst", size_of::<OrigDst>()),
        ("strait_sock_key", size_of::<SockKey>()),
    ]
}

fn fields() -> Vec<Field> {
    let mut all = fields!(Config, "strait_config", [proxy_ip4, proxy_port, pad, flags]);
    all.extend(fields!(OrigDst, "strait_orig_dst", [ip4, port, pad]));
    all.extend(fields!(SockKey, "strait_sock_key", [ip4, port, pad]));
    all
}

fn constants() -> Vec<(&'static str, u64)> {
    let mut all = vec![
        ("STRAIT_CONFIG_MAX", u64::from(CONFIG_MAX)),
        ("STRAIT_BYPASS_MAX", u64::from(BYPASS_MAX)),
        ("STRAIT_ORIG_MAX", u64::from(ORIG_MAX)),
        ("STRAIT_CFG_DISABLED", u64::from(CFG_DISABLED)),
    ];
    for reason in DropReason::ALL {
        let name: &'static str =
            Box::leak(format!("STRAIT_DROP_{}", reason.as_str()).into_boxed_str());
        all.push((name, u64::from(reason as u32)));
    }
    all
}

/// A C file asserting, with `_Static_assert`, that the header has the Rust layouts.
fn layout_checks(fields: &[Field], structs: &[(&str, usize)], constants: &[(&str, u64)]) -> String {
    let mut c = String::from("#include <stddef.h>\n#include \"strait_abi.h\"\n");
    for (name, size) in structs {
        writeln!(c, "_Static_assert(sizeof(struct {name}) == {size}, \"sizeof(struct {name}) != {size} (Rust)\");").unwrap();
    }
    for f in fields {
        let (s, n, off, size) = (f.c_struct, f.name, f.offset, f.size);
        writeln!(c, "_Static_assert(offsetof(struct {s}, {n}) == {off}, \"offsetof({s}.{n}) != {off} (Rust)\");").unwrap();
        writeln!(c, "_Static_assert(sizeof(((struct {s} *)0)->{n}) == {size}, \"sizeof({s}.{n}) != {size} (Rust)\");").unwrap();
    }
    for (name, value) in constants {
        writeln!(
            c,
            "_Static_assert({name} == {value}ULL, \"{name} != {value} (Rust)\");"
        )
        .unwrap();
    }
    c
}

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bpf/include")
}

/// Compiles `source` with `clang -target bpf -fsyntax-only`; Err(clang's stderr) on failure.
fn clang_check(name: &str, source: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("strait-abi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("check.c");
    std::fs::write(&file, source).unwrap();
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    let mut cmd = Command::new(&clang);
    cmd.args(["-target", "bpf", "-fsyntax-only", "-Werror", "-I"])
        .arg(include_dir());
    let multiarch = Command::new(&clang)
        .arg("-print-multiarch")
        .output()
        .unwrap();
    let multiarch = String::from_utf8_lossy(&multiarch.stdout).trim().to_owned();
    if !multiarch.is_empty() {
        cmd.arg("-I").arg(Path::new("/usr/include").join(multiarch));
    }
    let out = cmd
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {clang} (apt-get install clang llvm libbpf-dev): {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rust_layouts_match_strait_abi_h() {
    let source = layout_checks(&fields(), &structs(), &constants());
    if let Err(stderr) = clang_check("match", &source) {
        panic!("strait_abi.h and src/abi.rs disagree:\n{stderr}");
    }
}

#[test]
fn layout_check_fails_when_the_two_diverge() {
    // The check above must be able to fail: shift one offset, change one size and one constant.
    let mut wrong = fields();
    wrong[1].offset += 2;
    let source = layout_checks(
        &wrong,
        &[("strait_orig_dst", 12)],
        &[("STRAIT_BYPASS_MAX", 65)],
    );
    let stderr = clang_check("diverge", &source).expect_err("a wrong layout must not compile");
    assert!(
        stderr.contains("offsetof(strait_config.proxy_port)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("sizeof(struct strait_orig_dst) != 12"),
        "{stderr}"
    );
    assert!(stderr.contains("STRAIT_BYPASS_MAX != 65"), "{stderr}");
}

#[test]
fn every_c_drop_reason_has_a_rust_variant() {
    let header = std::fs::read_to_string(include_dir().join("strait_abi.h")).unwrap();
    let in_c: Vec<(String, u32)> = header
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("STRAIT_DROP_"))
        .map(|l| {
            let (name, value) = l.split_once('=').unwrap();
            let value = value.trim().trim_end_matches(',').parse().unwrap();
            (name.trim().to_owned(), value)
        })
        .collect();
    let in_rust: Vec<(String, u32)> = DropReason::ALL
        .iter()
        .map(|r| (r.as_str().to_owned(), *r as u32))
        .collect();
    assert_eq!(in_c, in_rust);
    for (_, value) in in_rust {
        assert_eq!(DropReason::try_from(value).map(|r| r as u32), Ok(value));
    }
    assert_eq!(DropReason::try_from(7), Err(7));
}

#[test]
fn addresses_are_stored_in_network_order() {
    let cfg = Config::new(SocketAddrV4::new(Ipv4Addr::new(198, 18, 250, 1), 15001), 0);
    assert_eq!(cfg.proxy_ip4.to_ne_bytes(), [198, 18, 250, 1]);
    assert_eq!(cfg.proxy_port.to_ne_bytes(), 15001u16.to_be_bytes());
    assert_eq!(cfg.proxy(), "198.18.250.1:15001".parse().unwrap());

    let addr: SocketAddrV4 = "10.1.2.3:8080".parse().unwrap();
    let orig = OrigDst::from(addr);
    assert_eq!(orig.ip4.to_ne_bytes(), [10, 1, 2, 3]);
    assert_eq!(orig.port.to_ne_bytes(), [0x1f, 0x90]);
    assert_eq!(orig.addr(), addr);

    let key = SockKey::from(addr);
    assert_eq!((key.ip4, key.port, key.pad), (orig.ip4, orig.port, 0));
}
