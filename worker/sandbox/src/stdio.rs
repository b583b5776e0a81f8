//! The guest's stdout and stderr: a bounded, truncating sink that never
//! errors, so a full pipe cannot make a guest's `println!` panic. What it
//! keeps is forwarded to the host log after the job, tagged with the plugin
//! and job, with a truncation marker when bytes were dropped.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// How much a guest may write per `check-write` permit.
const WRITE_PERMIT: usize = 64 << 10;

#[derive(Debug, Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: usize,
}

/// A capped in-memory sink for one stream of one job.
#[derive(Debug, Clone)]
pub(crate) struct GuestOutput {
    captured: Arc<Mutex<Captured>>,
    cap: usize,
}

impl GuestOutput {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            captured: Arc::default(),
            cap,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Captured> {
        // A poisoned lock only means a writer panicked mid-append; the bytes
        // are still a valid prefix, so keep using them.
        self.captured.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn append(&self, bytes: &[u8]) {
        let mut c = self.lock();
        let room = self.cap.saturating_sub(c.kept.len());
        let take = room.min(bytes.len());
        c.kept.extend_from_slice(&bytes[..take]);
        c.dropped += bytes.len() - take;
    }

    /// The kept text (lossily decoded) and the number of bytes dropped.
    pub(crate) fn take(&self) -> (String, usize) {
        let mut c = self.lock();
        let kept = std::mem::take(&mut c.kept);
        (String::from_utf8_lossy(&kept).into_owned(), c.dropped)
    }

    /// Forgets what was written (a warm instance's next job starts empty).
    pub(crate) fn clear(&self) {
        *self.lock() = Captured::default();
    }

    /// The last `lines` non-empty lines written, joined with ` / `, if any
    /// (used to explain traps: a Rust guest prints its panic message to
    /// stderr before aborting).
    pub(crate) fn tail(&self, lines: usize) -> Option<String> {
        let c = self.lock();
        let text = String::from_utf8_lossy(&c.kept);
        let mut tail: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .rev()
            .take(lines)
            .collect();
        tail.reverse();
        (!tail.is_empty()).then(|| tail.join(" / "))
    }

    /// Forwards what was kept to the host log, one event per line.
    pub(crate) fn forward(&self, stream: &'static str, plugin: &str, job_id: &str) {
        let (text, dropped) = self.take();
        for line in text.lines() {
            tracing::info!(target: "kiln::plugin", plugin, job_id, stream, "{line}");
        }
        if dropped > 0 {
            tracing::warn!(target: "kiln::plugin", plugin, job_id, stream, dropped_bytes = dropped, "guest output truncated");
        }
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.append(&bytes);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }
    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Always accept: bytes past the cap are counted and dropped.
        Ok(WRITE_PERMIT)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keeps_up_to_the_cap_and_counts_the_rest() {
        let mut out = GuestOutput::new(8);
        assert_eq!(out.check_write().unwrap(), WRITE_PERMIT);
        out.write(Bytes::from_static(b"hello\n")).unwrap();
        out.write(Bytes::from_static(b"world\n")).unwrap();
        // Past the cap, writes still succeed.
        out.write(Bytes::from_static(b"more")).unwrap();
        assert_eq!(out.tail(1).as_deref(), Some("wo"));
        assert_eq!(out.tail(5).as_deref(), Some("hello / wo"));
        assert_eq!(out.take(), ("hello\nwo".to_owned(), 8));
    }
}
