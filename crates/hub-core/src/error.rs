//! Errors that carry delivery meaning.

use std::fmt;

/// A boxed error, as consumers and backends pass them around.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Whether retrying a failed message may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A passing failure (a database or HTTP peer down): retrying later may succeed.
    Transient,
    /// The message itself is bad: retrying cannot help; dead-letter it.
    Invalid,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient",
            Self::Invalid => "invalid",
        })
    }
}

/// A consumer's failure to handle one message.
///
/// Build it with [`ConsumeError::transient`] or [`ConsumeError::invalid`], or with the
/// [`ResultExt`] adapters on any `Result`. A [`DecodeError`](crate::DecodeError) converts with `?`
/// into an invalid-message error.
#[derive(Debug)]
pub struct ConsumeError {
    kind: ErrorKind,
    source: BoxError,
    retry_after: Option<std::time::Duration>,
}

impl ConsumeError {
    /// A failure that a later retry may fix.
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            source: source.into(),
            retry_after: None,
        }
    }

    /// A failure caused by the message itself; never retried.
    pub fn invalid(source: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Invalid,
            source: source.into(),
            retry_after: None,
        }
    }

    /// Transient or invalid.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// This transient failure, asking that the retry wait at least `delay` (an HTTP peer's
    /// `Retry-After`, say). The hub waits the longer of this and the consumer's backoff, at most
    /// [`ConsumeError::RETRY_AFTER_MAX`]. Ignored on an invalid-message error (never retried).
    #[must_use]
    pub fn with_retry_after(mut self, delay: std::time::Duration) -> Self {
        self.retry_after = Some(delay.min(Self::RETRY_AFTER_MAX));
        self
    }

    /// The delay asked for with [`ConsumeError::with_retry_after`].
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        self.retry_after
    }

    /// The longest delay a failure may ask for: one hour.
    pub const RETRY_AFTER_MAX: std::time::Duration = std::time::Duration::from_secs(3600);
}

/// The error as the consumer gave it (the kind is [`ConsumeError::kind`], logged beside it).
impl fmt::Display for ConsumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for ConsumeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

impl From<crate::DecodeError> for ConsumeError {
    fn from(e: crate::DecodeError) -> Self {
        Self::invalid(e)
    }
}

/// Adapters that turn any `Result` into a consumer result of the chosen kind.
pub trait ResultExt<T> {
    /// Maps the error to a transient [`ConsumeError`].
    ///
    /// # Errors
    /// The mapped error.
    fn transient(self) -> Result<T, ConsumeError>;
    /// Maps the error to an invalid-message [`ConsumeError`].
    ///
    /// # Errors
    /// The mapped error.
    fn invalid(self) -> Result<T, ConsumeError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn transient(self) -> Result<T, ConsumeError> {
        self.map_err(ConsumeError::transient)
    }
    fn invalid(self) -> Result<T, ConsumeError> {
        self.map_err(ConsumeError::invalid)
    }
}

/// A publish that did not reach its backend.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The backend is not running, or the hub is shutting down.
    #[error("backend {backend} is not accepting messages: {reason}")]
    Unavailable {
        /// Backend id.
        backend: String,
        /// Why.
        reason: String,
    },
    /// The broker refused or did not confirm the message.
    #[error("backend {backend} did not confirm the message: {reason}")]
    NotConfirmed {
        /// Backend id.
        backend: String,
        /// Why.
        reason: String,
    },
    /// Any other transport error.
    #[error("publishing on backend {backend} failed")]
    Transport {
        /// Backend id.
        backend: String,
        /// The transport's error.
        #[source]
        source: BoxError,
    },
}

/// A backend that cannot go on: bad configuration or a broker refusal that no reconnect fixes.
#[derive(Debug, thiserror::Error)]
#[error("backend {backend}: {message}")]
pub struct BackendError {
    /// Backend id.
    pub backend: String,
    /// What went wrong, naming the queue, endpoint or key at fault.
    pub message: String,
}
