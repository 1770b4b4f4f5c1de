//! Zero-copy tunnels on Linux: bytes move socket → pipe → socket inside the kernel
//! with `splice(2)` and are never copied into the proxy. A relay through user space
//! costs two extra copies per byte, which made tunnels a quarter of direct loopback
//! throughput; with splice the proxy's share of the work is a few syscalls per
//! pipe-full.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::net::Shutdown;
use rustix::pipe::{pipe_with, splice, PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::io::Counters;

/// How much one splice call asks for; the pipe is enlarged to this where allowed.
const CHUNK: usize = 1 << 20;

/// At most this many pipes are enlarged at once: pipe pages count against the user's
/// `fs.pipe-user-pages-soft` (16384 pages by default), and past it the kernel shrinks
/// every new pipe of the user, the agent's own shell included. The others keep the
/// default 64 KiB.
const MAX_BIG_PIPES: usize = 16;
static BIG_PIPES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An enlarged-pipe slot, given back on drop.
struct BigPipe(bool);

impl BigPipe {
    fn take() -> BigPipe {
        use std::sync::atomic::Ordering;
        let got = BIG_PIPES
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_BIG_PIPES).then_some(n + 1)
            })
            .is_ok();
        BigPipe(got)
    }
}

impl Drop for BigPipe {
    fn drop(&mut self) {
        if self.0 {
            BIG_PIPES.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// One direction: `src` to `dst` until `src` ends, then shuts down `dst`'s write side.
/// Adds the bytes carried to `count`.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    count: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let (pr, pw): (OwnedFd, OwnedFd) = match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
        Ok(p) => p,
        // Out of fds or pipe pages: relay through user space instead.
        Err(_) => return copy_one_way(src, dst, count).await,
    };
    // Best effort: a bigger pipe means fewer wake-ups; the default (64 KiB) works too.
    let big = BigPipe::take();
    if big.0 {
        let _ = rustix::pipe::fcntl_setpipe_size(&pw, CHUNK);
    }
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_fd(), None, &pw, None, CHUNK, flags).map_err(io::Error::from)
            }) {
                Ok(n) => break n,
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // The source finished sending: pass the half-close on.
            let _ = rustix::net::shutdown(dst.as_fd(), Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(&pr, None, dst.as_fd(), None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "splice to the destination moved nothing",
                    ))
                }
                Ok(m) => {
                    left -= m;
                    count.fetch_add(m as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One direction through a user-space buffer (when no pipe can be made).
async fn copy_one_way(
    src: &TcpStream,
    dst: &TcpStream,
    count: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_read(&mut buf) {
                Ok(n) => break n,
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            let _ = rustix::net::shutdown(dst.as_fd(), Shutdown::Write);
            return Ok(());
        }
        let mut off = 0;
        while off < n {
            dst.writable().await?;
            match dst.try_write(&buf[off..n]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(m) => {
                    off += m;
                    count.fetch_add(m as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Relays both directions between `client` and `upstream` until both have ended (or
/// one fails). `counters.written` counts client → upstream, `counters.read` upstream →
/// client, as [`crate::io::Counted`] does on the upstream side.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
) -> io::Result<()> {
    let up = one_way(client, upstream, &counters.written);
    let down = one_way(upstream, client, &counters.read);
    // The first failure ends both directions (the other would wait for ever).
    tokio::try_join!(up, down).map(|_| ())
}
