use std::path::PathBuf;
use std::sync::Arc;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, ResultExt,
    async_trait,
};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// `type = "echo"`: writes each message as one JSON line, to stdout or appended to `path`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// File to append to (created if missing); stdout when absent.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

enum Sink {
    Stdout,
    File {
        path: PathBuf,
        file: Mutex<Option<tokio::fs::File>>,
    },
}

struct Echo(Sink);

impl ConsumerConfig for EchoConfig {
    const TYPE: &'static str = "echo";
    const DESCRIPTION: &'static str =
        "writes each message as one JSON line to stdout, or appends it to settings.path";

    fn build(self, _: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(Echo(match self.path {
            None => Sink::Stdout,
            Some(path) => Sink::File {
                path,
                file: Mutex::new(None),
            },
        })))
    }
}

#[async_trait]
impl Consumer for Echo {
    async fn start(&self, _cx: &Context) -> Result<(), BoxError> {
        if let Sink::File { path, file } = &self.0 {
            let f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|e| format!("cannot open {} for appending: {e}", path.display()))?;
            *file.lock().await = Some(f);
        }
        Ok(())
    }

    async fn consume(&self, _cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let mut line = msg.to_json();
        line.push('\n');
        match &self.0 {
            Sink::Stdout => {
                let mut out = tokio::io::stdout();
                out.write_all(line.as_bytes()).await.transient()?;
                out.flush().await.transient()
            }
            Sink::File { path, file } => {
                let mut guard = file.lock().await;
                let f = guard.as_mut().ok_or_else(|| {
                    ConsumeError::transient(format!("{} is not open", path.display()))
                })?;
                // One write per line, unbuffered: a line is on disk once the message counts as done.
                f.write_all(line.as_bytes()).await.transient()
            }
        }
    }

    async fn stop(&self, _cx: &Context) {
        if let Sink::File { file, .. } = &self.0
            && let Some(f) = file.lock().await.as_mut()
        {
            let _ = f.sync_all().await;
        }
    }
}
