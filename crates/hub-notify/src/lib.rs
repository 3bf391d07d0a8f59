//! # hub-notify
//!
//! `type = "notify"`: a throttled chat notifier. Each message is rendered through a template
//! (minijinja: `topic`, `id`, `body`, `headers`, `timestamp`) into one line, sent to an IRC
//! channel (`sink = "irc"`: one connection kept by the consumer, with reconnects) or to a chat
//! webhook (`sink = "webhook"`: Slack and Mattermost incoming webhooks, or any JSON body from
//! a template).
//!
//! Pacing is the hub's: give the consumer a `rate_limit` (one token per call) and a
//! `batch_size`. While few messages wait, each call takes one message and sends one line; when
//! more than `digest_after` are queued, one call takes the burst (up to `batch_size`) and sends
//! one digest line per topic (`"12 more on org.example.build in the last 40 s"`) instead of one
//! line per message.
//!
//! The contract (every key, the sinks, the digests, the limits) is `docs/notify.md`.

mod irc;
mod render;
mod webhook;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    BoxError, ConsumeError, Consumer, ConsumerConfig, Context, ErrorKind, Message, Resources,
    async_trait,
};
use hub_http::SecretSource;
use serde::Deserialize;

use crate::irc::{IrcOptions, IrcSink};
use crate::render::{Templates, Unit, by_topic, cut, digest_line, one_line};
use crate::webhook::WebhookSink;

/// The default `template` of `sink = "irc"`.
pub const IRC_TEMPLATE: &str = "{{ topic }}: {{ body | tojson }}";
/// The default `template` of `sink = "webhook"` (the topic as code, in Slack's and
/// Mattermost's markdown).
pub const WEBHOOK_TEMPLATE: &str = "`{{ topic }}`: {{ body | tojson }}";
/// The default `max_length` of `sink = "irc"`, in bytes: an IRC line is at most 512 bytes
/// with `PRIVMSG #channel :` and CRLF, and the server adds our `:nick!user@host ` prefix when
/// it relays it.
pub const IRC_MAX_LENGTH: usize = 400;
/// The default `max_length` of `sink = "webhook"`, in characters.
pub const WEBHOOK_MAX_LENGTH: usize = 4000;
/// The default `digest_after`.
pub const DIGEST_AFTER: usize = 5;
/// The shortest `max_length` accepted.
pub const MIN_MAX_LENGTH: usize = 16;

/// Where the lines go: `sink = "irc"` or `sink = "webhook"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    /// An IRC channel (`server`, `port`, `tls`, `nick`, `channel`, `password`).
    Irc,
    /// A chat webhook (`url`, `format`, `body_template`, `timeout`).
    Webhook,
}

/// What a webhook's request body is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"text": "<the line(s)>"}`: Slack's incoming webhooks, which Mattermost (and
    /// Rocket.Chat) accept too. The default.
    #[default]
    Slack,
    /// The `body_template`, rendered with `text` (the lines joined by newlines) and `lines`.
    Template,
}

/// `[consumers.<id>.settings]` of `type = "notify"`. See `docs/notify.md`.
///
/// One flat table: the keys of the other sink are refused by [`ConsumerConfig::build`] with
/// a message naming them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// `"irc"` or `"webhook"` (required).
    pub sink: SinkKind,
    /// The line of one message (minijinja). Default [`IRC_TEMPLATE`] or
    /// [`WEBHOOK_TEMPLATE`].
    #[serde(default)]
    pub template: Option<String>,
    /// A call with more messages than this sends one digest line per topic instead of one
    /// line per message, at most this many lines (the last counting the remaining topics);
    /// the consumer takes a burst at once only when more than this are queued. Default 5; at
    /// least 1.
    #[serde(default = "default_digest_after")]
    pub digest_after: usize,
    /// The longest line: IRC in bytes (default 400), webhook in characters (default 4000).
    /// Longer lines are cut at a character boundary, ending with "…".
    #[serde(default)]
    pub max_length: Option<usize>,

    /// IRC: the server's host name or address (required).
    #[serde(default)]
    pub server: Option<String>,
    /// IRC: the port. Default 6667, or 6697 with `tls`.
    #[serde(default)]
    pub port: Option<u16>,
    /// IRC: connect with TLS (rustls; the system's roots plus `ca_file`). Default false.
    #[serde(default)]
    pub tls: Option<bool>,
    /// IRC: a PEM file of CA certificates trusted besides the system's roots (with `tls`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// IRC: the nick (required). When taken, `_` is appended.
    #[serde(default)]
    pub nick: Option<String>,
    /// IRC: the channel, `#name` (required).
    #[serde(default)]
    pub channel: Option<String>,
    /// IRC: the server password (`PASS`): a string, `{ env = "VAR" }` or `{ file = "/path" }`.
    /// Never logged.
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// IRC: the first delay before reconnecting; it doubles after each failed attempt. Default
    /// 1 s.
    #[serde(default, with = "hub_core::duration::option")]
    pub reconnect_delay: Option<Duration>,
    /// IRC: the longest delay between reconnection attempts. Default 60 s.
    #[serde(default, with = "hub_core::duration::option")]
    pub reconnect_delay_max: Option<Duration>,

    /// Webhook: the URL (required): a string, `{ env = "VAR" }` or `{ file = "/path" }` (a
    /// chat webhook's URL is its password). Never logged beyond its scheme and host.
    #[serde(default)]
    pub url: Option<SecretSource>,
    /// Webhook: `"slack"` (default) or `"template"`.
    #[serde(default)]
    pub format: Option<WebhookFormat>,
    /// Webhook: the whole JSON body (minijinja; `text` and `lines`), with `format =
    /// "template"`.
    #[serde(default)]
    pub body_template: Option<String>,
    /// Webhook: longest time one request may take. Default 30 s.
    #[serde(default, with = "hub_core::duration::option")]
    pub timeout: Option<Duration>,
}

fn default_digest_after() -> usize {
    DIGEST_AFTER
}

impl fmt::Debug for NotifyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotifyConfig")
            .field("sink", &self.sink)
            .field("template", &self.template)
            .field("digest_after", &self.digest_after)
            .field("max_length", &self.max_length)
            .field("server", &self.server)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("nick", &self.nick)
            .field("channel", &self.channel)
            .field("password", &self.password)
            // SecretSource's Debug shows `<redacted>` for a value written inline.
            .field("url", &self.url)
            .field("format", &self.format)
            .field("body_template", &self.body_template)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ConsumerConfig for NotifyConfig {
    const TYPE: &'static str = "notify";
    const DESCRIPTION: &'static str = "chat notifications: each message rendered by a template to \
         IRC or a chat webhook, paced by rate_limit; bursts sent as digests";

    fn build(self, _resources: &Resources) -> Result<Arc<dyn Consumer>, BoxError> {
        Ok(Arc::new(self.into_notifier()?))
    }
}

/// `key: only for sink = "<sink>"` when `value` is set.
fn only_for<T>(value: &Option<T>, key: &str, sink: &str) -> Result<(), String> {
    match value {
        Some(_) => Err(format!("{key}: only for sink = \"{sink}\"")),
        None => Ok(()),
    }
}

fn required<T>(value: Option<T>, key: &str, sink: &str) -> Result<T, String> {
    value.ok_or_else(|| format!("{key}: required with sink = \"{sink}\""))
}

impl NotifyConfig {
    /// Builds the notifier: compiles the templates, checks every key, reads the secrets
    /// (environment variables, files) and the `ca_file`. Connects to nothing.
    ///
    /// # Errors
    /// A message naming the key at fault (never a secret's value).
    pub fn into_notifier(self) -> Result<Notifier, BoxError> {
        Ok(self.check()?)
    }

    fn check(self) -> Result<Notifier, String> {
        if self.digest_after == 0 {
            return Err("digest_after: must be at least 1".into());
        }
        if let Some(max) = self.max_length
            && max < MIN_MAX_LENGTH
        {
            return Err(format!("max_length: must be at least {MIN_MAX_LENGTH}"));
        }
        match self.sink {
            SinkKind::Irc => self.check_irc(),
            SinkKind::Webhook => self.check_webhook(),
        }
    }

    fn check_irc(self) -> Result<Notifier, String> {
        const SINK: &str = "irc";
        only_for(&self.url, "url", "webhook")?;
        only_for(&self.format, "format", "webhook")?;
        only_for(&self.body_template, "body_template", "webhook")?;
        only_for(&self.timeout, "timeout", "webhook")?;
        let server = required(self.server, "server", SINK)?;
        if server.is_empty() || server.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err("server: must be a host name or address (no spaces)".into());
        }
        let tls = self.tls.unwrap_or(false);
        let port = self.port.unwrap_or(if tls { 6697 } else { 6667 });
        if port == 0 {
            return Err("port: must be 1 to 65535".into());
        }
        let nick = required(self.nick, "nick", SINK)?;
        check_nick(&nick)?;
        let channel = required(self.channel, "channel", SINK)?;
        check_channel(&channel)?;
        let overhead = "PRIVMSG ".len() + channel.len() + " :".len() + "\r\n".len();
        let room = irc::LINE_BYTES - overhead;
        let max_length = match self.max_length {
            Some(max) if max > room => {
                return Err(format!(
                    "max_length: {max} bytes do not fit in one IRC line to {channel} (at most \
                     {room}; keep a margin for the prefix the server adds, 400 is safe)"
                ));
            }
            Some(max) => max,
            None => IRC_MAX_LENGTH.min(room),
        };
        let ca = match (&self.ca_file, tls) {
            (Some(_), false) => return Err("ca_file: only with tls = true".into()),
            (Some(path), true) => irc::read_ca_file(path).map_err(|e| format!("ca_file: {e}"))?,
            (None, _) => Vec::new(),
        };
        if tls {
            rustls::pki_types::ServerName::try_from(server.as_str())
                .map_err(|e| format!("server: not a name TLS can check ({e})"))?;
        }
        let password = match &self.password {
            Some(source) => {
                let p = source.resolve().map_err(|e| format!("password: {e}"))?;
                if p.expose().is_empty() || p.expose().contains(['\r', '\n', '\0']) {
                    return Err("password: must be one non-empty line".into());
                }
                Some(p)
            }
            None => None,
        };
        let reconnect_delay = self.reconnect_delay.unwrap_or(Duration::from_secs(1));
        let reconnect_delay_max = self.reconnect_delay_max.unwrap_or(Duration::from_secs(60));
        if reconnect_delay.is_zero() {
            return Err("reconnect_delay: must be longer than zero".into());
        }
        if reconnect_delay_max < reconnect_delay {
            return Err("reconnect_delay_max: must not be shorter than reconnect_delay".into());
        }
        let templates = Templates::new(
            self.template.unwrap_or_else(|| IRC_TEMPLATE.to_owned()),
            None,
        )?;
        let sink = IrcSink::new(IrcOptions {
            server,
            port,
            tls: tls.then_some(ca),
            nick,
            channel,
            password,
            reconnect_delay,
            reconnect_delay_max,
        });
        Ok(Notifier {
            templates,
            digest_after: self.digest_after,
            max_length,
            unit: Unit::Bytes,
            sink: Sink::Irc(sink),
        })
    }

    fn check_webhook(self) -> Result<Notifier, String> {
        const SINK: &str = "webhook";
        for (set, key) in [
            (self.server.is_some(), "server"),
            (self.port.is_some(), "port"),
            (self.tls.is_some(), "tls"),
            (self.ca_file.is_some(), "ca_file"),
            (self.nick.is_some(), "nick"),
            (self.channel.is_some(), "channel"),
            (self.password.is_some(), "password"),
            (self.reconnect_delay.is_some(), "reconnect_delay"),
            (self.reconnect_delay_max.is_some(), "reconnect_delay_max"),
        ] {
            if set {
                return Err(format!("{key}: only for sink = \"irc\""));
            }
        }
        let url = required(self.url, "url", SINK)?
            .resolve()
            .map_err(|e| format!("url: {e}"))?;
        let format = self.format.unwrap_or_default();
        let body = match (format, self.body_template) {
            (WebhookFormat::Template, Some(t)) => Some(t),
            (WebhookFormat::Template, None) => {
                return Err("body_template: required with format = \"template\"".into());
            }
            (WebhookFormat::Slack, Some(_)) => {
                return Err("body_template: only with format = \"template\"".into());
            }
            (WebhookFormat::Slack, None) => None,
        };
        let timeout = self.timeout.unwrap_or(Duration::from_secs(30));
        if timeout.is_zero() {
            return Err("timeout: must be longer than zero".into());
        }
        let templates = Templates::new(
            self.template.unwrap_or_else(|| WEBHOOK_TEMPLATE.to_owned()),
            body,
        )?;
        // A body template that cannot render JSON for a plain line is a configuration error.
        if let Some(Err(e)) = templates.body(&["a line".to_owned()]) {
            return Err(e);
        }
        let kind = match format {
            WebhookFormat::Slack => webhook::Body::Slack,
            WebhookFormat::Template => webhook::Body::Template,
        };
        let sink = WebhookSink::new(url.expose(), kind, timeout)?;
        Ok(Notifier {
            templates,
            digest_after: self.digest_after,
            max_length: self.max_length.unwrap_or(WEBHOOK_MAX_LENGTH),
            unit: Unit::Chars,
            sink: Sink::Webhook(sink),
        })
    }
}

/// A nick: 1 to 30 characters, no spaces, no `,*?!@:#&` at the start or control characters.
fn check_nick(nick: &str) -> Result<(), String> {
    let bad = nick.is_empty()
        || nick.len() > 30
        || nick.chars().any(|c| {
            c.is_whitespace() || c.is_control() || matches!(c, ',' | '*' | '?' | '!' | '@' | ':')
        })
        || nick.starts_with([
            '#', '&', '$', '+', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9',
        ]);
    if bad {
        return Err(format!(
            "nick: {nick:?} is not a valid IRC nick (1 to 30 characters, letters, digits and \
             -_[]\\^{{}}|`, not starting with a digit or -)"
        ));
    }
    Ok(())
}

/// A channel: `#name` (or `&`, `+`, `!`), at most 50 bytes, no spaces, commas or control
/// characters.
fn check_channel(channel: &str) -> Result<(), String> {
    let bad = channel.len() < 2
        || channel.len() > 50
        || !channel.starts_with(['#', '&', '+', '!'])
        || channel
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',');
    if bad {
        return Err(format!(
            "channel: {channel:?} is not a valid IRC channel (\"#name\": no spaces or commas, \
             at most 50 bytes)"
        ));
    }
    Ok(())
}

enum Sink {
    Irc(IrcSink),
    Webhook(WebhookSink),
}

/// The `notify` consumer. Build it from [`NotifyConfig`].
pub struct Notifier {
    templates: Templates,
    digest_after: usize,
    max_length: usize,
    unit: Unit,
    sink: Sink,
}

impl fmt::Debug for Notifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Notifier");
        d.field("digest_after", &self.digest_after)
            .field("max_length", &self.max_length);
        match &self.sink {
            Sink::Irc(s) => d.field("sink", s),
            Sink::Webhook(s) => d.field("sink", s),
        };
        d.finish_non_exhaustive()
    }
}

/// The same failure, for another message of the batch.
fn copy_error(e: &ConsumeError) -> ConsumeError {
    let text = e.to_string();
    match e.kind() {
        ErrorKind::Invalid => ConsumeError::invalid(text),
        ErrorKind::Transient => {
            let copy = ConsumeError::transient(text);
            match e.retry_after() {
                Some(d) => copy.with_retry_after(d),
                None => copy,
            }
        }
    }
}

impl Notifier {
    /// Whether a line sent now would be delivered as far as the notifier can tell: for IRC,
    /// connected and in the channel; a webhook is always ready.
    pub async fn is_ready(&self) -> bool {
        match &self.sink {
            Sink::Irc(s) => s.joined().await,
            Sink::Webhook(_) => true,
        }
    }

    /// The longest line: bytes for IRC, characters for a webhook.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// One line: line breaks as spaces, cut to `max_length` with "…".
    fn fit(&self, text: &str) -> String {
        cut(&one_line(text), self.max_length, self.unit).into_owned()
    }

    /// The line `msg` becomes: its template rendered, line breaks as spaces, cut to
    /// `max_length` with "…". An empty line is not sent (the message is acknowledged).
    ///
    /// # Errors
    /// Invalid: the template failed on this message.
    pub fn line(&self, msg: &Message) -> Result<String, ConsumeError> {
        self.templates
            .line(msg)
            .map(|text| self.fit(&text))
            .map_err(|e| ConsumeError::invalid(format!("message {}: {e}", msg.id())))
    }

    /// Sends lines: one PRIVMSG each (each after the first paced by the consumer's
    /// `rate_limit`, as the hub paced the call itself), or one webhook request for all.
    async fn send(&self, cx: &Context, lines: &[String]) -> Result<(), ConsumeError> {
        if lines.is_empty() {
            return Ok(());
        }
        match &self.sink {
            Sink::Irc(irc) => {
                for (i, line) in lines.iter().enumerate() {
                    if i > 0 {
                        cx.pace(1).await;
                    }
                    irc.send(line).await?;
                }
                Ok(())
            }
            Sink::Webhook(w) => w.send(&self.templates, lines).await,
        }
    }

    /// A burst: one line per topic, in order of first appearance (a topic with one message
    /// gets that message's own line), at most `digest_after` lines: past that, the last line
    /// counts the rest ("and 40 more on 12 other topics"), so a burst over many topics is
    /// never a flood. Every message gets the outcome of the send.
    async fn digest(&self, cx: &Context, batch: &[Message]) -> Vec<Result<(), ConsumeError>> {
        let runs = by_topic(batch);
        let shown = if runs.len() > self.digest_after {
            self.digest_after.saturating_sub(1)
        } else {
            runs.len()
        };
        let mut lines: Vec<String> = runs[..shown]
            .iter()
            .map(|run| {
                if run.count == 1
                    && let Ok(line) = self.line(run.first)
                {
                    return line;
                }
                self.fit(&digest_line(run))
            })
            .filter(|l| !l.is_empty())
            .collect();
        if let Some(rest) = runs.get(shown..).filter(|r| !r.is_empty()) {
            let messages: usize = rest.iter().map(|r| r.count).sum();
            let more = if shown == 0 { "" } else { "more " };
            let other = if shown == 0 { "" } else { "other " };
            lines.push(self.fit(&format!(
                "and {messages} {more}on {} {other}topics",
                rest.len()
            )));
        }
        match self.send(cx, &lines).await {
            Ok(()) => batch.iter().map(|_| Ok(())).collect(),
            Err(e) => {
                tracing::debug!(error = %e, messages = batch.len(), "digest not sent");
                batch.iter().map(|_| Err(copy_error(&e))).collect()
            }
        }
    }
}

#[async_trait]
impl Consumer for Notifier {
    async fn start(&self, _cx: &Context) -> Result<(), BoxError> {
        match &self.sink {
            Sink::Irc(irc) => irc.start()?,
            Sink::Webhook(w) => {
                w.client()?;
            }
        }
        Ok(())
    }

    async fn consume(&self, cx: &Context, msg: &Message) -> Result<(), ConsumeError> {
        let line = self.line(msg)?;
        if line.is_empty() {
            return Ok(());
        }
        self.send(cx, &[line]).await
    }

    async fn consume_batch(
        &self,
        cx: &Context,
        batch: &[Message],
    ) -> Vec<Result<(), ConsumeError>> {
        if batch.len() > self.digest_after {
            return self.digest(cx, batch).await;
        }
        let mut sent_one = false;
        // One line per message; once the sink failed, the rest are not tried.
        let mut out = Vec::with_capacity(batch.len());
        let mut failed: Option<ConsumeError> = None;
        for msg in batch {
            if let Some(e) = &failed {
                out.push(Err(copy_error(e)));
                continue;
            }
            let line = match self.line(msg) {
                Ok(line) => line,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if line.is_empty() {
                out.push(Ok(()));
                continue;
            }
            // The hub paced the call; each send after the first is paced here.
            if sent_one {
                cx.pace(1).await;
            }
            sent_one = true;
            let sent = self.send(cx, &[line]).await;
            if let Err(e) = &sent
                && e.kind() == ErrorKind::Transient
            {
                failed = Some(copy_error(e));
            }
            out.push(sent);
        }
        out
    }

    /// One message at a time while at most `digest_after` are queued (each its own line, paced
    /// by the rate limit); the burst (up to `batch_size`) once more are.
    fn batch_take(&self, queued: usize, batch_size: usize) -> usize {
        if queued > self.digest_after {
            queued.min(batch_size)
        } else {
            1
        }
    }

    async fn stop(&self, _cx: &Context) {
        if let Sink::Irc(irc) = &self.sink {
            irc.stop().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_like: serde_json::Value) -> Result<Notifier, String> {
        serde_json::from_value::<NotifyConfig>(toml_like)
            .map_err(|e| e.to_string())?
            .check()
    }

    #[test]
    fn keys_of_the_other_sink_are_refused_by_name() {
        let e = config(hub_core::json!({
            "sink": "irc", "server": "irc.example", "nick": "bot", "channel": "#c",
            "url": "https://x"
        }))
        .err()
        .unwrap();
        assert_eq!(e, "url: only for sink = \"webhook\"");
        let e = config(hub_core::json!({"sink": "webhook", "url": "https://x/y", "nick": "b"}))
            .err()
            .unwrap();
        assert_eq!(e, "nick: only for sink = \"irc\"");
        let e = config(hub_core::json!({"sink": "irc", "nick": "b", "channel": "#c"}))
            .err()
            .unwrap();
        assert_eq!(e, "server: required with sink = \"irc\"");
    }

    #[test]
    fn irc_settings_are_checked() {
        let base = |extra: serde_json::Value| {
            let mut v = hub_core::json!({"sink": "irc", "server": "irc.example", "nick": "bot", "channel": "#c"});
            if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
                o.extend(e.clone());
            }
            config(v)
        };
        let n = base(hub_core::json!({})).unwrap();
        assert_eq!(n.max_length(), IRC_MAX_LENGTH);
        assert!(base(hub_core::json!({"nick": "bad nick"})).is_err());
        assert!(base(hub_core::json!({"channel": "nochan"})).is_err());
        let e = base(hub_core::json!({"max_length": 500})).err().unwrap();
        assert!(e.starts_with("max_length: 500 bytes do not fit"), "{e}");
        let e = base(hub_core::json!({"template": "{% if %}"}))
            .err()
            .unwrap();
        assert!(e.starts_with("template: "), "{e}");
        let e = base(hub_core::json!({"password": {"env": "HUB_NOTIFY_TEST_UNSET_VAR"}}))
            .err()
            .unwrap();
        assert_eq!(
            e,
            "password: environment variable HUB_NOTIFY_TEST_UNSET_VAR is not set"
        );
        let n = base(hub_core::json!({"password": "hunter2"})).unwrap();
        assert!(!format!("{n:?}").contains("hunter2"));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let c: NotifyConfig = serde_json::from_value(hub_core::json!({
            "sink": "webhook", "url": "https://hooks.example/T0/secret-token"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("secret-token"), "{c:?}");
        let c: NotifyConfig = serde_json::from_value(hub_core::json!({
            "sink": "irc", "server": "s", "nick": "n", "channel": "#c", "password": "hunter2"
        }))
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"), "{c:?}");
    }

    #[test]
    fn webhook_settings_are_checked() {
        let e = config(
            hub_core::json!({"sink": "webhook", "url": "https://x/y", "format": "template"}),
        )
        .err()
        .unwrap();
        assert_eq!(e, "body_template: required with format = \"template\"");
        let e = config(hub_core::json!({
            "sink": "webhook", "url": "https://x/y", "format": "template",
            "body_template": "{{ text }}"
        }))
        .err()
        .unwrap();
        assert!(e.contains("did not render JSON"), "{e}");
        let n = config(
            hub_core::json!({"sink": "webhook", "url": "https://hooks.example/secret-token"}),
        )
        .unwrap();
        assert_eq!(n.max_length(), WEBHOOK_MAX_LENGTH);
        assert!(!format!("{n:?}").contains("secret-token"));
    }

    #[test]
    fn bursts_are_taken_whole_and_few_messages_one_by_one() {
        let n = config(hub_core::json!({"sink": "webhook", "url": "https://x/y"})).unwrap();
        assert_eq!(n.batch_take(1, 500), 1);
        assert_eq!(n.batch_take(5, 500), 1);
        assert_eq!(n.batch_take(6, 500), 6);
        assert_eq!(n.batch_take(900, 500), 500);
        assert_eq!(n.batch_take(900, 1), 1);
    }
}
