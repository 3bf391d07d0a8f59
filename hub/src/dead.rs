//! `hub dead list SOURCE` and `hub dead requeue SOURCE`: dead letters you can act on.
//!
//! SOURCE is a dead-letter file (JSON lines, as the hub writes them for ZeroMQ and memory
//! consumers), or the id of a backend or consumer in the configuration: an AMQP backend means
//! its dead-letter queue (`<hub name>.dead-letters`); another backend or a consumer means the
//! dead-letter file configured for it.
//!
//! Requeueing a file goes through the running hub (`POST /dead-letters/requeue` on its HTTP
//! port), which hands each message to its consumer only and answers once the consumer is done
//! with it; only then is the letter removed from the file (rewritten under the file's lock, so
//! letters the hub appends meanwhile stay). Requeueing an AMQP dead-letter queue goes through
//! the broker ([`hub_amqp::dead_letters`]). Either way a requeue killed halfway loses nothing:
//! a letter leaves its source only after it was handed back.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use hub_engine::dead_letter::{DeadLetter, DeadLetterTarget, lock_file};

use crate::config::{Config, ConfigSource};
use crate::{EXIT_CONFIG, EXIT_FAILURE};

/// Letters confirmed between two rewrites of the file (a requeue killed halfway requeues at
/// most this many twice).
const REWRITE_EVERY: usize = 20;
/// Requests to the hub at once.
const IN_FLIGHT: usize = 8;

/// Which letters.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub consumer: Option<String>,
    pub reason: Option<String>,
    pub limit: Option<usize>,
}

impl Filter {
    fn wants(&self, consumer: &str, reason: &str) -> bool {
        self.consumer.as_deref().is_none_or(|c| c == consumer)
            && self.reason.as_deref().is_none_or(|r| reason.contains(r))
    }
}

/// Where the letters are.
enum Source {
    File(PathBuf),
    Amqp { url: String, queue: String },
}

/// Reads SOURCE: a file, or an id in the configuration.
fn resolve(
    source: &str,
    config: impl FnOnce() -> Result<(Config, ConfigSource), String>,
) -> Result<Source, String> {
    let path = Path::new(source);
    if path.is_file() || source.contains(std::path::MAIN_SEPARATOR) || source.ends_with(".jsonl") {
        return Ok(Source::File(path.to_owned()));
    }
    let (c, from) = config()?;
    if let Some(b) = c.backends.iter().find(|b| b.id == source) {
        if b.kind == "amqp" {
            // `url`, or the first of a cluster's `urls` (any node serves the queue).
            let url = crate::config::raw_string(&from, &format!("backends.{source}.url"))
                .or_else(|| {
                    crate::config::raw_strings(&from, &format!("backends.{source}.urls"))
                        .into_iter()
                        .next()
                })
                .ok_or_else(|| format!("backend {source:?} has no url"))?;
            return Ok(Source::Amqp {
                url,
                queue: format!("{}.dead-letters", c.hub.name),
            });
        }
        let files: Vec<&PathBuf> = c
            .consumers
            .iter()
            .filter(|k| k.backend == source)
            .filter_map(|k| match &k.dead_letter {
                Some(DeadLetterTarget::File(p)) => Some(p),
                _ => None,
            })
            .collect();
        return match files.first() {
            Some(p) if files.iter().all(|f| f == p) => Ok(Source::File((*p).clone())),
            Some(_) => Err(format!(
                "backend {source:?}: its consumers write dead letters to different files; name one"
            )),
            None => Err(format!(
                "backend {source:?} has no dead-letter file (`dead_letter = {{ file = ... }}`)"
            )),
        };
    }
    if let Some(k) = c.consumers.iter().find(|k| k.id == source) {
        return match &k.dead_letter {
            Some(DeadLetterTarget::File(p)) => Ok(Source::File(p.clone())),
            _ => Err(format!(
                "consumer {source:?} has no dead-letter file (`dead_letter = {{ file = ... }}`)"
            )),
        };
    }
    Err(format!(
        "{source:?} is neither a file nor a backend or consumer of {from}"
    ))
}

/// A line of a dead-letter file.
struct Line {
    text: String,
    letter: Option<DeadLetter>,
}

fn read_lines(path: &Path) -> Result<Vec<Line>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Line {
            text: l.to_owned(),
            letter: serde_json::from_str(l).ok(),
        })
        .collect())
}

/// `hub dead list`.
pub(crate) async fn list(
    source: &str,
    filter: &Filter,
    newest: usize,
    config: impl FnOnce() -> Result<(Config, ConfigSource), String>,
) -> ExitCode {
    let src = match resolve(source, config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hub dead list: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // (consumer, reason, when, id, topic) of each selected letter, oldest first.
    let mut rows: Vec<(String, String, String, String, String)> = Vec::new();
    let mut unreadable = 0;
    match src {
        Source::File(path) => match read_lines(&path) {
            Ok(lines) => {
                for l in lines {
                    let Some(d) = l.letter else {
                        unreadable += 1;
                        continue;
                    };
                    if filter.wants(&d.consumer, &d.reason) {
                        let (id, topic) = d.to_message().map_or_else(
                            |_| (String::from("?"), String::from("?")),
                            |m| (m.id().to_owned(), m.topic().to_owned()),
                        );
                        rows.push((
                            d.consumer,
                            d.reason,
                            d.dead_lettered_at.to_string(),
                            id,
                            topic,
                        ));
                    }
                }
            }
            Err(e) => {
                eprintln!("hub dead list: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        },
        Source::Amqp { url, queue } => {
            match hub_amqp::dead_letters::list(&url, &queue, 1_000_000).await {
                Ok(letters) => {
                    for d in letters {
                        if filter.wants(&d.consumer, &d.reason) {
                            rows.push((d.consumer, d.reason, d.dead_lettered_at, d.id, d.topic));
                        }
                    }
                }
                Err(e) => {
                    eprintln!("hub dead list: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
        }
    }
    if let Some(limit) = filter.limit {
        rows.truncate(limit);
    }
    let mut groups: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for r in &rows {
        *groups.entry((r.0.as_str(), r.1.as_str())).or_default() += 1;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{} dead letter{} from {source}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    let mut by_count: Vec<_> = groups.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let _ = writeln!(out, "\n{:>7}  {:<24} REASON", "COUNT", "CONSUMER");
    for ((consumer, reason), n) in by_count {
        let _ = writeln!(out, "{n:>7}  {consumer:<24} {}", shorten(reason, 100));
    }
    if newest > 0 && !rows.is_empty() {
        let _ = writeln!(out, "\nnewest {}:", newest.min(rows.len()));
        for r in rows.iter().rev().take(newest) {
            let _ = writeln!(
                out,
                "  {}  {}  {}  {}  {}",
                r.2,
                r.0,
                r.3,
                r.4,
                shorten(&r.1, 80)
            );
        }
    }
    if unreadable > 0 {
        let _ = writeln!(
            out,
            "\n{unreadable} line(s) are not dead letters (left as they are)"
        );
    }
    ExitCode::SUCCESS
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// The running hub a file's letters go back through (`--hub`, `--token`).
pub(crate) struct HubAddress {
    /// Its HTTP address; else `[http] listen` of the configuration.
    pub url: Option<String>,
    /// Its admin token; else `[http] admin_token` of the configuration.
    pub token: Option<String>,
}

/// `hub dead requeue`.
pub(crate) async fn requeue(
    source: &str,
    filter: &Filter,
    to: HubAddress,
    config: impl FnOnce() -> Result<(Config, ConfigSource), String>,
) -> ExitCode {
    // The configuration's HTTP address and admin token, once it is read (only when needed).
    let mut read: Option<(std::net::SocketAddr, Option<String>)> = None;
    let mut config = Some(config);
    let mut load = |read: &mut Option<_>| -> Result<(Config, ConfigSource), String> {
        let load = config.take().ok_or("the configuration was read already")?;
        let (c, from) = load()?;
        let token = match &c.http.admin_token {
            Some(t) => Some(
                t.resolve()
                    .map_err(|e| format!("http.admin_token: {e}"))?
                    .expose()
                    .to_owned(),
            ),
            None => None,
        };
        *read = Some((c.http.listen, token));
        Ok((c, from))
    };
    let src = match resolve(source, || load(&mut read)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hub dead requeue: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match src {
        Source::Amqp { url, queue } => {
            let select = hub_amqp::dead_letters::Selection {
                consumer: filter.consumer.clone(),
                reason: filter.reason.clone(),
                limit: filter.limit,
            };
            let result = hub_amqp::dead_letters::requeue(&url, &queue, &select, |l| {
                println!("requeued {} ({}) to queue {}", l.id, l.consumer, l.queue);
            })
            .await;
            match result {
                Ok(n) => {
                    println!("{n} dead letter(s) requeued from {queue}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hub dead requeue: {e}");
                    ExitCode::from(EXIT_FAILURE)
                }
            }
        }
        Source::File(path) => {
            // A file named directly: the configuration may still give the hub's address and
            // token. It is not needed for the letters themselves, so a configuration that
            // does not load (a secret of another part this shell cannot read) is only noted.
            if read.is_none()
                && (to.url.is_none() || to.token.is_none())
                && let Err(e) = load(&mut read)
            {
                eprintln!(
                    "hub dead requeue: note: the configuration gives no HTTP address or token ({e}); \
                     using --hub, --token or their defaults"
                );
            }
            let (listen, config_token) = read.unzip();
            let base = to
                .url
                .or_else(|| listen.map(|a| format!("http://{a}")))
                .unwrap_or_else(|| "http://127.0.0.1:9898".into());
            let token = to.token.or(config_token.flatten());
            requeue_file(&path, filter, base.trim_end_matches('/'), token).await
        }
    }
}

/// What the hub said about one letter.
enum Answer {
    /// Handled (or dead-lettered again, into the sink): remove it from the file.
    Done(&'static str),
    Failed(String),
}

async fn post(
    client: &hub_http::reqwest::Client,
    url: &str,
    token: Option<&str>,
    line: String,
) -> Answer {
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(line);
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    let sent = request.send().await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => return Answer::Failed(format!("cannot reach the hub at {url}: {e}")),
    };
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        return Answer::Failed(format!("the hub answered {status}: {}", body.trim()));
    }
    match serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["verdict"].as_str().map(str::to_owned))
        .as_deref()
    {
        Some("ack") => Answer::Done("handled"),
        Some("dead-lettered") => Answer::Done("dead-lettered again"),
        _ => Answer::Failed(format!("unexpected answer from the hub: {body}")),
    }
}

async fn requeue_file(path: &Path, filter: &Filter, hub: &str, token: Option<String>) -> ExitCode {
    let lines = match read_lines(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hub dead requeue: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let mut selected: Vec<String> = lines
        .into_iter()
        .filter(|l| {
            l.letter
                .as_ref()
                .is_some_and(|d| filter.wants(&d.consumer, &d.reason))
        })
        .map(|l| l.text)
        .collect();
    if let Some(limit) = filter.limit {
        selected.truncate(limit);
    }
    let client = match hub_http::client_builder().and_then(|b| {
        b.timeout(Duration::from_secs(3600))
            .build()
            .map_err(Into::into)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub dead requeue: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let url = format!("{hub}/dead-letters/requeue");
    let mut done: Vec<String> = Vec::new();
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failed = 0;
    let mut pending = futures_util::stream::FuturesOrdered::new();
    let mut rest = selected.into_iter();
    loop {
        while pending.len() < IN_FLIGHT {
            let Some(line) = rest.next() else { break };
            let (client, url, token) = (client.clone(), url.clone(), token.clone());
            pending.push_back(async move {
                (
                    post(&client, &url, token.as_deref(), line.clone()).await,
                    line,
                )
            });
        }
        let Some((answer, line)) = futures_util::StreamExt::next(&mut pending).await else {
            break;
        };
        match answer {
            Answer::Done(what) => {
                *counts.entry(what).or_default() += 1;
                done.push(line);
                if done.len() >= REWRITE_EVERY
                    && let Err(e) = remove_lines(path, &mut done)
                {
                    eprintln!("hub dead requeue: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            }
            Answer::Failed(e) => {
                failed += 1;
                eprintln!("hub dead requeue: {e}");
                if failed >= 3 && counts.is_empty() {
                    break;
                }
            }
        }
    }
    if let Err(e) = remove_lines(path, &mut done) {
        eprintln!("hub dead requeue: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let total: usize = counts.values().sum();
    let detail: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "{total} dead letter(s) requeued from {} ({}); {failed} failed and stay in the file",
        path.display(),
        if detail.is_empty() {
            "none".into()
        } else {
            detail.join(", ")
        }
    );
    if failed > 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Removes one occurrence of each of `done` from the file, under its lock (letters appended
/// meanwhile stay): the rest is written to a new file, synced, and renamed over the old one.
fn remove_lines(path: &Path, done: &mut Vec<String>) -> Result<(), String> {
    if done.is_empty() {
        return Ok(());
    }
    let fail = |e: std::io::Error| format!("rewriting {}: {e}", path.display());
    let _lock = lock_file(path).map_err(fail)?;
    let mut remove: HashMap<&str, usize> = HashMap::new();
    for d in done.iter() {
        *remove.entry(d.as_str()).or_default() += 1;
    }
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let mut kept = String::with_capacity(text.len());
    for line in text.lines() {
        match remove.get_mut(line) {
            Some(n) if *n > 0 => *n -= 1,
            _ if line.trim().is_empty() => {}
            _ => {
                kept.push_str(line);
                kept.push('\n');
            }
        }
    }
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".requeue-tmp");
    let tmp = PathBuf::from(tmp_name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        // The rewritten file keeps the original's mode and (where allowed) owner: the hub must
        // still be able to append, and a private file stays private.
        let meta = std::fs::metadata(path).map_err(fail)?;
        f.set_permissions(meta.permissions()).map_err(fail)?;
        {
            use std::os::unix::fs::MetadataExt;
            let _ = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()));
        }
        f.write_all(kept.as_bytes()).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    done.clear();
    Ok(())
}
