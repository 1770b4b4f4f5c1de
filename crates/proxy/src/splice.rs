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
    let (pr, pw): (OwnedFd, OwnedFd) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    // Best effort: a bigger pipe means fewer wake-ups; the default (64 KiB) works too.
    let _ = rustix::pipe::fcntl_setpipe_size(&pw, CHUNK);
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
