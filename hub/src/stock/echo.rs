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
        /// The file, and its length after the last whole line written.
        file: Mutex<Option<(tokio::fs::File, u64)>>,
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
            let end = f
                .metadata()
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .len();
            *file.lock().await = Some((f, end));
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
                let (f, end) = guard.as_mut().ok_or_else(|| {
                    ConsumeError::transient(format!("{} is not open", path.display()))
                })?;
                // One write per line, flushed (tokio's `File` reports a failed write only at the
                // next operation): a line is in the file once the message counts as done. A write
                // that failed part-way (a full disk) is cut off again, so the retry's line is
                // never glued to a torn one.
                let written = match f.write_all(line.as_bytes()).await {
                    Ok(()) => f.flush().await,
                    Err(e) => Err(e),
                };
                match written {
                    Ok(()) => {
                        *end += line.len() as u64;
                        Ok(())
                    }
                    Err(e) => {
                        let cut = f.set_len(*end).await;
                        Err(ConsumeError::transient(match cut {
                            Ok(()) => format!("writing to {}: {e}", path.display()),
                            Err(c) => format!(
                                "writing to {}: {e}; cutting the torn line off failed too: {c}",
                                path.display()
                            ),
                        }))
                    }
                }
            }
        }
    }

    async fn stop(&self, _cx: &Context) {
        if let Sink::File { file, .. } = &self.0
            && let Some((f, _)) = file.lock().await.as_mut()
        {
            let _ = f.sync_all().await;
        }
    }
}
