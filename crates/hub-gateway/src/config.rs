//! `[gateway]`: the gateway's keys, read by the hub's configuration loader.

use std::collections::BTreeMap;
use std::time::Duration;

use hub_http::SecretSource;
use serde::Deserialize;

/// `[gateway]`. Present: the gateway is on (`/ws` and `/events` on the hub's HTTP port);
/// absent: off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The backends whose messages clients may receive (after routing). Default: every
    /// backend, the gateway's own (what clients publish) included.
    #[serde(default)]
    pub attach: Option<Vec<String>>,
    /// A backend that every message a client publishes is also published on, so that ZeroMQ
    /// or RabbitMQ subscribers see it. Default: none (it reaches the hub's own consumers on the
    /// `gateway` backend and the gateway's subscribers only).
    #[serde(default)]
    pub forward_to: Option<String>,
    /// Messages queued per client before the oldest are dropped (counted, and the client told).
    /// Default 1024.
    #[serde(default = "default_client_queue")]
    pub client_queue: usize,
    /// A WebSocket client whose socket takes nothing for this long is disconnected. Default
    /// `"10s"`.
    #[serde(default = "default_slow_client_timeout", with = "hub_core::duration")]
    pub slow_client_timeout: Duration,
    /// Messages kept for SSE clients that reconnect with `Last-Event-ID`. Default 1024.
    #[serde(default = "default_replay_buffer")]
    pub replay_buffer: usize,
    /// The largest frame a client may send (bytes). Larger ones get an error frame; past 4
    /// times this size the connection is closed. Default 65536.
    #[serde(default = "default_max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// Bad frames a connection may send before it is closed. Default 20.
    #[serde(default = "default_max_bad_frames")]
    pub max_bad_frames: u32,
    /// Clients connected at once; more are refused with 503. Default 10000.
    #[serde(default = "default_max_clients")]
    pub max_clients: usize,
    /// How often the hub pings a WebSocket client. Default `"30s"`.
    #[serde(default = "default_ping_interval", with = "hub_core::duration")]
    pub ping_interval: Duration,
    /// Without a token, subscribe (read-only) to every topic. Default false: a token is needed.
    #[serde(default)]
    pub anonymous_subscribe: bool,
    /// Origins (`https://example.org`) whose pages may connect; `"*"`: any. Default: none but
    /// the hub's own (same host); requests without an `Origin` (not from a browser) are not
    /// affected.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// `[gateway.tokens.<name>]`: who may connect, and to do what.
    #[serde(default)]
    pub tokens: BTreeMap<String, TokenConfig>,
}

/// `[gateway.tokens.<name>]`: one client credential. The name appears in logs and as the
/// `client` label of the gateway's series; the token never does.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The token: a string, `{ env = "VAR" }` or `{ file = "/path" }`.
    pub token: SecretSource,
    /// Topic patterns its clients may receive (their own subscriptions are narrowed to these).
    /// Default: none.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Topic patterns its clients may publish on. Default: none (read-only).
    #[serde(default)]
    pub publish: Vec<String>,
}

fn default_client_queue() -> usize {
    1024
}
fn default_slow_client_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_replay_buffer() -> usize {
    1024
}
fn default_max_frame_bytes() -> usize {
    64 * 1024
}
fn default_max_bad_frames() -> u32 {
    20
}
fn default_max_clients() -> usize {
    10_000
}
fn default_ping_interval() -> Duration {
    Duration::from_secs(30)
}
