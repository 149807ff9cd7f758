//! An idle deadline for HTTP/2 connections.
//!
//! HTTP/1 connections get one from [`super::head_timeout`]; h2 has none of its
//! own, so a client that finishes the handshake and then opens no request
//! would hold a connection slot for good. [`IdleTimeout`] wraps the byte
//! stream and ends it (a clean EOF, so hyper closes the connection) once no
//! request has been open for the timeout. Only requests count: bytes do not,
//! or a client could keep an empty connection forever with a PING every few
//! seconds, or a head trickled through CONTINUATION frames that never ends.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests open on a connection, counted by [`OpenRequest`] guards, and
/// when the last one opened or ended.
pub(crate) struct OpenRequests {
    open: AtomicUsize,
    born: Instant,
    /// Milliseconds after `born`.
    last_change_ms: AtomicU64,
}

impl OpenRequests {
    pub(crate) fn new() -> Self {
        OpenRequests { open: AtomicUsize::new(0), born: Instant::now(), last_change_ms: AtomicU64::new(0) }
    }

    fn changed(&self) {
        self.last_change_ms.store(self.born.elapsed().as_millis() as u64, Ordering::Release);
    }

    /// Since when no request has been open, if none is.
    fn idle_since(&self) -> Option<Instant> {
        (self.open.load(Ordering::Acquire) == 0)
            .then(|| self.born + Duration::from_millis(self.last_change_ms.load(Ordering::Acquire)))
    }
}

/// Counts one open request for as long as it lives.
pub(crate) struct OpenRequest(Arc<OpenRequests>);

impl OpenRequest {
    pub(crate) fn enter(open: &Arc<OpenRequests>) -> Self {
        open.open.fetch_add(1, Ordering::AcqRel);
        open.changed();
        OpenRequest(open.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.changed();
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    open: Arc<OpenRequests>,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    pub(crate) fn new(inner: T, timeout: Duration, open: Arc<OpenRequests>) -> Self {
        IdleTimeout { inner, timeout, open, deadline: Box::pin(tokio::time::sleep(timeout)) }
    }

    /// When the connection is to be closed if no request opens first.
    fn closes_at(&self) -> Option<Instant> {
        self.open.idle_since().map(|since| since + self.timeout)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Checked on every read too, so a steady trickle of frames still expires.
        if this.closes_at().is_some_and(|at| Instant::now() >= at) {
            return Poll::Ready(Ok(())); // EOF: hyper closes the connection
        }
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if result.is_pending() {
            while this.deadline.as_mut().poll(cx).is_ready() {
                match this.closes_at() {
                    Some(at) if Instant::now() >= at => return Poll::Ready(Ok(())),
                    Some(at) => this.deadline.as_mut().reset(at),
                    // A request is being answered: quiet is expected; look again later.
                    None => {
                        let next = Instant::now() + this.timeout;
                        this.deadline.as_mut().reset(next);
                    }
                }
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
