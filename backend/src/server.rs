//! The HTTP server: accepts connections and serves the application over HTTP/1.1 (with
//! upgrades for the WebSockets), bounding what a connection can hold before it says anything.
//!
//! poem's own server has no header-read timeout and spins when `accept` fails (at the fd
//! limit); this one runs hyper directly with:
//! - a cap on open connections (a semaphore; below the process's fd limit), so accepting
//!   stops instead of failing;
//! - accept errors backed off (10 ms doubling to 1 s) instead of retried at once;
//! - a header-read timeout: a request head must arrive whole within it, and an idle
//!   keep-alive connection is closed after it too (hyper starts the timer when it waits for
//!   a head). Request bodies have their own deadline ([`crate::body_limit`]).
//! - graceful shutdown: stop accepting, let requests finish within a grace period.
//! - a listen backlog of [`LISTEN_BACKLOG`] (tokio's `bind` takes 128): in a burst of
//!   connections beyond the backlog Linux drops the client's final ACK, the client believes
//!   it is connected, and the server only takes the connection after SYN-ACK retransmits
//!   (1 s, 2 s, 4 s ...), so it was neither served nor timed out for seconds.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::endpoint::BoxEndpoint;
use poem::http::uri::Scheme;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, Request};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// First pause after a failed accept; doubles up to [`MAX_ACCEPT_BACKOFF`].
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// File descriptors kept free for the database, the UDP socket, logs and such.
const FD_HEADROOM: u64 = 64;

/// Connections the kernel completes and queues before they are accepted (capped by
/// `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 1024;

/// A TCP listener on `addr` with a backlog of [`LISTEN_BACKLOG`] and `SO_REUSEADDR`, as
/// tokio's `TcpListener::bind` but for the backlog.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a request head (or an idle keep-alive connection) may take.
    pub header_read_timeout: Duration,
}

impl ConnectionLimits {
    /// `max_connections` lowered to fit under the process's open-file limit.
    pub fn fitted_to_fd_limit(mut self) -> Self {
        if let Some(fds) = open_file_limit() {
            let fit =
                usize::try_from(fds.saturating_sub(FD_HEADROOM).max(16)).unwrap_or(usize::MAX);
            if fit < self.max_connections {
                tracing::warn!(
                    configured = self.max_connections,
                    fd_limit = fds,
                    "lowering the connection cap to fit the open-file limit"
                );
                self.max_connections = fit;
            }
        }
        self
    }
}

/// The soft limit on open files, where the platform tells.
fn open_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _hard)| soft)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Serves `app` on `listener` until `shutdown`, then gives open requests `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    app: BoxEndpoint<'static>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<()> {
    let app = Arc::new(app);
    let local = listener.local_addr()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    loop {
        // A free slot first: at the cap, connections wait in the kernel's backlog.
        let slot = tokio::select! {
            () = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(s) => s,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, remote) = match accepted {
            Ok(a) => {
                backoff = MIN_ACCEPT_BACKOFF;
                a
            }
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = backoff.as_millis() as u64, "accept failed");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let app = app.clone();
                async move {
                    let req = Request::from((
                        req,
                        LocalAddr(local.into()),
                        RemoteAddr(remote.into()),
                        Scheme::HTTP,
                    ));
                    let resp: hyper::Response<_> = app.get_response(req).await.into();
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(
                    TokioIo::new(Counted {
                        io: socket,
                        _slot: slot,
                    }),
                    service,
                )
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = &mut conn => return,
                () = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            let _ = tokio::time::timeout(grace, conn).await;
        });
    }
    drop(listener);
    // Every slot back means every connection has ended.
    let all = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(grace + Duration::from_millis(100), slots.acquire_many(all)).await;
    Ok(())
}

/// A connection holding its slot: the slot is released when the socket closes, also after an
/// upgrade hands the socket to a WebSocket.
struct Counted<T> {
    io: T,
    _slot: OwnedSemaphorePermit,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
