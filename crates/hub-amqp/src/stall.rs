//! Noticing a connection whose recovery does not run.
//!
//! lapin recovers a lost connection on its own thread, asking [`crate::connect`]'s transport
//! callback for each new socket. Should that thread hang (lapin 4.12.3 did, one broker restart
//! in five, until `third_party/lapin`'s patch), the connection stays down for good, no attempt
//! is ever made, and nothing else would say so: the hub looked "connecting" for ever, consuming
//! nothing. So the backend's watchdog counts the callback's calls per connection: down for
//! [`STALL_LIMIT`] with no call made and none under way, the recovery has stalled, and the
//! backend stops with that reason (the hub exits non-zero for its supervisor to restart it,
//! as when lapin gives up).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long a connection may be down with no reconnect attempt begun or under way. lapin asks
/// for a transport again within milliseconds of losing one or of a failed handshake; our own
/// pause between attempts (at most 30 s) runs inside the callback, so counts as under way.
pub(crate) const STALL_LIMIT: Duration = Duration::from_secs(60);

/// One connection's recovery attempts, as its transport callback sees them.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Calls of the transport callback for a recovery (the first transport is not one).
    entered: AtomicU64,
    /// A call is under way (its pause, resolving, connecting, TLS).
    busy: AtomicBool,
}

impl Recovery {
    /// Marks a recovery's transport call as begun; dropping the guard marks it ended.
    pub(crate) fn attempt(&self) -> Attempt<'_> {
        self.entered.fetch_add(1, Ordering::AcqRel);
        self.busy.store(true, Ordering::Release);
        Attempt(self)
    }

    /// Calls begun so far, and whether one is under way.
    fn read(&self) -> (u64, bool) {
        (
            self.entered.load(Ordering::Acquire),
            self.busy.load(Ordering::Acquire),
        )
    }
}

/// A transport call under way (see [`Recovery::attempt`]).
pub(crate) struct Attempt<'a>(&'a Recovery);

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The watchdog's view of one connection: since when it has been down without a new attempt.
#[derive(Debug, Default)]
pub(crate) struct StallWatch {
    /// When the current quiet stretch began, and the attempts counted then.
    quiet_since: Option<(Instant, u64)>,
}

impl StallWatch {
    /// Called on each tick: whether the connection has now been down for `limit` with no
    /// recovery attempt begun or under way.
    pub(crate) fn stalled(
        &mut self,
        recovery: &Recovery,
        connected: bool,
        now: Instant,
        limit: Duration,
    ) -> bool {
        let (entered, busy) = recovery.read();
        if connected || busy {
            self.quiet_since = None;
            return false;
        }
        match self.quiet_since {
            Some((since, seen)) if seen == entered => now.duration_since(since) >= limit,
            _ => {
                self.quiet_since = Some((now, entered));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    /// Down and quiet for the limit is a stall; an attempt begun, one under way, or the
    /// connection back each start the count over.
    #[test]
    fn a_connection_down_with_no_attempt_for_the_limit_has_stalled() {
        let p = Recovery::default();
        let mut w = StallWatch::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(!w.stalled(&p, true, at(0), LIMIT), "connected");
        assert!(!w.stalled(&p, false, at(1), LIMIT), "quiet from 1 s");
        assert!(!w.stalled(&p, false, at(60), LIMIT), "59 s quiet");
        // An attempt begins and takes 100 s (its pause, then a connect timeout): not quiet.
        {
            let _a = p.attempt();
            assert!(!w.stalled(&p, false, at(61), LIMIT));
            assert!(!w.stalled(&p, false, at(161), LIMIT));
        }
        assert!(!w.stalled(&p, false, at(162), LIMIT), "quiet from 162 s");
        assert!(!w.stalled(&p, false, at(221), LIMIT));
        assert!(
            w.stalled(&p, false, at(222), LIMIT),
            "60 s down, nothing tried"
        );
        // A call counted between two ticks (begun and ended unseen) starts it over too.
        drop(p.attempt());
        assert!(!w.stalled(&p, false, at(223), LIMIT));
        assert!(!w.stalled(&p, false, at(282), LIMIT));
        assert!(w.stalled(&p, false, at(283), LIMIT));
        // Back: a later outage counts from its own start.
        assert!(!w.stalled(&p, true, at(284), LIMIT));
        assert!(!w.stalled(&p, false, at(300), LIMIT));
        assert!(!w.stalled(&p, false, at(359), LIMIT));
        assert!(w.stalled(&p, false, at(360), LIMIT));
    }
}
