//! The HTTP client: TLS on rustls with the `ring` provider, the system's roots plus an optional
//! CA file, and the `http_client` shared resource.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hub_core::{BoxError, ResourceConfig};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

/// `User-Agent` of every request: `hub/<version>`.
pub const USER_AGENT: &str = concat!("hub/", env!("CARGO_PKG_VERSION"));

/// `[resources.<id>]` with `type = "http_client"`: one HTTP client (one keep-alive pool) shared
/// by every `http` consumer whose `client` names it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpClientConfig {
    /// Longest time a whole request may take (connect, send, answer), for consumers that set
    /// no `timeout` of their own. Default: none (their own default, 30 s).
    #[serde(default, with = "hub_core::duration::option")]
    pub timeout: Option<Duration>,
    /// Longest time a TCP connect (and TLS handshake) may take. Default 10 s.
    #[serde(default = "default_connect_timeout", with = "hub_core::duration")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per host. Default 100.
    #[serde(default = "default_pool_max_idle_per_host")]
    pub pool_max_idle_per_host: usize,
    /// How long an idle connection is kept. Default 90 s.
    #[serde(default = "default_pool_idle_timeout", with = "hub_core::duration")]
    pub pool_idle_timeout: Duration,
    /// A PEM file of CA certificates trusted besides the system's roots. Optional.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Speak HTTP/1.1 only, even to a server that offers HTTP/2. Default false.
    #[serde(default)]
    pub http1_only: bool,
}

impl Default for HttpClientConfig {
    fn default() -> Self {
        Self {
            timeout: None,
            connect_timeout: default_connect_timeout(),
            pool_max_idle_per_host: default_pool_max_idle_per_host(),
            pool_idle_timeout: default_pool_idle_timeout(),
            ca_file: None,
            http1_only: false,
        }
    }
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_pool_max_idle_per_host() -> usize {
    100
}

fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(90)
}

impl ResourceConfig for HttpClientConfig {
    const TYPE: &'static str = "http_client";
    const DESCRIPTION: &'static str =
        "an HTTP client (one keep-alive pool) shared by the `http` consumers naming it in `client`";
    type Resource = HttpClient;

    fn build(self, _id: &str) -> Result<HttpClient, BoxError> {
        if self.timeout == Some(Duration::ZERO) {
            return Err("timeout: must be longer than zero".into());
        }
        if self.connect_timeout.is_zero() {
            return Err("connect_timeout: must be longer than zero".into());
        }
        let ca = match &self.ca_file {
            Some(path) => read_ca_file(path).map_err(|e| format!("ca_file: {e}"))?,
            None => Vec::new(),
        };
        let client = ClientOptions {
            timeout: self.timeout,
            connect_timeout: self.connect_timeout,
            pool_max_idle_per_host: self.pool_max_idle_per_host,
            pool_idle_timeout: self.pool_idle_timeout,
            ca: &ca,
            http1_only: self.http1_only,
        }
        .build()?;
        Ok(HttpClient {
            client,
            timeout: self.timeout,
        })
    }
}

/// What `[resources.<id>] type = "http_client"` builds: a `reqwest` client (cheap to clone, one
/// pool) and its default timeout. Any consumer may use it: `resources.named::<HttpClient>(id)`.
#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    timeout: Option<Duration>,
}

impl HttpClient {
    /// The client; clones share its pool.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// The resource's `timeout`, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How to build one client.
pub(crate) struct ClientOptions<'a> {
    pub timeout: Option<Duration>,
    pub connect_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub pool_idle_timeout: Duration,
    pub ca: &'a [CertificateDer<'static>],
    pub http1_only: bool,
}

impl ClientOptions<'_> {
    /// The client: redirects not followed (a 3xx is the peer's answer), TLS ours.
    pub(crate) fn build(&self) -> Result<reqwest::Client, BoxError> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(self.ca, self.http1_only)?)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            .connect_timeout(self.connect_timeout)
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        if let Some(t) = self.timeout {
            builder = builder.timeout(t);
        }
        if self.http1_only {
            builder = builder.http1_only();
        }
        builder
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}").into())
    }
}

/// A `reqwest` client builder with the hub's TLS set (the `ring` provider, the system's roots),
/// for tools of the hub's own (`hub dead requeue`): reqwest is built without a process-wide TLS
/// provider, so a plain `Client::builder()` cannot build.
///
/// # Errors
/// When the TLS configuration cannot be made.
pub fn client_builder() -> Result<reqwest::ClientBuilder, BoxError> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&[], false)?)
        .user_agent(USER_AGENT))
}

/// The system's CA roots, loaded once per process (certificates that do not parse are skipped).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "a system CA certificate could not be loaded");
        }
        found.certs
    })
}

/// TLS 1.2 and 1.3 on the `ring` provider; the system's roots and `extra`; ALPN `h2` then
/// `http/1.1` (or `http/1.1` alone).
fn tls_config(
    extra: &[CertificateDer<'static>],
    http1_only: bool,
) -> Result<rustls::ClientConfig, BoxError> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(system_roots().iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| format!("ca_file: not a usable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        tracing::warn!(
            "no CA certificates found on this system and no ca_file set: https:// requests will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    Ok(config)
}

/// Every certificate of a PEM file; an error when there is none (or the file is unreadable).
pub(crate) fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM file of certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    // Check each one now: a bad certificate is a configuration error, not a failed request.
    let mut store = RootCertStore::empty();
    for cert in &certs {
        store
            .add(cert.clone())
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(certs)
}
