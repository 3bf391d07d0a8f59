//! A connection's write-stall limit. A WebSocket writer times its own sends; a Server-Sent
//! Events body is written by hyper, which simply stops asking for more while the client's socket
//! is full. The HTTP server's connection (in the `hub` crate) therefore fails a write that has
//! made no progress for the limit an `/events` response sets here, and says it did, so the
//! gateway counts the disconnect as `slow`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Shared by one HTTP connection and the request it serves (as a request extension).
#[derive(Debug, Default)]
pub struct WriteStall {
    /// Milliseconds; 0: no limit (the server's `idle_timeout` alone applies).
    limit_ms: AtomicU64,
    fired: AtomicBool,
}

impl WriteStall {
    /// A write that makes no progress for `limit` fails from now on (the connection closes).
    pub fn set_limit(&self, limit: Duration) {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.limit_ms.store(ms, Ordering::Relaxed);
    }

    /// No limit any more (the `/events` response ended; its connection may serve others).
    pub fn clear(&self) {
        self.limit_ms.store(0, Ordering::Relaxed);
    }

    /// The limit, if one was set.
    pub fn limit(&self) -> Option<Duration> {
        match self.limit_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// The connection closed because a write stalled past the limit.
    pub fn fire(&self) {
        self.fired.store(true, Ordering::Relaxed);
    }

    /// Whether [`fire`](Self::fire) was called.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}
