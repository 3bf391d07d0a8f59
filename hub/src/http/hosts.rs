//! Which `Host` headers the HTTP server answers: a guard against DNS rebinding, where a web
//! page on another site points its own host name at 127.0.0.1 and then reads the hub's pages
//! from the visitor's browser as if they were its own. The browser sends that site's name as
//! `Host`; the hub refuses names it was not told about.
//!
//! - `[http] allowed_hosts` set: IP literals, `localhost` and the names listed (`"*"` allows
//!   any);
//! - unset, listening on loopback (the default `127.0.0.1:9898`): IP literals and `localhost`;
//! - unset, listening elsewhere: any (a hub reached by its DNS name keeps working; set
//!   `allowed_hosts` to guard it).
//!
//! A request without a `Host` (HTTP/1.0 tools) is answered: browsers always send one.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// The host names the server answers to, besides IP literals and `localhost` (which no other
/// site can point at the hub).
#[derive(Debug, Clone)]
pub(crate) enum HostPolicy {
    /// Any name.
    Any,
    /// These names (lower case).
    Names(Arc<[String]>),
}

impl HostPolicy {
    /// From `[http] allowed_hosts` and the address the server listens on.
    pub fn new(allowed: Option<&[String]>, listen: SocketAddr) -> Self {
        match allowed {
            Some(names) if names.iter().any(|n| n == "*") => Self::Any,
            Some(names) => Self::Names(names.iter().map(|n| n.to_ascii_lowercase()).collect()),
            None if listen.ip().is_loopback() => Self::Names(Arc::from([])),
            None => Self::Any,
        }
    }

    /// Whether a request with this `Host` header value is answered.
    pub fn allows(&self, host: &str) -> bool {
        let name = strip_port(host);
        if name.eq_ignore_ascii_case("localhost")
            || name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok()
        {
            return true;
        }
        match self {
            Self::Any => true,
            Self::Names(names) => names.iter().any(|n| n.eq_ignore_ascii_case(name)),
        }
    }
}

/// `name:port` → `name`; `[::1]:port` → `[::1]`.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The middleware: 403 with the reason for a `Host` the policy does not allow.
pub(crate) async fn check(
    State(policy): State<HostPolicy>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or("(not text)").to_owned());
    match host {
        Some(h) if !policy.allows(&h) => (
            StatusCode::FORBIDDEN,
            axum::Json(json!({
                "error": format!("this hub does not answer to the host name {h:?} (a guard against DNS rebinding): add it to [http] allowed_hosts")
            })),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_answers_ip_literals_and_localhost_only() {
        let p = HostPolicy::new(None, "127.0.0.1:9898".parse().unwrap());
        for ok in [
            "127.0.0.1:9898",
            "127.0.0.1",
            "localhost:9898",
            "LOCALHOST",
            "[::1]:9898",
            "[::1]",
            "10.0.0.5:80",
        ] {
            assert!(p.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:9898",
            "evil.example",
            "localhost.evil.example",
            "",
        ] {
            assert!(!p.allows(bad), "{bad}");
        }
    }

    #[test]
    fn a_list_adds_names_and_a_star_allows_any() {
        let names = ["Hub.Example.org".to_owned()];
        let p = HostPolicy::new(Some(&names), "0.0.0.0:9898".parse().unwrap());
        assert!(p.allows("hub.example.org:9898"));
        assert!(p.allows("127.0.0.1:9898"));
        assert!(p.allows("localhost:9898"));
        assert!(!p.allows("other.example.org"));
        let any = HostPolicy::new(Some(&["*".to_owned()]), "127.0.0.1:1".parse().unwrap());
        assert!(any.allows("anything.example"));
        let open = HostPolicy::new(None, "0.0.0.0:9898".parse().unwrap());
        assert!(open.allows("hub.internal:9898"), "not loopback, unset: any");
    }
}
