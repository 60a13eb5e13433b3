//! Byte relay between two streams that holds no buffer while both sides are idle.
//!
//! `tokio::io::copy_bidirectional` gives each connection two 8 KiB buffers for its whole life, so
//! thousands of idle connections cost tens of MiB. Here a buffer is taken from a small per-thread
//! pool only for one read and the write that follows; a read that finds nothing hands it straight
//! back, so an idle connection holds a few words of state.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of one relay buffer: large enough that a bulk stream moves in few syscalls.
const BUF_SIZE: usize = 32 * 1024;

/// Buffers a worker thread keeps for reuse; the rest go back to the allocator, so a burst of
/// busy connections does not leave its buffers behind.
const POOL_MAX: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    let _ = POOL.try_with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// Where one direction of the relay stands.
enum State {
    /// Waiting for data; holds no buffer.
    Reading,
    /// Writing `buf[pos..end]` to the other side.
    Writing {
        buf: Box<[u8]>,
        pos: usize,
        end: usize,
    },
    /// The buffer is written; flushing before the next read.
    Flushing,
    /// The reader reached end of stream; passing it on as a write shutdown.
    ShuttingDown,
    Done,
}

/// One direction: reads from one stream, writes to the other.
struct Half {
    state: State,
    bytes: u64,
}

impl Half {
    fn new() -> Self {
        Half {
            state: State::Reading,
            bytes: 0,
        }
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Reading => {
                    let mut buf = take_buf();
                    let mut rb = ReadBuf::new(&mut buf);
                    let polled = Pin::new(&mut *r).poll_read(cx, &mut rb);
                    let n = rb.filled().len();
                    match polled {
                        Poll::Pending => {
                            give_buf(buf);
                            self.state = State::Reading;
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => {
                            give_buf(buf);
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(())) if n == 0 => {
                            give_buf(buf);
                            self.state = State::ShuttingDown;
                        }
                        Poll::Ready(Ok(())) => {
                            self.state = State::Writing {
                                buf,
                                pos: 0,
                                end: n,
                            };
                        }
                    }
                }
                State::Writing { buf, mut pos, end } => {
                    match Pin::new(&mut *w).poll_write(cx, &buf[pos..end]) {
                        Poll::Pending => {
                            self.state = State::Writing { buf, pos, end };
                            return Poll::Pending;
                        }
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        Poll::Ready(Ok(n)) => {
                            pos += n;
                            self.bytes += n as u64;
                            self.state = if pos < end {
                                State::Writing { buf, pos, end }
                            } else {
                                give_buf(buf);
                                State::Flushing
                            };
                        }
                    }
                }
                State::Flushing => {
                    self.state = State::Flushing;
                    ready!(Pin::new(&mut *w).poll_flush(cx))?;
                    self.state = State::Reading;
                }
                State::ShuttingDown => {
                    self.state = State::ShuttingDown;
                    ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                    self.state = State::Done;
                }
                State::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

/// Copies `a` to `b` and `b` to `a` until both reach end of stream, passing each end of stream
/// on as a write shutdown, as `tokio::io::copy_bidirectional` does. Returns the bytes moved
/// (a → b, b → a); the first error of either side ends the relay.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Half::new();
    let mut b_to_a = Half::new();
    poll_fn(|cx| {
        let forward = a_to_b.poll(cx, a, b)?;
        let backward = b_to_a.poll(cx, b, a)?;
        ready!(forward);
        ready!(backward);
        Poll::Ready(Ok((a_to_b.bytes, b_to_a.bytes)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_counts_bytes() {
        let (mut client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { relay(&mut a, &mut b).await });
        // More than one buffer each way, through pipes smaller than a buffer.
        let up: Vec<u8> = (0..BUF_SIZE * 2 + 7).map(|i| i as u8).collect();
        let down: Vec<u8> = (0..BUF_SIZE + 3).map(|i| (i * 7) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let server_side = tokio::spawn(async move {
            let mut got = vec![0; up2.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&down2).await.unwrap();
            server.shutdown().await.unwrap();
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            (got, rest)
        });
        client.write_all(&up).await.unwrap();
        let mut got = vec![0; down.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, down);
        // The server's end of stream reaches the client as one.
        assert_eq!(client.read(&mut [0; 1]).await.unwrap(), 0);
        client.shutdown().await.unwrap();
        let (server_got, rest) = server_side.await.unwrap();
        assert_eq!(server_got, up);
        assert!(rest.is_empty());
        let (sent, received) = relay.await.unwrap().unwrap();
        assert_eq!((sent, received), (up.len() as u64, down.len() as u64));
    }

    #[tokio::test]
    async fn idle_relay_holds_no_buffer() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let mut half = Half::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(half.poll(&mut cx, &mut a, &mut b).is_pending());
        assert!(matches!(half.state, State::Reading));
        // The buffer went back to this thread's pool.
        assert!(POOL.with(|p| !p.borrow().is_empty()));
    }

    #[tokio::test]
    async fn end_of_stream_becomes_a_shutdown() {
        let (client, mut a) = tokio::io::duplex(64);
        let (mut b, mut server) = tokio::io::duplex(64);
        drop(client);
        // A dropped duplex peer reads as end of stream, passed on as a shutdown of `b`.
        let mut half = Half::new();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(half.poll(&mut cx, &mut a, &mut b).is_ready());
        assert!(matches!(half.state, State::Done));
        assert_eq!(server.read(&mut [0; 1]).await.unwrap(), 0);
    }
}
