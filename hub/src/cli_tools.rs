//! `hub tail` and `hub publish`.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use hub_core::{Message, Pattern};
use hub_zeromq::Format;
use hub_zeromq::tools::{self, Peer};
use tracing::warn;

use crate::{EXIT_CONFIG, EXIT_FAILURE};

/// `--format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum WireFormat {
    /// fedmsg envelopes.
    Fedmsg,
    /// `[topic, JSON body]`.
    Raw,
}

impl From<WireFormat> for Format {
    fn from(f: WireFormat) -> Self {
        match f {
            WireFormat::Fedmsg => Format::Fedmsg,
            WireFormat::Raw => Format::Raw,
        }
    }
}

pub(crate) async fn tail(
    endpoint: &str,
    topics: &[String],
    format: WireFormat,
    count: Option<u64>,
) -> ExitCode {
    let mut patterns = Vec::new();
    for t in topics {
        match Pattern::new(t) {
            Ok(p) => patterns.push(p),
            Err(e) => {
                eprintln!("--topic: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        }
    }
    let mut seen = 0u64;
    let result = async {
        let stdout = std::io::stdout();
        let run = tools::tail(
            endpoint,
            format.into(),
            &patterns,
            Duration::from_secs(10),
            |m| {
                let mut out = stdout.lock();
                let ok = writeln!(out, "{}", m.to_json()).and_then(|()| out.flush()).is_ok();
                seen += 1;
                ok && count.is_none_or(|c| seen < c)
            },
            |bad| warn!(message_id = bad.id.as_deref().unwrap_or("-"), reason = %bad.reason, "Rejected a malformed message."),
        );
        tokio::select! {
            r = run => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn parse_message(topic: &str, json: &str) -> Result<Message, ExitCode> {
    let body: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        eprintln!("JSON argument: {e}");
        ExitCode::from(EXIT_CONFIG)
    })?;
    match Pattern::new(topic) {
        Ok(p) if p.is_literal() => Ok(Message::new(topic, body)),
        Ok(_) => {
            eprintln!("TOPIC: {topic:?} cannot contain wildcards");
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(e) => {
            eprintln!("TOPIC: {e}");
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

pub(crate) async fn publish_amqp(url: &str, exchange: &str, topic: &str, json: &str) -> ExitCode {
    let msg = match parse_message(topic, json) {
        Ok(m) => m,
        Err(code) => return code,
    };
    printed_id(hub_amqp::publish_once(url, exchange, &msg).await)
}

pub(crate) async fn publish(
    bind: Option<String>,
    connect: Option<String>,
    topic: &str,
    json: &str,
    format: WireFormat,
    wait: Duration,
) -> ExitCode {
    let msg = match parse_message(topic, json) {
        Ok(m) => m,
        Err(code) => return code,
    };
    let peer = match (bind, connect) {
        (Some(b), _) => Peer::Bind(b),
        (None, Some(c)) => Peer::Connect(c),
        (None, None) => return ExitCode::from(EXIT_CONFIG),
    };
    // fedmsg's own post-init sleep is 0.5 s: enough for the subscription to reach us.
    printed_id(
        tools::publish_one(&peer, &msg, format.into(), wait, Duration::from_millis(500)).await,
    )
}

/// Prints the published message's id (exit 0) or the error (exit 1).
fn printed_id(result: Result<String, impl std::fmt::Display>) -> ExitCode {
    match result {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
