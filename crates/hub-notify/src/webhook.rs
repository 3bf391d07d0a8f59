//! The chat webhook sink: one POST per call, its answer the verdict.

use std::fmt;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use hub_core::ConsumeError;
use hub_http::reqwest::{self, StatusCode, Url, header};

use crate::render::Templates;

/// How much of a refusing answer's body goes into the error.
const REASON_BODY_CHARS: usize = 200;
/// The most of an answer's body read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The sink's request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Body {
    /// `{"text": "..."}` (Slack, Mattermost, Rocket.Chat incoming webhooks).
    Slack,
    /// The `body_template`, rendered.
    Template,
}

pub(crate) struct WebhookSink {
    url: Url,
    /// Scheme, host and port only: a chat webhook's path and query are its secret.
    shown: String,
    body: Body,
    timeout: Duration,
    client: OnceLock<reqwest::Client>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("url", &self.shown)
            .field("body", &self.body)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Checks the URL (never quoted in an error: it may hold the hook's token).
    ///
    /// # Errors
    /// Not an http(s) URL with a host.
    pub(crate) fn new(url: &str, body: Body, timeout: Duration) -> Result<Self, String> {
        let url = Url::parse(url).map_err(|e| format!("url: not a valid URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "url: must start with http:// or https://, not {}://",
                url.scheme()
            ));
        }
        let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
            return Err("url: has no host".into());
        };
        let mut shown = format!("{}://{host}", url.scheme());
        if let Some(port) = url.port() {
            shown.push_str(&format!(":{port}"));
        }
        if url.path() != "/" || url.query().is_some() {
            shown.push_str("/<redacted>");
        }
        Ok(Self {
            url,
            shown,
            body,
            timeout,
            client: OnceLock::new(),
        })
    }

    /// The client (built on first use, with the workspace's TLS setup).
    ///
    /// # Errors
    /// The client cannot be built (TLS configuration).
    pub(crate) fn client(&self) -> Result<&reqwest::Client, String> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        let c = hub_http::client_builder()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(self.client.get_or_init(|| c))
    }

    /// Posts `lines` (one chat message, the lines joined by newlines).
    ///
    /// # Errors
    /// Transient for 408, 429, 5xx and transport failures (with `Retry-After`), invalid for
    /// any other status and a body template that does not render.
    pub(crate) async fn send(
        &self,
        templates: &Templates,
        lines: &[String],
    ) -> Result<(), ConsumeError> {
        let body = match self.body {
            Body::Slack => serde_json::to_vec(&serde_json::json!({ "text": lines.join("\n") }))
                .map_err(ConsumeError::invalid)?,
            Body::Template => match templates.body(lines) {
                Some(r) => r.map_err(ConsumeError::invalid)?,
                None => return Err(ConsumeError::invalid("body_template: not set")),
            },
        };
        let client = self.client().map_err(ConsumeError::transient)?;
        let response = client
            .post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .timeout(self.timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if status.is_success() {
            return Ok(());
        }
        let excerpt = read_excerpt(response).await;
        let reason = format!("POST {} answered {status}{excerpt}", self.shown);
        if is_transient(status) {
            let e = ConsumeError::transient(reason);
            Err(match retry_after {
                Some(d) => e.with_retry_after(d),
                None => e,
            })
        } else {
            Err(ConsumeError::invalid(reason))
        }
    }

    /// A failed exchange (no status): transient; the URL is never quoted.
    fn transport_error(&self, e: reqwest::Error) -> ConsumeError {
        let what = if e.is_timeout() {
            format!(
                "no complete answer within the timeout ({} ms)",
                self.timeout.as_millis()
            )
        } else {
            let connect = e.is_connect();
            let e = e.without_url();
            let mut text = String::new();
            let mut next = std::error::Error::source(&e);
            while let Some(cause) = next {
                let part = cause.to_string();
                if !text.contains(&part) {
                    if !text.is_empty() {
                        text.push_str(": ");
                    }
                    text.push_str(&part);
                }
                next = cause.source();
            }
            if text.is_empty() {
                text = e.to_string();
            }
            if connect {
                format!("cannot connect: {text}")
            } else {
                text
            }
        };
        ConsumeError::transient(format!("POST {}: {what}", self.shown))
    }
}

/// 408, 429 and 5xx: a retry may help.
fn is_transient(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `": <first 200 characters>"` of an answer's body, or nothing.
async fn read_excerpt(mut response: reqwest::Response) -> String {
    let mut start = Vec::new();
    while start.len() < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => start.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&start);
    let excerpt: String = text.trim().chars().take(REASON_BODY_CHARS).collect();
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

/// `Retry-After`: delay-seconds or an HTTP-date (one in the past is no delay).
pub(crate) fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_secret_parts() {
        let s = WebhookSink::new(
            "https://hooks.slack.com/services/T0/B0/secret",
            Body::Slack,
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(s.shown, "https://hooks.slack.com/<redacted>");
        assert!(!format!("{s:?}").contains("secret"));
        let e = WebhookSink::new("ftp://x/", Body::Slack, Duration::from_secs(1))
            .err()
            .unwrap();
        assert!(e.contains("http://"), "{e}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
