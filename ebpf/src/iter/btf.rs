//! Finds the ids of named functions in the kernel's BTF (`/sys/kernel/btf/vmlinux`) by walking
//! its type records once, without building the type graph: the agent needs two ids, and a full
//! parse of the kernel's ~6 MB of BTF costs tens of MiB of heap that glibc keeps afterwards.
//!
//! Layout (linux/btf.h): a header, then `type_len` bytes of records, each a 12-byte
//! `struct btf_type {name_off, info, size_or_type}` followed by kind-specific data whose size
//! depends on the kind and on `vlen` (the low 16 bits of `info`); names are offsets into the
//! string section. Type ids count records from 1.

use std::collections::BTreeMap;

/// Why the kernel's BTF could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has an unknown type kind {0}")]
    UnknownKind(u32),
}

const MAGIC: u16 = 0xeb9f;
const KIND_FUNC: u32 = 12;

/// The ids of the functions named in `names` (those present) in the BTF blob `data`.
pub fn func_ids(data: &[u8], names: &[&str]) -> Result<BTreeMap<String, u32>, BtfError> {
    let u16_at = |i: usize| -> Result<u16, BtfError> {
        data.get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or(BtfError::Malformed("truncated"))
    };
    let u32_at = |i: usize| -> Result<u32, BtfError> {
        data.get(i..i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(BtfError::Malformed("truncated"))
    };
    if u16_at(0)? != MAGIC {
        return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
    }
    let hdr_len = u32_at(4)? as usize;
    let type_off = u32_at(8)? as usize;
    let type_len = u32_at(12)? as usize;
    let str_off = u32_at(16)? as usize;
    let str_len = u32_at(20)? as usize;
    let types = hdr_len + type_off;
    let strings = data
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or(BtfError::Malformed("string section out of bounds"))?;
    let name_at = |off: u32| -> &[u8] {
        let rest = strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        &rest[..end]
    };
    let mut found = BTreeMap::new();
    let (mut pos, end, mut id) = (types, types + type_len, 1u32);
    while pos < end {
        let name_off = u32_at(pos)?;
        let info = u32_at(pos + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        if kind == KIND_FUNC {
            let name = name_at(name_off);
            if let Some(n) = names.iter().find(|n| n.as_bytes() == name) {
                found.insert((*n).to_string(), id);
            }
        }
        let extra = match kind {
            // INT, VAR, DECL_TAG: one u32.
            1 | 14 | 17 => 4,
            // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG: nothing.
            2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
            // ARRAY: one btf_array.
            3 => 12,
            // STRUCT, UNION, DATASEC, ENUM64: vlen members of 12 bytes.
            4 | 5 | 15 | 19 => 12 * vlen,
            // ENUM, FUNC_PROTO: vlen entries of 8 bytes.
            6 | 13 => 8 * vlen,
            other => return Err(BtfError::UnknownKind(other)),
        };
        pos += 12 + extra;
        id += 1;
    }
    Ok(found)
}

/// [`func_ids`] of the running kernel's BTF.
pub fn kernel_func_ids(names: &[&str]) -> Result<BTreeMap<String, u32>, BtfError> {
    const PATH: &str = "/sys/kernel/btf/vmlinux";
    let data = std::fs::read(PATH).map_err(|e| BtfError::Read {
        path: PATH.into(),
        reason: e.to_string(),
    })?;
    func_ids(&data, names)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn finds_the_same_ids_as_a_full_parse() {
        let names = ["bpf_sock_destroy", "bpf_iter_tcp", "tcp_connect"];
        let ours = kernel_func_ids(&names).unwrap();
        let full = aya_obj::btf::Btf::from_sys_fs().unwrap();
        for name in names {
            let want = full
                .id_by_type_name_kind(name, aya_obj::btf::BtfKind::Func)
                .unwrap();
            assert_eq!(ours.get(name), Some(&want), "{name}");
        }
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert_eq!(
            func_ids(&[0u8; 32], &["x"]),
            Err(BtfError::Malformed("bad magic (not little-endian BTF)"))
        );
        assert_eq!(
            func_ids(&[0x9f, 0xeb], &["x"]),
            Err(BtfError::Malformed("truncated"))
        );
    }
}
