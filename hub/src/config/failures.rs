//! The keys that say what happens to a failing or flooding consumer: `retry`, `rate_limit` and
//! `dead_letter`, on a consumer, and `retry` and `dead_letter` on a backend as defaults for its
//! consumers (a consumer's `retry` keys override the backend's one by one).

use std::path::PathBuf;
use std::time::Duration;

use hub_core::{RateLimit, RetryPolicy};
use hub_engine::dead_letter::DeadLetterTarget;
use serde::Deserialize;

/// `retry = { max_attempts, delay, max_delay, in_order }`, every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default, with = "hub_core::duration::option")]
    delay: Option<Duration>,
    #[serde(default, with = "hub_core::duration::option")]
    max_delay: Option<Duration>,
    #[serde(default)]
    in_order: Option<bool>,
}

impl RawRetry {
    /// The given keys, the others unset.
    pub(crate) fn from_parts(
        max_attempts: Option<u32>,
        delay: Option<Duration>,
        max_delay: Option<Duration>,
    ) -> Self {
        Self {
            max_attempts,
            delay,
            max_delay,
            in_order: None,
        }
    }

    /// `self` over `defaults`, key by key.
    pub(crate) fn over(&self, defaults: &RawRetry) -> RawRetry {
        RawRetry {
            max_attempts: self.max_attempts.or(defaults.max_attempts),
            delay: self.delay.or(defaults.delay),
            max_delay: self.max_delay.or(defaults.max_delay),
            in_order: self.in_order.or(defaults.in_order),
        }
    }

    /// The policy, unset keys at their defaults; or the problems (key, message).
    fn policy(&self) -> Result<RetryPolicy, Vec<(&'static str, String)>> {
        let d = RetryPolicy::default();
        let p = RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(d.max_attempts),
            delay: self.delay.unwrap_or(d.delay),
            max_delay: self
                .max_delay
                .unwrap_or(d.max_delay.max(self.delay.unwrap_or_default())),
            in_order: self.in_order.unwrap_or(d.in_order),
        };
        let mut problems = Vec::new();
        if p.max_attempts == 0 {
            problems.push((
                "max_attempts",
                "must be at least 1 (1: never retried)".to_owned(),
            ));
        }
        if p.max_delay < p.delay {
            problems.push((
                "max_delay",
                format!(
                    "must be at least `delay` ({:?}); it caps the doubling delay",
                    p.delay
                ),
            ));
        }
        if problems.is_empty() {
            Ok(p)
        } else {
            Err(problems)
        }
    }
}

/// `rate_limit = { rate, per, burst }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    rate: u32,
    #[serde(default = "one_second", with = "hub_core::duration")]
    per: Duration,
    #[serde(default)]
    burst: Option<u32>,
}

fn one_second() -> Duration {
    Duration::from_secs(1)
}

impl RawRateLimit {
    /// The limit; or the problems (key, message).
    pub(crate) fn limit(&self) -> Result<RateLimit, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if self.rate == 0 {
            problems.push(("rate", "must be at least 1".to_owned()));
        }
        if self.per.is_zero() {
            problems.push(("per", "must be longer than 0s".to_owned()));
        }
        if self.burst == Some(0) {
            problems.push((
                "burst",
                "must be at least 1 (leave it out for `rate`)".to_owned(),
            ));
        }
        if problems.is_empty() {
            Ok(RateLimit {
                rate: self.rate,
                per: self.per,
                burst: self.burst.unwrap_or(self.rate),
            })
        } else {
            Err(problems)
        }
    }
}

/// `dead_letter = { file = "..." }` or `{ topic = "...", backend = "..." }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDeadLetter {
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    backend: Option<String>,
}

impl RawDeadLetter {
    /// The target; or the problem (key, message).
    pub(crate) fn target(&self) -> Result<DeadLetterTarget, (&'static str, String)> {
        match (&self.file, &self.topic) {
            (Some(_), Some(_)) => Err(("", "give either `file` or `topic`, not both".to_owned())),
            (None, None) => Err((
                "",
                "give `file = \"/path/dead-letters.jsonl\"` or `topic = \"...\"`".to_owned(),
            )),
            (Some(_), None) if self.backend.is_some() => Err((
                "backend",
                "applies to a `topic` dead-letter sink only".to_owned(),
            )),
            (Some(f), None) if f.as_os_str().is_empty() => {
                Err(("file", "must not be empty".to_owned()))
            }
            (Some(f), None) => Ok(DeadLetterTarget::File(f.clone())),
            (None, Some(t)) if t.is_empty() => Err(("topic", "must not be empty".to_owned())),
            (None, Some(t)) => Ok(DeadLetterTarget::Topic {
                topic: t.clone(),
                backend: self.backend.clone(),
            }),
        }
    }

    /// The backend a topic sink names, if any.
    pub(crate) fn backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }
}

/// A backend's defaults for its consumers.
#[derive(Debug, Clone, Default)]
pub(crate) struct BackendFailures {
    pub retry: Option<RawRetry>,
    pub dead_letter: Option<RawDeadLetter>,
}

/// A consumer's retry policy: its own keys over its backend's; `None` when neither sets any
/// (the backend's own default applies: AMQP's keys, or [`RetryPolicy::default`]).
pub(crate) fn retry_policy(
    own: Option<&RawRetry>,
    backend: Option<&RawRetry>,
) -> Option<Result<RetryPolicy, Vec<(&'static str, String)>>> {
    match (own, backend) {
        (None, None) => None,
        (Some(o), None) => Some(o.policy()),
        (None, Some(b)) => Some(b.policy()),
        (Some(o), Some(b)) => Some(o.over(b).policy()),
    }
}
