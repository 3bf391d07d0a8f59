//! Who may connect and what they may do: tokens (`Authorization: Bearer`, or `?token=` for
//! browsers, which cannot set headers on a WebSocket), anonymous read-only access when
//! allowed, and the `Origin` check for pages on other sites.

use std::sync::{Arc, OnceLock};

use axum::http::{HeaderMap, StatusCode, header};
use hub_core::{Pattern, TopicWords};
use hub_engine::metrics::GatewayClientSeries;

/// What one credential allows.
pub(crate) struct Grant {
    /// The `[gateway.tokens]` name, or `anonymous`: logs and the `client` label.
    pub name: Arc<str>,
    pub subscribe: Vec<Pattern>,
    pub publish: Vec<Pattern>,
    pub series: OnceLock<GatewayClientSeries>,
}

impl Grant {
    pub fn new(name: &str, subscribe: Vec<Pattern>, publish: Vec<Pattern>) -> Self {
        Self {
            name: name.into(),
            subscribe,
            publish,
            series: OnceLock::new(),
        }
    }

    /// Its series, once the gateway's backend has registered them.
    pub fn series(&self) -> Option<&GatewayClientSeries> {
        self.series.get()
    }

    pub fn may_receive(&self, topic: &TopicWords<'_>) -> bool {
        self.subscribe.iter().any(|p| p.matches_words(topic))
    }

    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    pub fn publish_patterns(&self) -> String {
        if self.publish.is_empty() {
            return "none: read-only".into();
        }
        self.publish
            .iter()
            .map(Pattern::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Equal, in time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credentials, checked on each connection.
pub(crate) struct Auth {
    /// (token, what it allows).
    pub tokens: Vec<(hub_http::Secret, Arc<Grant>)>,
    pub anonymous: Option<Arc<Grant>>,
    /// `allowed_origins`; `"*"` allows any.
    pub origins: Vec<String>,
}

/// A refusal: the HTTP status and the reason (never the token).
pub(crate) type Refusal = (StatusCode, String);

impl Auth {
    /// The grant for a request: its token (header or `token` query parameter), or anonymous
    /// access when allowed.
    pub fn grant(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<Arc<Grant>, Refusal> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        match bearer.or(query_token) {
            Some(token) => {
                let mut found = None;
                // Every token compared, whatever matched: the time says nothing of which.
                for (secret, grant) in &self.tokens {
                    if constant_time_eq(secret.expose().as_bytes(), token.as_bytes()) {
                        found = Some(grant.clone());
                    }
                }
                found.ok_or((StatusCode::UNAUTHORIZED, "unknown token".into()))
            }
            None => self.anonymous.clone().ok_or((
                StatusCode::UNAUTHORIZED,
                "a token is needed: send it as `Authorization: Bearer <token>` or as the `token` query parameter".into(),
            )),
        }
    }

    /// A connection's grant: its origin checked, then its token (header, or the `token` query
    /// parameter of `query`).
    pub fn admit(&self, headers: &HeaderMap, query: Option<&str>) -> Result<Arc<Grant>, Refusal> {
        self.check_origin(headers)?;
        let token = crate::ws::query_param(query, "token").next();
        self.grant(headers, token.as_deref())
    }

    /// Refuses a browser page from another site: an `Origin` that is neither listed in
    /// `allowed_origins` nor the hub's own host.
    pub fn check_origin(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
            return Ok(()); // not a browser
        };
        if self
            .origins
            .iter()
            .any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
        {
            return Ok(());
        }
        let own = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .split_once("://")
            .map_or(origin, |(_, rest)| rest)
            .trim_end_matches('/');
        if own.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)) {
            return Ok(());
        }
        Err((
            StatusCode::FORBIDDEN,
            format!("origin {origin:?} is not allowed: add it to [gateway] allowed_origins"),
        ))
    }
}
