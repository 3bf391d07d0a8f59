//! `GET /api/v1/consumers/{id}/dead-letters`: where a consumer's dead letters go, how many its
//! dead-letter file holds and the newest of them (without bodies, which can be private), and
//! the `hub dead` commands that list and requeue them. The status page links each consumer
//! with dead letters here.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use axum::Json;
use axum::extract::{Path as UrlPath, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Api, error};

/// Letters shown when the request names no `limit`, and the most it may ask for.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 200;

/// Where one consumer's dead letters go (from the configuration).
#[derive(Debug, Clone)]
pub(crate) enum DeadLetters {
    /// Rejected messages are logged and dropped.
    None,
    /// A JSON-lines file the hub appends to.
    File(PathBuf),
    /// Published on a topic through a backend.
    Topic { topic: String, backend: String },
    /// The broker's dead-letter queue (AMQP).
    Queue(String),
}

/// `limit=N` in a query string (the only parameter; others are ignored).
fn limit(query: Option<&str>) -> Result<usize, String> {
    let Some(v) = query
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("limit="))
    else {
        return Ok(DEFAULT_LIMIT);
    };
    v.parse::<usize>()
        .map(|n| n.min(MAX_LIMIT))
        .map_err(|_| format!("limit={v:?}: expected a whole number of letters"))
}

/// The fields of a dead-letter line the listing shows (the body is not read into values).
#[derive(Deserialize)]
struct Row {
    consumer: String,
    reason: String,
    attempts: u32,
    dead_lettered_at: String,
    message: Envelope,
}

#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    topic: Option<String>,
}

/// This consumer's letters in `path`: how many, how many lines could not be read, and the
/// newest `limit` (newest first). Streams the file: its size does not matter to memory.
fn scan(path: &Path, consumer: &str, limit: usize) -> std::io::Result<(u64, u64, Vec<Value>)> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0, Vec::new())),
        Err(e) => return Err(e),
    };
    let (mut count, mut unreadable) = (0u64, 0u64);
    let mut newest = std::collections::VecDeque::with_capacity(limit);
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(row) = serde_json::from_str::<Row>(&line) else {
            unreadable += 1;
            continue;
        };
        if row.consumer != consumer {
            continue;
        }
        count += 1;
        if limit == 0 {
            continue;
        }
        if newest.len() == limit {
            newest.pop_front();
        }
        newest.push_back(json!({
            "id": row.message.id,
            "topic": row.message.topic,
            "reason": row.reason,
            "attempts": row.attempts,
            "dead_lettered_at": row.dead_lettered_at,
        }));
    }
    Ok((count, unreadable, newest.into_iter().rev().collect()))
}

/// `GET /api/v1/consumers/{id}/dead-letters[?limit=N]`.
pub(crate) async fn dead_letters(
    State(api): State<Api>,
    UrlPath(id): UrlPath<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let Some(entry) = api.catalog.consumers.iter().find(|c| c.id == id) else {
        return error(StatusCode::NOT_FOUND, format!("no consumer named {id:?}"));
    };
    let limit = match limit(query.as_deref()) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let config = &api.catalog.config;
    let (list, requeue) = match &entry.dead_letters {
        DeadLetters::File(_) => (
            format!("hub dead list {id} --config {config}"),
            format!("hub dead requeue {id} --config {config}"),
        ),
        DeadLetters::Queue(_) => (
            format!(
                "hub dead list {} --consumer {id} --config {config}",
                entry.backend
            ),
            format!(
                "hub dead requeue {} --consumer {id} --config {config}",
                entry.backend
            ),
        ),
        DeadLetters::None | DeadLetters::Topic { .. } => (String::new(), String::new()),
    };
    let commands = (!list.is_empty()).then(|| json!({ "list": list, "requeue": requeue }));
    let body = match &entry.dead_letters {
        DeadLetters::None => json!({
            "id": id,
            "kind": "none",
            "note": "no dead-letter sink: rejected messages are logged and dropped (set dead_letter on the consumer or its backend)",
        }),
        DeadLetters::Topic { topic, backend } => json!({
            "id": id,
            "kind": "topic",
            "topic": topic,
            "backend": backend,
            "note": "dead letters are published on this topic; whatever consumes it holds them",
        }),
        DeadLetters::Queue(queue) => json!({
            "id": id,
            "kind": "queue",
            "queue": queue,
            "note": "AMQP has no way to look into a queue without taking messages out: list or requeue them with the commands",
            "commands": commands,
        }),
        DeadLetters::File(path) => {
            let (file, who) = (path.clone(), id.clone());
            let scanned = tokio::task::spawn_blocking(move || scan(&file, &who, limit))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let (count, unreadable, newest) = match scanned {
                Ok(found) => found,
                Err(e) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("reading the dead-letter file {}: {e}", path.display()),
                    );
                }
            };
            json!({
                "id": id,
                "kind": "file",
                "path": path.display().to_string(),
                "count": count,
                "unreadable_lines": unreadable,
                "newest": newest,
                "commands": commands,
            })
        }
    };
    Json(body).into_response()
}
