use thiserror::Error;

/// Represents an error when encoding/decoding raw byte buffers and frames
#[non_exhaustive]
#[derive(Error, Debug)]
pub enum CodecError {
    #[error("{0}")]
    Command(&'static str),
    #[error("{0}")]
    Greeting(&'static str),
    #[error("{0}")]
    Mechanism(&'static str),
    #[error("{0}")]
    Decode(&'static str),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(&'static str),
    /// A message larger than `SocketOptions::max_message_size` (libzmq's `ZMQ_MAXMSGSIZE`):
    /// refused when its frame header arrives; the peer is disconnected.
    #[error("message of at least {size} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// The message's size so far: its earlier frames and the length the refused frame
        /// announced.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

pub(crate) type CodecResult<T> = Result<T, CodecError>;
