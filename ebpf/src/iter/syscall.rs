//! The few `bpf(2)` commands the socket iterator needs that aya 0.14 does not expose for a
//! program it cannot load: get a pinned map, load a tracing program, create an iterator link,
//! create an iterator. Each attribute struct is the prefix of `union bpf_attr` its command reads
//! (`linux/bpf.h`); the kernel zero-fills the rest.

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `enum bpf_cmd`.
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_prog_type`.
const BPF_PROG_TYPE_TRACING: u32 = 26;
/// `enum bpf_attach_type`.
const BPF_TRACE_ITER: u32 = 28;

/// `BPF_OBJ_GET`.
#[repr(C)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `BPF_PROG_LOAD`, up to `attach_btf_obj_fd`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    pad: u32,
}

/// `BPF_LINK_CREATE` for an iterator (no `iter_info`: the tcp iterator takes none).
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    pad: u32,
}

/// `BPF_ITER_CREATE`.
#[repr(C)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

/// Runs `bpf(cmd, attr)` and takes the file descriptor it returns.
#[allow(unsafe_code)]
fn bpf_fd<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, exclusively borrowed `#[repr(C)]` struct laid out as the prefix
    // of `union bpf_attr` that `cmd` reads, and its size is passed along, so the kernel reads
    // (and for some commands writes) only inside it. Pointers stored in it (paths, instructions,
    // license, log buffer) are borrowed by the callers for the duration of this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr).cast::<libc::c_void>(),
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(ret).map_err(|_| io::Error::other("bpf() fd out of range"))?;
    // SAFETY: on success these commands return a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the object pinned at `path` (a map here).
pub(super) fn obj_get(path: &CStr) -> io::Result<OwnedFd> {
    let mut attr = ObjGetAttr {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    bpf_fd(BPF_OBJ_GET, &mut attr)
}

/// Loads `insns` as a `BPF_TRACE_ITER` tracing program for the kernel function `attach_btf_id`
/// (in vmlinux BTF). With `log` the verifier writes its log there (NUL-terminated).
pub(super) fn load_iter_program(
    name: &str,
    insns: &[u8],
    license: &CStr,
    attach_btf_id: u32,
    log: Option<&mut [u8]>,
) -> io::Result<OwnedFd> {
    let mut prog_name = [0u8; 16];
    for (dst, src) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *dst = src;
    }
    let insn_cnt =
        u32::try_from(insns.len() / 8).map_err(|_| io::Error::other("program too long"))?;
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name,
        expected_attach_type: BPF_TRACE_ITER,
        attach_btf_id,
        ..ProgLoadAttr::default()
    };
    if let Some(buf) = log {
        attr.log_level = 1;
        attr.log_size = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        attr.log_buf = buf.as_mut_ptr() as u64;
    }
    bpf_fd(BPF_PROG_LOAD, &mut attr)
}

/// Creates the iterator link of a loaded iterator program.
pub(super) fn link_create_iter(prog: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: fd_u32(prog)?,
        target_fd: 0,
        attach_type: BPF_TRACE_ITER,
        flags: 0,
        iter_info: 0,
        iter_info_len: 0,
        pad: 0,
    };
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}

/// A new iterator of `link`: reading it runs the program over the objects (sockets) of the
/// network namespace of the calling thread.
pub(super) fn iter_create(link: &OwnedFd) -> io::Result<OwnedFd> {
    let mut attr = IterCreateAttr {
        link_fd: fd_u32(link)?,
        flags: 0,
    };
    bpf_fd(BPF_ITER_CREATE, &mut attr)
}

fn fd_u32(fd: &OwnedFd) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_structs_match_the_uapi_layout() {
        // Offsets from linux/bpf.h (union bpf_attr); a wrong one makes the kernel read garbage.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, line_info), 96);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, attach_btf_obj_fd), 112);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, iter_info), 16);
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, iter_info_len), 24);
        assert_eq!(std::mem::size_of::<IterCreateAttr>(), 8);
        assert_eq!(std::mem::size_of::<ObjGetAttr>(), 16);
    }
}
