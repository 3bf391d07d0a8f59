//! Rate-limited log lines for what an outsider can cause at any rate (malformed or oversized
//! input, receive errors): at most one line a second, saying how many were held back.

use std::time::{Duration, Instant};

/// Allows a log line at most once a second; counts the ones held back in between.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last: Option<Instant>,
    held: u64,
}

impl LogThrottle {
    /// A throttle that allows its first line at once.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(lines held back since the last one written)` when a line may be written now;
    /// `None` (and one more held back) otherwise.
    pub fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(t) if now.duration_since(t) < Duration::from_secs(1) => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogThrottle;

    #[test]
    fn one_line_a_second_with_the_count_held_back() {
        let mut t = LogThrottle::new();
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        t.last = t.last.map(|l| l - std::time::Duration::from_secs(2));
        assert_eq!(t.allow(), Some(2));
    }
}
