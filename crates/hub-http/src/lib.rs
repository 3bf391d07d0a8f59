//! # hub-http
//!
//! `type = "http"`: a webhook consumer. Each message is sent as JSON to a URL; the answer's
//! status is the verdict (2xx: done; 408, 429, 5xx and transport failures: retried, honouring
//! `Retry-After`; any other status: the message is refused). With `secret`, every request is
//! signed (`X-Hub-Signature-256`, HMAC-SHA256 over `"<timestamp>.<body>"`).
//!
//! `type = "http_client"` (a `[resources.<id>]`): one client and keep-alive pool shared by the
//! consumers whose `client` names it.
//!
//! The contract (every key and header) is `docs/http-consumer.md`.

#![warn(missing_docs)]

mod client;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, KeyInit, Mac};
use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, Message, Resources, async_trait,
};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use sha2::Sha256;

pub use client::{HttpClient, HttpClientConfig, USER_AGENT, client_builder};
pub use hub_core::{Secret, SecretSource};
pub use reqwest;

/// Header: the message's topic.
pub const TOPIC_HEADER: &str = "x-hub-topic";
/// Header: the message's id.
pub const MESSAGE_ID_HEADER: &str = "x-hub-message-id";
/// Header: which attempt at the message this request is (1, then 2 on the first retry...).
pub const ATTEMPT_HEADER: &str = "x-hub-attempt";
/// Header (with `secret`): the Unix time, in seconds, the request was signed at.
pub const TIMESTAMP_HEADER: &str = "x-hub-timestamp";
/// Header (with `secret`): `sha256=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// The most of a response body read (the rest is not waited for).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How many characters of a refusing answer's body go into the error.
pub const REASON_BODY_CHARS: usize = 200;

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Set on every request by the consumer itself: not allowed in `headers`.
const RESERVED_HEADERS: [&str; 6] = [
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "transfer-encoding",
    "connection",
];

type HmacSha256 = Hmac<Sha256>;

/// The HTTP method of every request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET` (the JSON body is sent all the same).
    Get,
    /// `POST` (the default).
    #[default]
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Method {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            Self::Get => reqwest::Method::GET,
            Self::Post => reqwest::Method::POST,
            Self::Put => reqwest::Method::PUT,
            Self::Patch => reqwest::Method::PATCH,
            Self::Delete => reqwest::Method::DELETE,
        }
    }
}

/// What the request body holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// The message body, as JSON (the default).
    #[default]
    Body,
    /// The whole envelope: `{"id", "topic", "timestamp", "headers", "body"}`.
    Message,
}

/// `[consumers.<id>.settings]` of `type = "http"`. See `docs/http-consumer.md`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to send each message: an `http://` or `https://` URL (required).
    pub url: String,
    /// `GET`, `POST` (default), `PUT`, `PATCH` or `DELETE`.
    #[serde(default)]
    pub method: Method,
    /// Static headers of every request: each value a string, `{ env = "VAR" }` or
    /// `{ file = "/path" }`. Treated as secrets (never logged).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretSource>,
    /// `"body"` (default) or `"message"`.
    #[serde(default)]
    pub payload: Payload,
    /// Longest time one request may take, answer included. Default 30 s (or the `client`
    /// resource's `timeout`, when it sets one).
    #[serde(default, with = "hub_core::duration::option")]
    pub timeout: Option<Duration>,
    /// Signs every request with HMAC-SHA256 under this key. Optional.
    #[serde(default)]
    pub secret: Option<SecretSource>,
    /// The id of a `[resources.<id>]` of `type = "http_client"` to send through, instead of a
    /// client of this consumer's own. Optional.
    #[serde(default)]
    pub client: Option<String>,
    /// A PEM file of CA certificates trusted besides the system's roots (this consumer's own
    /// client only: set it on the resource when `client` is given). Optional.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = Url::parse(&self.url).map_or_else(|_| "<unparsable>".to_owned(), |u| shown(&u));
        f.debug_struct("HttpConfig")
            .field("url", &url)
            .field("method", &self.method)
            .field("headers", &self.headers)
            .field("payload", &self.payload)
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .field("client", &self.client)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ConsumerConfig for HttpConfig {
    const TYPE: &'static str = "http";
    const DESCRIPTION: &'static str =
        "a webhook: each message sent as JSON to a URL (signed with `secret`); 5xx/429 retried";

    fn build(self, resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(self.into_consumer(resources)?))
    }
}

impl HttpConfig {
    /// Builds the consumer: checks the URL and headers, reads the secrets (environment
    /// variables, files) and the `ca_file`, finds the `client` resource. Connects to nothing.
    ///
    /// # Errors
    /// A message naming the key at fault (never a secret's value).
    pub fn into_consumer(self, resources: &Resources) -> Result<HttpConsumer, BoxError> {
        let url = Url::parse(&self.url).map_err(|e| format!("url: not a valid URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url: must start with http:// or https://, not {}://",
                url.scheme()
            )
            .into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("url: has no host".into());
        }
        let mut headers = HeaderMap::new();
        for (name, source) in &self.headers {
            let key = format!("headers.{name}");
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{key}: not a valid header name"))?;
            if RESERVED_HEADERS.contains(&header.as_str()) || header.as_str().starts_with("x-hub-")
            {
                return Err(format!(
                    "{key}: set by the consumer itself (Content-Type, User-Agent and the \
                     X-Hub-* headers cannot be overridden)"
                )
                .into());
            }
            let value = source.resolve().map_err(|e| format!("{key}: {e}"))?;
            let mut value = HeaderValue::from_str(value.expose()).map_err(|_| {
                format!("{key}: not a valid header value (control characters or a newline?)")
            })?;
            value.set_sensitive(true);
            headers.append(header, value);
        }
        let mac = match &self.secret {
            Some(source) => {
                let secret = source.resolve().map_err(|e| format!("secret: {e}"))?;
                if secret.expose().is_empty() {
                    return Err("secret: is empty".into());
                }
                Some(
                    HmacSha256::new_from_slice(secret.expose().as_bytes())
                        .map_err(|e| format!("secret: {e}"))?,
                )
            }
            None => None,
        };
        let client = match &self.client {
            Some(id) => {
                if self.ca_file.is_some() {
                    return Err(format!(
                        "ca_file: this consumer sends through [resources.{id}] (`client`): set \
                         ca_file there"
                    )
                    .into());
                }
                let shared = resources
                    .named::<HttpClient>(id)
                    .map_err(|e| format!("client: {e}"))?;
                Slot::Shared(shared)
            }
            None => {
                let ca = match &self.ca_file {
                    Some(path) => {
                        client::read_ca_file(path).map_err(|e| format!("ca_file: {e}"))?
                    }
                    None => Vec::new(),
                };
                Slot::Own {
                    ca,
                    built: OnceLock::new(),
                }
            }
        };
        let timeout = match (self.timeout, &client) {
            (Some(t), _) => t,
            (None, Slot::Shared(shared)) => shared.timeout().unwrap_or(DEFAULT_TIMEOUT),
            (None, Slot::Own { .. }) => DEFAULT_TIMEOUT,
        };
        if timeout.is_zero() {
            return Err("timeout: must be longer than zero".into());
        }
        Ok(HttpConsumer {
            shown_url: shown(&url),
            url,
            method: self.method.as_reqwest(),
            headers,
            payload: self.payload,
            timeout,
            mac,
            client,
        })
    }
}

/// Where the consumer's client comes from.
enum Slot {
    /// A `[resources.<id>]` client.
    Shared(Arc<HttpClient>),
    /// Its own, built at start (its pool sized for the consumer's concurrency).
    Own {
        ca: Vec<CertificateDer<'static>>,
        built: OnceLock<reqwest::Client>,
    },
}

/// The `http` consumer: sends each message to its URL. Build it from [`HttpConfig`].
pub struct HttpConsumer {
    url: Url,
    /// The URL without userinfo or query: what errors and logs show.
    shown_url: String,
    method: reqwest::Method,
    /// Static headers, marked sensitive.
    headers: HeaderMap,
    payload: Payload,
    timeout: Duration,
    mac: Option<HmacSha256>,
    client: Slot,
}

impl fmt::Debug for HttpConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<&str> = self.headers.keys().map(HeaderName::as_str).collect();
        f.debug_struct("HttpConsumer")
            .field("url", &self.shown_url)
            .field("method", &self.method)
            .field("headers", &headers)
            .field("payload", &self.payload)
            .field("timeout", &self.timeout)
            .field("signed", &self.mac.is_some())
            .field(
                "client",
                &match &self.client {
                    Slot::Shared(_) => "shared",
                    Slot::Own { .. } => "own",
                },
            )
            .finish()
    }
}

impl HttpConsumer {
    /// The client to send with: the shared one, or this consumer's own (built now if `start`
    /// has not run).
    fn client(&self, concurrency: usize) -> Result<&reqwest::Client, BoxError> {
        match &self.client {
            Slot::Shared(shared) => Ok(shared.client()),
            Slot::Own { ca, built } => {
                if let Some(c) = built.get() {
                    return Ok(c);
                }
                let c = client::ClientOptions {
                    timeout: None,
                    connect_timeout: Duration::from_secs(10),
                    pool_max_idle_per_host: concurrency,
                    pool_idle_timeout: Duration::from_secs(90),
                    ca,
                    http1_only: false,
                }
                .build()?;
                // Another call may have built one meanwhile: either serves.
                Ok(built.get_or_init(|| c))
            }
        }
    }

    /// `"<METHOD> <url without secrets>"`, the start of every error.
    fn target(&self) -> String {
        format!("{} {}", self.method, self.shown_url)
    }

    /// A failed exchange (no status): always transient.
    fn transport_error(&self, e: reqwest::Error) -> ConsumeError {
        let what = if e.is_timeout() {
            format!(
                "no complete answer within the timeout ({})",
                human(self.timeout)
            )
        } else {
            // The causes, without reqwest's own "error sending request" (and its URL).
            let e = e.without_url();
            let detail = match std::error::Error::source(&e) {
                Some(cause) => chain(cause),
                None => e.to_string(),
            };
            let detail = self.scrub(&detail);
            if e.is_connect() {
                format!("cannot connect: {detail}")
            } else {
                detail
            }
        };
        ConsumeError::transient(format!("{}: {what}", self.target()))
    }

    /// Removes the URL's userinfo and query from a text, should a transport error quote them.
    fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in [
            Some(self.url.username()),
            self.url.password(),
            self.url.query(),
        ]
        .into_iter()
        .flatten()
        .filter(|s| s.len() >= 3)
        {
            out = out.replace(secret, "<redacted>");
        }
        out
    }

    fn request_headers(
        &self,
        cx: &Context,
        msg: &Message,
        body: &[u8],
    ) -> Result<HeaderMap, ConsumeError> {
        let mut headers = self.headers.clone();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            reqwest::header::USER_AGENT,
            HeaderValue::from_static(USER_AGENT),
        );
        let text = |what: &str, v: &str| {
            HeaderValue::from_str(v).map_err(|_| {
                ConsumeError::invalid(format!(
                    "the message's {what} cannot be sent as an HTTP header (control characters)"
                ))
            })
        };
        headers.insert(
            HeaderName::from_static(TOPIC_HEADER),
            text("topic", msg.topic())?,
        );
        headers.insert(
            HeaderName::from_static(MESSAGE_ID_HEADER),
            text("id", msg.id())?,
        );
        // The context's attempt when it is handling this message (the hub's case), else the
        // message's own header (a direct call).
        let attempt = match cx.handled() {
            Some(handled) if handled.id() == msg.id() => cx.attempt(),
            _ => msg.attempt(),
        };
        headers.insert(HeaderName::from_static(ATTEMPT_HEADER), attempt.into());
        if let Some(mac) = &self.mac {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .to_string();
            let signature = sign(mac.clone(), &now, body);
            headers.insert(
                HeaderName::from_static(TIMESTAMP_HEADER),
                text("timestamp", &now)?,
            );
            let mut value = text("signature", &signature)?;
            value.set_sensitive(true);
            headers.insert(HeaderName::from_static(SIGNATURE_HEADER), value);
        }
        Ok(headers)
    }
}

#[async_trait]
impl Consumer for HttpConsumer {
    async fn start(&self, cx: &Context) -> Result<(), BoxError> {
        self.client(cx.concurrency())?;
        Ok(())
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let client = self
            .client(cx.concurrency())
            .map_err(ConsumeError::transient)?;
        let body = match self.payload {
            Payload::Body => serde_json::to_vec(msg.body()).map_err(ConsumeError::invalid)?,
            Payload::Message => msg.to_json().into_bytes(),
        };
        let headers = self.request_headers(cx, msg, &body)?;
        let response = client
            .request(self.method.clone(), self.url.clone())
            .headers(headers)
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(parse_retry_after);
        let (start, read_error) = read_start(response).await;
        if status.is_success() {
            // Delivered: the peer said so; a body cut short does not undo that.
            if let Some(e) = read_error {
                tracing::debug!(url = %self.shown_url, %status, error = %chain(&e.without_url()),
                    "answer body not read to its end");
            }
            tracing::trace!(url = %self.shown_url, %status, "delivered");
            return Ok(());
        }
        let reason = format!(
            "{} answered {status}{}",
            self.target(),
            body_excerpt(&start)
        );
        if is_transient(status) {
            let e = ConsumeError::transient(reason);
            Err(match retry_after {
                Some(delay) => e.with_retry_after(delay),
                None => e,
            })
        } else {
            Err(ConsumeError::invalid(reason))
        }
    }
}

/// Whether a retry may help: 408, 429 and 5xx.
fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `sha256=<lowercase hex HMAC-SHA256(key, "<timestamp>.<body>")>`.
fn sign(mut mac: HmacSha256, timestamp: &str, body: &[u8]) -> String {
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for b in digest.iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Up to [`MAX_RESPONSE_BYTES`] of the body (the rest is not read), and the error that cut the
/// reading short, if one did.
async fn read_start(mut response: reqwest::Response) -> (Vec<u8>, Option<reqwest::Error>) {
    let mut start = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = MAX_RESPONSE_BYTES - start.len();
                start.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if start.len() >= MAX_RESPONSE_BYTES {
                    return (start, None);
                }
            }
            Ok(None) => return (start, None),
            Err(e) => return (start, Some(e)),
        }
    }
}

/// `": <first 200 characters>"` of a body (lossy UTF-8, trimmed), or nothing when empty.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(REASON_BODY_CHARS).collect();
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (a date in the past is no delay).
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits to fit: as long as can be (the hub caps it anyway).
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// An error and its sources, `": "`-separated, each said once.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// A URL for errors and logs: scheme, host, port and path; userinfo and query replaced by
/// `<redacted>`, fragment dropped.
fn shown(url: &Url) -> String {
    let mut out = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        out.push_str("<redacted>@");
    }
    out.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        out.push(':');
        out.push_str(&port.to_string());
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?<redacted>");
    }
    out
}

/// `"30s"`, `"250ms"`.
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_userinfo_and_query() {
        let u = Url::parse("https://user:pw@example.com:8443/hook?token=abc#x").unwrap();
        assert_eq!(
            shown(&u),
            "https://<redacted>@example.com:8443/hook?<redacted>"
        );
        let u = Url::parse("http://[::1]/").unwrap();
        assert_eq!(shown(&u), "http://[::1]/");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let v = HeaderValue::from_static("120");
        assert_eq!(parse_retry_after(&v), Some(Duration::from_secs(120)));
        let v = HeaderValue::from_static("99999999999999999999999");
        assert_eq!(parse_retry_after(&v), Some(Duration::from_secs(u64::MAX)));
        let v = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(parse_retry_after(&v), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(100));
        let d = parse_retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
        assert!(
            d > Duration::from_secs(95) && d <= Duration::from_secs(100),
            "{d:?}"
        );
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
        assert_eq!(parse_retry_after(&HeaderValue::from_static("-1")), None);
    }

    #[test]
    fn signature_matches_pythons_hmac() {
        // python3 -c 'import hmac,hashlib; print(hmac.new(b"Jefe",
        //   b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
        let mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        assert_eq!(
            sign(mac, "1700000000", br#"{"a":1}"#),
            "sha256=fa5f6481efc59da48b19c9dc10196c9953e5651f8304b3a318b6b87d70272e0a"
        );
    }

    #[test]
    fn excerpts_are_200_characters_of_lossy_text() {
        let body = "é".repeat(300);
        let e = body_excerpt(body.as_bytes());
        assert_eq!(e.chars().count(), 2 + 200);
        assert_eq!(body_excerpt(b"  "), "");
        assert!(body_excerpt(&[0xff, b'a']).contains('a'));
    }
}
