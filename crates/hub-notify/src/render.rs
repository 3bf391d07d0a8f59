//! Text: templates (minijinja), one-line clean-up, cutting to a length, digest lines.

use std::borrow::Cow;

use hub_core::{Message, Timestamp};
use minijinja::value::{Serde, Value};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, UndefinedBehavior, context};

/// The template of each message's line (`template`).
const LINE: &str = "line";
/// The template of a webhook's whole JSON body (`body_template`).
const BODY: &str = "body";

/// How a sink measures `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unit {
    /// UTF-8 bytes (IRC: the protocol's limit is in bytes).
    Bytes,
    /// Characters (chat services count characters).
    Chars,
}

/// The compiled templates of one consumer.
pub(crate) struct Templates {
    env: Environment<'static>,
    has_body: bool,
}

impl Templates {
    /// Compiles `line` and, for a webhook with `format = "template"`, `body`.
    ///
    /// # Errors
    /// A syntax error, naming the key (`template` or `body_template`).
    pub(crate) fn new(line: String, body: Option<String>) -> Result<Self, String> {
        // The builtin filters and tests (`default`, `upper`, `join`, `length`, ...).
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Chainable);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_filter("tojson", tojson);
        env.add_template_owned(LINE, line)
            .map_err(|e| format!("template: {}", describe(&e)))?;
        let has_body = body.is_some();
        if let Some(body) = body {
            env.add_template_owned(BODY, body)
                .map_err(|e| format!("body_template: {}", describe(&e)))?;
        }
        Ok(Self { env, has_body })
    }

    /// The message's line, as the template renders it (not cleaned up, not cut).
    ///
    /// # Errors
    /// The template failed on this message (a filter given a value it cannot take, say).
    pub(crate) fn line(&self, msg: &Message) -> Result<String, String> {
        let headers = msg.headers();
        let cx = context! {
            topic => msg.topic(),
            id => msg.id(),
            body => Serde(msg.body()),
            headers => Serde(headers),
            timestamp => msg.timestamp().to_string(),
        };
        self.env
            .get_template(LINE)
            .and_then(|t| t.render(cx))
            .map_err(|e| format!("template: {}", describe(&e)))
    }

    /// A webhook's JSON body for `lines` (`body_template`; `text` is the lines joined by
    /// newlines). `None` without a body template.
    ///
    /// # Errors
    /// The template failed, or did not render JSON.
    pub(crate) fn body(&self, lines: &[String]) -> Option<Result<Vec<u8>, String>> {
        if !self.has_body {
            return None;
        }
        let cx = context! { text => lines.join("\n"), lines => Serde(lines) };
        let rendered = self
            .env
            .get_template(BODY)
            .and_then(|t| t.render(cx))
            .map_err(|e| format!("body_template: {}", describe(&e)));
        Some(rendered.and_then(|text| {
            serde_json::from_str::<serde_json::Value>(&text)
                .map(|_| text.into_bytes())
                .map_err(|e| format!("body_template: did not render JSON ({e})"))
        }))
    }
}

/// `tojson`: compact JSON (`{"a":1}`), not HTML-escaped (these lines are not HTML).
fn tojson(value: &Value) -> Result<Value, Error> {
    serde_json::to_string(value)
        .map(Value::from)
        .map_err(|e| Error::new(ErrorKind::InvalidOperation, "cannot write as JSON").with_source(e))
}

/// A minijinja error in one line: what, and where in the template.
fn describe(e: &Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One line: every line break (`\r\n`, `\n`, `\r`) becomes a space, NUL is dropped, and
/// surrounding whitespace is trimmed.
pub(crate) fn one_line(text: &str) -> Cow<'_, str> {
    let trimmed = text.trim();
    if !trimmed.contains(['\r', '\n', '\0']) {
        return Cow::Borrowed(trimmed);
    }
    let mut out = String::with_capacity(trimmed.len());
    let mut chars = trimmed.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(' ');
            }
            '\n' => out.push(' '),
            '\0' => {}
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The ellipsis put where a line was cut.
pub(crate) const ELLIPSIS: char = '…';

/// `text` cut to at most `max` (bytes or characters) at a character boundary, ending with "…"
/// when it was cut (the ellipsis counts in `max`).
pub(crate) fn cut(text: &str, max: usize, unit: Unit) -> Cow<'_, str> {
    let fits = match unit {
        Unit::Bytes => text.len() <= max,
        Unit::Chars => text.chars().count() <= max,
    };
    if fits {
        return Cow::Borrowed(text);
    }
    let room = match unit {
        Unit::Bytes => max.saturating_sub(ELLIPSIS.len_utf8()),
        Unit::Chars => max.saturating_sub(1),
    };
    let end = match unit {
        Unit::Bytes => {
            let mut end = room.min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            end
        }
        Unit::Chars => text.char_indices().nth(room).map_or(text.len(), |(i, _)| i),
    };
    let mut out = text[..end].trim_end().to_owned();
    out.push(ELLIPSIS);
    Cow::Owned(out)
}

/// The messages of one topic in a digest.
pub(crate) struct TopicRun<'a> {
    /// The topic.
    pub topic: &'a str,
    /// How many messages.
    pub count: usize,
    /// The first of them (rendered as it is when it is alone).
    pub first: &'a Message,
    /// The oldest and newest timestamps.
    pub oldest: Timestamp,
    /// See `oldest`.
    pub newest: Timestamp,
}

/// The messages grouped by topic, in order of first appearance.
pub(crate) fn by_topic(batch: &[Message]) -> Vec<TopicRun<'_>> {
    let mut runs: Vec<TopicRun<'_>> = Vec::new();
    for msg in batch {
        let ts = msg.timestamp();
        if let Some(run) = runs.iter_mut().find(|r| r.topic == msg.topic()) {
            run.count += 1;
            run.oldest = run.oldest.min(ts);
            run.newest = run.newest.max(ts);
        } else {
            runs.push(TopicRun {
                topic: msg.topic(),
                count: 1,
                first: msg,
                oldest: ts,
                newest: ts,
            });
        }
    }
    runs
}

/// `"12 more on org.example.build in the last 40 s"`.
pub(crate) fn digest_line(run: &TopicRun<'_>) -> String {
    let span = run.newest.duration_since(run.oldest);
    let secs = span.as_secs_f64().max(0.0).ceil();
    format!(
        "{} more on {} in the last {}",
        run.count,
        run.topic,
        humanize(secs)
    )
}

/// Whole seconds for people: `"40 s"`, `"3 min"`, `"2 h 5 min"`, `"3 d 4 h"` (at least 1 s).
pub(crate) fn humanize(secs: f64) -> String {
    // Bounded above: a span longer than ~31 years reads as that many days all the same.
    let secs = secs.clamp(1.0, 1e12) as u64;
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs.div_ceil(60)),
        3600..86_400 => {
            let (h, m) = (secs / 3600, (secs % 3600) / 60);
            if m == 0 {
                format!("{h} h")
            } else {
                format!("{h} h {m} min")
            }
        }
        _ => {
            let (d, h) = (secs / 86_400, (secs % 86_400) / 3600);
            if h == 0 {
                format!("{d} d")
            } else {
                format!("{d} d {h} h")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_core::json;

    #[test]
    fn lines_are_cut_at_a_char_boundary_with_an_ellipsis() {
        assert_eq!(cut("short", 10, Unit::Bytes), "short");
        let cut10 = cut("aaaaaaaaaaaa", 10, Unit::Bytes);
        assert_eq!(cut10, "aaaaaaa…");
        assert_eq!(cut10.len(), 10);
        // "é" is two bytes: never split.
        let s = "éééééééééé";
        let c = cut(s, 8, Unit::Bytes);
        assert!(c.len() <= 8 && c.ends_with(ELLIPSIS), "{c}");
        assert_eq!(c, "éé…");
        assert_eq!(cut(s, 4, Unit::Chars), "ééé…");
        assert_eq!(cut(s, 10, Unit::Chars), s);
        assert_eq!(cut("ab cd", 4, Unit::Chars), "ab…");
    }

    #[test]
    fn line_breaks_become_spaces() {
        assert_eq!(one_line(" a\r\nb\nc\rd\0e \n"), "a b c de");
        assert!(matches!(one_line("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn spans_read_like_people_write_them() {
        assert_eq!(humanize(0.0), "1 s");
        assert_eq!(humanize(40.0), "40 s");
        assert_eq!(humanize(61.0), "2 min");
        assert_eq!(humanize(3600.0), "1 h");
        assert_eq!(humanize(3.0 * 3600.0 + 300.0), "3 h 5 min");
        assert_eq!(humanize(86_400.0 * 2.0 + 7200.0), "2 d 2 h");
    }

    #[test]
    fn templates_see_the_message() {
        let t = Templates::new(
            "{{ topic }} {{ id }} {{ body.user.name }} {{ body.missing.deeper }}|{{ headers.h }} {{ body | tojson }} {{ timestamp }}".into(),
            None,
        )
        .unwrap();
        let ts: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let m = Message::builder("org.a", json!({"user": {"name": "ada"}, "x": "<&>"}))
            .id("m1")
            .header("h", "v")
            .timestamp(ts)
            .build();
        assert_eq!(
            t.line(&m).unwrap(),
            r#"org.a m1 ada |v {"user":{"name":"ada"},"x":"<&>"} 2026-01-02T03:04:05Z"#
        );
        let bad = Templates::new("{{ topic ".into(), None).err().unwrap();
        assert!(bad.starts_with("template: "), "{bad}");
    }

    #[test]
    fn body_templates_must_render_json() {
        let t = Templates::new("x".into(), Some(r#"{"msg": {{ text | tojson }}}"#.into())).unwrap();
        let body = t.body(&["a\"b".into(), "c".into()]).unwrap().unwrap();
        assert_eq!(String::from_utf8(body).unwrap(), r#"{"msg": "a\"b\nc"}"#);
        let t = Templates::new("x".into(), Some("not json {{ text }}".into())).unwrap();
        let e = t.body(&["a".into()]).unwrap().err().unwrap();
        assert!(e.contains("did not render JSON"), "{e}");
    }

    #[test]
    fn digests_group_by_topic_in_order_of_first_appearance() {
        let at = |s: &str| -> Timestamp { s.parse().unwrap() };
        let msg =
            |topic: &str, ts: &str| Message::builder(topic, json!({})).timestamp(at(ts)).build();
        let batch = [
            msg("b", "2026-01-01T00:00:10Z"),
            msg("a", "2026-01-01T00:00:00Z"),
            msg("b", "2026-01-01T00:00:50Z"),
            msg("b", "2026-01-01T00:00:30Z"),
        ];
        let runs = by_topic(&batch);
        let lines: Vec<String> = runs.iter().map(digest_line).collect();
        assert_eq!(
            lines,
            [
                "3 more on b in the last 40 s",
                "1 more on a in the last 1 s"
            ]
        );
    }
}
