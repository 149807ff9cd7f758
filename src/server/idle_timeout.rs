//! An idle deadline for HTTP/2 connections.
//!
//! HTTP/1 connections get one from [`super::head_timeout`]; h2 has none of its
//! own, so a client that finishes the handshake and then sends nothing would
//! hold a connection slot for good. [`IdleTimeout`] wraps the byte stream and
//! ends it (a clean EOF, so hyper closes the connection) once nothing has
//! arrived for the timeout while no request is open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests open on a connection, counted by [`OpenRequest`] guards.
#[derive(Default)]
pub(crate) struct OpenRequests(AtomicUsize);

/// Counts one open request for as long as it lives.
pub(crate) struct OpenRequest(Arc<OpenRequests>);

impl OpenRequest {
    pub(crate) fn enter(open: &Arc<OpenRequests>) -> Self {
        open.0.fetch_add(1, Ordering::AcqRel);
        OpenRequest(open.clone())
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
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
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + this.timeout;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                while this.deadline.as_mut().poll(cx).is_ready() {
                    if this.open.0.load(Ordering::Acquire) == 0 {
                        return Poll::Ready(Ok(())); // EOF: hyper closes the connection
                    }
                    // A request is being answered: quiet is expected; look again later.
                    let next = Instant::now() + this.timeout;
                    this.deadline.as_mut().reset(next);
                }
                Poll::Pending
            }
        }
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
