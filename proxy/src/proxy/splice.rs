//! Relay between two TCP sockets through `splice(2)`: bytes go socket → pipe → socket inside
//! the kernel, never through a user-space buffer (as HAProxy does for raw TCP forwarding).
//!
//! Each direction gets its pipe when its first bytes arrive, so an idle connection holds no
//! pipe; the pipe's pages are the kernel's and exist only while data is in flight. Tokio's
//! readiness drives it: wait readable, splice into the pipe, wait writable, splice out.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{Shutdown, shutdown};
use nix::unistd::pipe2;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Most bytes one splice call moves; a pipe holds 64 KiB by default, so this is "all it takes".
const CHUNK: usize = 1 << 20;

/// Why the splice relay could not start; the caller relays with buffers instead.
#[derive(Debug, thiserror::Error)]
#[error("splice relay unavailable: {0}")]
pub struct Unsupported(#[source] io::Error);

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

/// Whether this kernel splices between these sockets: an empty, non-blocking splice from `a`
/// into a fresh pipe says so before any byte moves.
pub fn probe(a: &TcpStream) -> Result<(), Unsupported> {
    let (_r, w) =
        pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).map_err(|e| Unsupported(io::Error::from(e)))?;
    match splice(a.as_fd(), None, &w, None, 0, flags()) {
        Ok(_) | Err(nix::errno::Errno::EAGAIN) => Ok(()),
        Err(e) => Err(Unsupported(io::Error::from(e))),
    }
}

/// Copies `a` to `b` and `b` to `a` until both reach end of stream, each end of stream passed on
/// as a write shutdown, as [`super::relay::relay`] does. Returns the bytes moved (a → b, b → a);
/// the first error of either side (a reset) ends the relay.
pub async fn relay(a: &TcpStream, b: &TcpStream) -> io::Result<(u64, u64)> {
    tokio::try_join!(one_way(a, b), one_way(b, a))
}

/// Moves `src` to `dst` until `src` ends; then shuts `dst` down for writing.
async fn one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let mut pipe: Option<(OwnedFd, OwnedFd)> = None;
    let mut total = 0u64;
    loop {
        src.readable().await?;
        let (r, w) = match &mut pipe {
            Some(p) => (&p.0, &p.1),
            slot @ None => {
                let p = slot.insert(pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?);
                (&p.0, &p.1)
            }
        };
        let spliced = src.try_io(Interest::READABLE, || {
            Ok(splice(src.as_fd(), None, w, None, CHUNK, flags())?)
        });
        let mut left = match spliced {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        total += left as u64;
        while left > 0 {
            dst.writable().await?;
            let out = dst.try_io(Interest::WRITABLE, || {
                Ok(splice(r, None, dst.as_fd(), None, left, flags())?)
            });
            match out {
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
    match shutdown(dst.as_raw_fd(), Shutdown::Write) {
        // The peer is gone already: its reset shows on the other direction.
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(total),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Two connected socket pairs: (client, a) and (b, server); the relay runs between a and b.
    async fn pairs() -> ((TcpStream, TcpStream), (TcpStream, TcpStream)) {
        async fn pair() -> (TcpStream, TcpStream) {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (s, _) = l.accept().await.unwrap();
            (c, s)
        }
        (pair().await, pair().await)
    }

    #[tokio::test]
    async fn splices_both_ways_with_half_close() {
        let ((mut client, a), (b, mut server)) = pairs().await;
        probe(&a).unwrap();
        let relay = tokio::spawn(async move { relay(&a, &b).await });
        // Several pipes' worth each way.
        let up: Vec<u8> = (0..1_000_003u32).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..300_007u32).map(|i| (i * 7) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            // The client half-closes after sending: the server reads to the end first, then
            // answers on its still-open half.
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(&down2).await.unwrap();
            server.shutdown().await.unwrap();
            got
        });
        client.write_all(&up).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), down.len(), "every byte back");
        assert_eq!(got, down);
        assert_eq!(server_side.await.unwrap(), up2);
        let (sent, received) = relay.await.unwrap().unwrap();
        assert_eq!((sent, received), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn a_peer_reset_ends_the_relay_with_an_error() {
        let ((mut client, a), (b, mut server)) = pairs().await;
        let relay = tokio::spawn(async move { relay(&a, &b).await });
        client.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // The server resets its connection: the relay fails rather than waiting forever.
        server.set_zero_linger().unwrap();
        drop(server);
        let result = tokio::time::timeout(std::time::Duration::from_secs(5), relay)
            .await
            .expect("the relay ended")
            .unwrap();
        assert!(result.is_err(), "{result:?}");
        drop(client);
    }
}
