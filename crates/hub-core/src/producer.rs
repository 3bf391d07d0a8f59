//! The `Producer` trait: Moksha's producers and pollers.

use std::time::Duration;

use async_trait::async_trait;

use crate::{BoxError, Context};

/// Publishes messages on its own schedule.
///
/// With an [`interval`](Producer::interval), the hub calls [`produce`](Producer::produce) once per
/// period (a poller); an error is logged and the next period runs as usual. Without one, `produce`
/// is called once and may run as long as it likes (a continuous producer); if it fails it is called
/// again after one second. Either way the hub drops the running call at shutdown.
#[async_trait]
pub trait Producer: Send + Sync + 'static {
    /// The period between calls, or `None` for a continuous producer.
    fn interval(&self) -> Option<Duration> {
        None
    }

    /// Does one round of work (or, without an interval, all of it), publishing through `cx`.
    async fn produce(&self, cx: &Context) -> Result<(), BoxError>;
}
