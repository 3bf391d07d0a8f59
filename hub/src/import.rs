//! `hub import fedora-messaging CONFIG`: a hub configuration from a fedora-messaging config
//! file, so a team on fedora-messaging moves with one command. What cannot be translated is
//! said on stderr; the rest is printed (and passes `hub check`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use figment::Figment;
use figment::providers::{Format, Toml};
use serde::Deserialize;
use serde_json::Value;

use crate::{EXIT_CONFIG, EXIT_FAILURE};

/// The parts of a fedora-messaging config file the hub uses (the rest is listed on stderr).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FmConfig {
    amqp_url: Option<String>,
    callback: Option<String>,
    passive_declares: bool,
    tls: BTreeMap<String, Value>,
    qos: BTreeMap<String, Value>,
    queues: BTreeMap<String, FmQueue>,
    bindings: Vec<FmBinding>,
    exchanges: BTreeMap<String, Value>,
    consumer_config: BTreeMap<String, Value>,
    #[serde(flatten)]
    other: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FmQueue {
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: BTreeMap<String, Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct FmBinding {
    queue: String,
    exchange: String,
    routing_keys: Vec<String>,
}

/// Keys that only matter to fedora-messaging itself: dropped without a word.
const IGNORED: &[&str] = &[
    "client_properties",
    "log_config",
    "publish_exchange",
    "topic_prefix",
    "publish_priority",
];

/// A TOML basic string (JSON's escapes are TOML's; DEL, which JSON leaves, is escaped too).
fn quoted(s: &str) -> String {
    serde_json::to_string(s)
        .unwrap_or_else(|_| "\"\"".into())
        .replace('\u{7f}', "\\u007F")
}

/// A consumer id from a queue name: letters, digits, `_` and `-`.
fn id_of(queue: &str) -> String {
    let id: String = queue
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if id.is_empty() { "callback".into() } else { id }
}

/// The hub configuration for `config`, and what could not be translated.
fn translate(config: &Path, fm: &FmConfig, python: &str, adapter: &str) -> (String, Vec<String>) {
    let mut notes = Vec::new();
    let mut out = String::new();
    let source = config.display();
    let _ = writeln!(
        out,
        "# Made by `hub import fedora-messaging` from {}.",
        quoted(&source.to_string())
    );
    let _ = writeln!(
        out,
        "# The callback runs unchanged under the hub's fedora-messaging adapter, which reads"
    );
    let _ = writeln!(
        out,
        "# [consumer_config] (and `callback`) from that same file.\n"
    );
    let name = fm
        .queues
        .keys()
        .next()
        .map_or_else(|| "fedora-messaging".to_owned(), |q| id_of(q));
    let _ = writeln!(out, "[hub]\nname = {}\n", quoted(&name));
    backend(fm, &mut out, &mut notes);
    let command = |out: &mut String| {
        let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        let _ = writeln!(
            out,
            "command = [{}, {}, \"--config\", {}]\n",
            quoted(python),
            quoted(adapter),
            quoted(&absolute.display().to_string())
        );
    };
    consumers(fm, &mut out, &mut notes, command);
    if fm.passive_declares {
        notes.push(
            "passive_declares = true is not translated: the hub declares its queues and bindings"
                .into(),
        );
    }
    if !fm.exchanges.is_empty() {
        notes.push("[exchanges] are not translated: the hub declares its one topic exchange (amq.topic by default)".into());
    }
    for key in fm.other.keys() {
        if !IGNORED.contains(&key.as_str()) {
            notes.push(format!("`{key}` is not translated"));
        }
    }
    (out, notes)
}

/// `[backends.rabbit]`: url, exchange, prefetch, TLS files.
fn backend(fm: &FmConfig, out: &mut String, notes: &mut Vec<String>) {
    let _ = writeln!(out, "[backends.rabbit]\ntype = \"amqp\"");
    let url = fm.amqp_url.clone().unwrap_or_else(|| "amqp://".into());
    // fedora-messaging's default is amqp:// (guest on localhost); the hub wants it written out.
    let url = if url == "amqp://" {
        "amqp://guest:guest@localhost:5672/%2F".to_owned()
    } else {
        url
    };
    let _ = writeln!(out, "url = {}", quoted(&url));
    let mut exchanges: Vec<&str> = fm.bindings.iter().map(|b| b.exchange.as_str()).collect();
    exchanges.sort_unstable();
    exchanges.dedup();
    if let Some(first) = exchanges.first() {
        let _ = writeln!(out, "exchange = {}", quoted(first));
        if exchanges.len() > 1 {
            notes.push(format!(
                "bindings use several exchanges ({}); the hub binds to one: {first}",
                exchanges.join(", ")
            ));
        }
    }
    if let Some(n) = fm.qos.get("prefetch_count").and_then(Value::as_u64) {
        let _ = writeln!(out, "prefetch = {}", n.min(u64::from(u16::MAX)));
    }
    if url.starts_with("amqps://") {
        for (fm_key, hub_key) in [
            ("ca_cert", "ca_file"),
            ("certfile", "cert_file"),
            ("keyfile", "key_file"),
        ] {
            if let Some(path) = fm.tls.get(fm_key).and_then(Value::as_str) {
                let _ = writeln!(out, "{hub_key} = {}", quoted(path));
            }
        }
    } else if !fm.tls.is_empty() {
        notes.push("[tls] is not used: the url is amqp:// (TLS needs amqps://)".into());
    }
    out.push('\n');
}

/// One exec consumer per queue, its topics the queue's binding keys.
fn consumers(
    fm: &FmConfig,
    out: &mut String,
    notes: &mut Vec<String>,
    command: impl Fn(&mut String),
) {
    let callback_note = match &fm.callback {
        Some(c) => format!("callback {}", quoted(c)),
        None => {
            notes.push("no `callback` in the file: give the adapter --callback module:name".into());
            "no callback".into()
        }
    };
    let queues: Vec<(&String, Option<&FmQueue>)> = if fm.queues.is_empty() {
        let mut seen = std::collections::BTreeSet::new();
        fm.bindings
            .iter()
            .map(|b| &b.queue)
            .filter(|q| seen.insert(*q))
            .map(|q| (q, None))
            .collect()
    } else {
        fm.queues.iter().map(|(q, d)| (q, Some(d))).collect()
    };
    if queues.is_empty() {
        notes.push("no [queues] and no [[bindings]]: no consumer to make".into());
    }
    let mut ids = std::collections::BTreeSet::new();
    for (queue, declared) in queues {
        let mut topics: Vec<String> = fm
            .bindings
            .iter()
            .filter(|b| &b.queue == queue)
            .flat_map(|b| b.routing_keys.iter().cloned())
            .collect();
        if topics.is_empty() {
            notes.push(format!(
                "queue {queue}: no binding; it gets every topic (\"#\")"
            ));
            topics.push("#".into());
        }
        // Two queue names can make one id (`a.b`, `a_b`): the second gets a suffix.
        let mut id = id_of(queue);
        let base = id.clone();
        let mut n = 2;
        while !ids.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        let list: Vec<String> = topics.iter().map(|t| quoted(t)).collect();
        let _ = writeln!(out, "# {callback_note}, queue {}", quoted(queue));
        let _ = writeln!(
            out,
            "[consumers.{id}]\ntype = \"exec\"\ntopics = [{}]",
            list.join(", ")
        );
        if let Some(q) = declared {
            if q.durable && !q.auto_delete && !q.exclusive {
                let _ = writeln!(out, "durable = true\nqueue = {}", quoted(queue));
            } else {
                notes.push(format!("queue {queue}: not durable (or auto_delete/exclusive): the hub makes its own transient queue"));
            }
            if !q.arguments.is_empty() {
                let keys: Vec<&str> = q.arguments.keys().map(String::as_str).collect();
                notes.push(format!("queue {queue}: arguments {} are not translated (the hub declares its queues without arguments)", keys.join(", ")));
            }
        }
        let _ = writeln!(out, "[consumers.{id}.settings]");
        command(out);
    }
}

/// `hub import fedora-messaging CONFIG [--adapter PATH]`.
pub(crate) fn fedora_messaging(config: &Path, python: &str, adapter: &str) -> ExitCode {
    if !config.is_file() {
        eprintln!("{}: no such file", config.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    let fm: FmConfig = match Figment::from(Toml::file_exact(config)).extract() {
        Ok(fm) => fm,
        Err(e) => {
            eprintln!(
                "{}: not a fedora-messaging config file: {e}",
                config.display()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let (out, notes) = translate(config, &fm, python, adapter);
    for n in &notes {
        eprintln!("not translated: {n}");
    }
    print!("{out}");
    if std::io::Write::flush(&mut std::io::stdout()).is_err() {
        return ExitCode::from(EXIT_FAILURE);
    }
    ExitCode::SUCCESS
}
