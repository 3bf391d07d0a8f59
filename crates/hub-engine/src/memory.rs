//! The in-memory backend: what is published is delivered back into the same hub.
//!
//! For demos and for testing consumers without a broker; it has no acknowledgements of its own
//! (see [`MemoryBackend::send_acked`] to observe the dispatcher's verdict).

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::oneshot;

use hub_core::{
    Backend, BackendConfig, BackendContext, BackendError, BoxError, Delivery, IntakeClosed,
    Message, PublishError, Sink, Verdict,
};

/// Loopback backend, `type = "memory"`: publish → deliver, in process.
#[derive(Default)]
pub struct MemoryBackend {
    /// Shared by every publisher, so they share one route cache too.
    sink: Mutex<Option<Arc<Sink>>>,
    record: Option<Mutex<Vec<Message>>>,
}

impl MemoryBackend {
    /// A loopback backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// A loopback backend that also keeps every message published through it (for tests).
    pub fn recording() -> Self {
        Self {
            sink: Mutex::default(),
            record: Some(Mutex::default()),
        }
    }

    /// Every message published so far (empty unless built with [`MemoryBackend::recording`]).
    pub fn published(&self) -> Vec<Message> {
        self.record
            .as_ref()
            .map(|r| r.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default()
    }

    fn intake(&self) -> Result<Arc<Sink>, PublishError> {
        let guard = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        guard.clone().ok_or_else(|| PublishError::Unavailable {
            backend: "memory".into(),
            reason: "the backend is not running".into(),
        })
    }

    fn unavailable(e: IntakeClosed) -> PublishError {
        PublishError::Unavailable {
            backend: "memory".into(),
            reason: e.to_string(),
        }
    }

    /// Delivers `msg` into the hub and returns the verdict the dispatcher will reach once every
    /// matching consumer has finished it.
    ///
    /// # Errors
    /// [`PublishError::Unavailable`] when the backend is not running.
    pub async fn send_acked(
        &self,
        msg: Message,
    ) -> Result<oneshot::Receiver<Verdict>, PublishError> {
        let intake = self.intake()?;
        let (tx, rx) = oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let acker = move |v: Verdict| {
            if let Some(tx) = tx.lock().unwrap_or_else(PoisonError::into_inner).take() {
                let _ = tx.send(v);
            }
        };
        intake
            .deliver(Delivery::with_acker(msg, Box::new(acker)))
            .await
            .map_err(Self::unavailable)?;
        Ok(rx)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    async fn run(&self, cx: BackendContext) -> Result<(), BackendError> {
        *self.sink.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(cx.sink.clone()));
        cx.metrics.set_connected(true);
        cx.shutdown.cancelled().await;
        self.sink
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        cx.metrics.set_connected(false);
        Ok(())
    }

    async fn publish(&self, msg: &Message) -> Result<(), PublishError> {
        let intake = self.intake()?;
        if let Some(r) = &self.record {
            r.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(msg.clone());
        }
        intake
            .deliver(Delivery::new(msg.clone()))
            .await
            .map_err(Self::unavailable)
    }
}

/// `type = "memory"`: the in-process loopback backend. It has no keys.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {}

impl BackendConfig for MemoryConfig {
    const TYPE: &'static str = "memory";
    const DESCRIPTION: &'static str =
        "in-process loopback: what is published is delivered back into this hub";

    fn build(self, _id: &str) -> Result<Arc<dyn Backend>, BoxError> {
        Ok(Arc::new(MemoryBackend::new()))
    }
}
