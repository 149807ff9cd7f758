//! A deadline for HTTP/1 request heads, answered with `408`.
//!
//! hyper's own `header_read_timeout` closes the connection without a word; a
//! sender deserves to know why. [`HeadTimeout`] wraps the connection's byte
//! stream: while no request is in progress it arms a deadline (from the
//! connection's start, then from each response), and when the deadline passes
//! it writes a `408` itself if part of a head has arrived, or simply closes an
//! idle keep-alive connection. Once hyper hands a request to the service
//! ([`RequestGuard`]), the body is the service's business (`body_timeout`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const RESPONSE_408: &[u8] = b"HTTP/1.1 408 Request Timeout\r\n\
content-type: application/json\r\n\
connection: close\r\n\
content-length: 81\r\n\
\r\n\
{\"error\":\"header_timeout\",\"message\":\"the request headers did not arrive in time\"}";

/// Shared between the stream wrapper and the per-connection service.
#[derive(Default)]
pub(crate) struct RequestState {
    in_request: AtomicBool,
    /// Bumped when a request ends, to re-arm the deadline for the next head.
    completed: AtomicU64,
}

/// Marks a request in progress for as long as it lives.
pub(crate) struct RequestGuard(Arc<RequestState>);

impl RequestGuard {
    pub(crate) fn enter(state: &Arc<RequestState>) -> Self {
        state.in_request.store(true, Ordering::Release);
        RequestGuard(state.clone())
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.completed.fetch_add(1, Ordering::AcqRel);
        self.0.in_request.store(false, Ordering::Release);
    }
}

pub(crate) struct HeadTimeout<T> {
    inner: T,
    timeout: Duration,
    state: Arc<RequestState>,
    deadline: Pin<Box<Sleep>>,
    seen_completed: u64,
    /// Bytes of a head have arrived since the deadline was armed.
    partial_head: bool,
    /// How much of the 408 has been written, once the deadline has passed.
    replying: Option<usize>,
}

impl<T> HeadTimeout<T> {
    pub(crate) fn new(inner: T, timeout: Duration, state: Arc<RequestState>) -> Self {
        HeadTimeout {
            inner,
            timeout,
            state,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            seen_completed: 0,
            partial_head: false,
            replying: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> HeadTimeout<T> {
    /// Writes the 408, then fails the read so hyper drops the connection.
    fn poll_reply(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let written = self.replying.get_or_insert(0);
        while *written < RESPONSE_408.len() {
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &RESPONSE_408[*written..])) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => *written += n,
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        ready!(Pin::new(&mut self.inner).poll_shutdown(cx))?;
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head timed out")))
    }

    /// Called when the deadline has passed with no request in progress.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.partial_head {
            self.poll_reply(cx)
        } else {
            // An idle connection: end it quietly (EOF), as servers do.
            Poll::Ready(Ok(()))
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadTimeout<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replying.is_some() {
            return this.poll_reply(cx);
        }
        let waiting_for_head = !this.state.in_request.load(Ordering::Acquire);
        if waiting_for_head {
            let completed = this.state.completed.load(Ordering::Acquire);
            if completed != this.seen_completed {
                this.seen_completed = completed;
                this.partial_head = false;
                let next = Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
            }
            // Checked on every read, so a head trickled byte by byte still expires.
            if Instant::now() >= this.deadline.deadline() {
                return this.poll_expired(cx);
            }
        }
        let filled_before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if waiting_for_head {
            match result {
                Poll::Ready(Ok(())) if buf.filled().len() > filled_before => this.partial_head = true,
                Poll::Pending if this.deadline.as_mut().poll(cx).is_ready() => return this.poll_expired(cx),
                _ => {}
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HeadTimeout<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canned_response_declares_its_length() {
        let text = std::str::from_utf8(RESPONSE_408).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        serde_json::from_str::<serde_json::Value>(body).unwrap();
    }
}
