//! `hub top`: a terminal dashboard over the JSON API (`/api/v1/status`): a table of consumers
//! with their state, backlog, oldest age, catch-up, rates and a sparkline of the rate out,
//! refreshed every second, sortable; `p` and `r` pause and resume the selected consumer when a
//! token is given. `q` (or Esc, or Ctrl-C) quits and restores the terminal.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};
use ratatui::{DefaultTerminal, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

/// Points of each consumer's rate-out sparkline.
const SPARK_POINTS: usize = 30;
const SPARK: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// What the table is sorted by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Name,
    Backlog,
    Age,
    RateOut,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            Self::Name => Self::Backlog,
            Self::Backlog => Self::Age,
            Self::Age => Self::RateOut,
            Self::RateOut => Self::Name,
        }
    }
    fn label(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Backlog => "backlog",
            Self::Age => "oldest age",
            Self::RateOut => "rate out",
        }
    }
}

struct App {
    url: String,
    token: Option<String>,
    client: hub_http::reqwest::Client,
    status: Option<Value>,
    problem: Option<String>,
    note: Option<String>,
    sort: SortBy,
    table: TableState,
    rates: HashMap<String, Vec<f64>>,
}

/// Runs `hub top` until `q`.
pub(crate) async fn run(url: String, token: Option<String>) -> ExitCode {
    let client = match hub_http::client_builder().and_then(|b| {
        b.timeout(Duration::from_secs(5))
            .build()
            .map_err(Into::into)
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hub top: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut app = App {
        url: url.trim_end_matches('/').to_owned(),
        token,
        client,
        status: None,
        problem: None,
        note: None,
        sort: SortBy::Name,
        table: TableState::default().with_selected(Some(0)),
        rates: HashMap::new(),
    };
    // Keys are read on a thread of their own (crossterm's read blocks).
    let (keys_tx, mut keys) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        loop {
            match event::poll(Duration::from_millis(200)) {
                Ok(true) => match event::read() {
                    Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => {
                        if keys_tx.send(k).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                Ok(false) => {
                    if keys_tx.is_closed() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    // `ratatui::init` enters the alternate screen and raw mode, and restores them on panic.
    let mut terminal = ratatui::init();
    let result = app.main_loop(&mut terminal, &mut keys).await;
    ratatui::restore();
    drop(keys);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hub top: {e}");
            ExitCode::FAILURE
        }
    }
}

impl App {
    async fn main_loop(
        &mut self,
        terminal: &mut DefaultTerminal,
        keys: &mut mpsc::UnboundedReceiver<event::KeyEvent>,
    ) -> std::io::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            terminal.draw(|f| self.draw(f))?;
            tokio::select! {
                _ = tick.tick() => self.refresh().await,
                key = keys.recv() => {
                    let Some(key) = key else { return Ok(()) };
                    let ctrl_c = key.modifiers.contains(KeyModifiers::CONTROL)
                        && key.code == KeyCode::Char('c');
                    match key.code {
                        _ if ctrl_c => return Ok(()),
                        KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                        KeyCode::Down | KeyCode::Char('j') => self.table.select_next(),
                        KeyCode::Up | KeyCode::Char('k') => self.table.select_previous(),
                        KeyCode::Char('s') => self.sort = self.sort.next(),
                        KeyCode::Char('p') => self.control("pause").await,
                        KeyCode::Char('r') => self.control("resume").await,
                        _ => {}
                    }
                }
            }
        }
    }

    async fn refresh(&mut self) {
        let got = async {
            let r = self
                .client
                .get(format!("{}/api/v1/status", self.url))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let text = r
                .error_for_status()
                .map_err(|e| e.to_string())?
                .text()
                .await
                .map_err(|e| e.to_string())?;
            serde_json::from_str::<Value>(&text).map_err(|e| format!("not the hub's API: {e}"))
        }
        .await;
        match got {
            Ok(v) => {
                for c in v["consumers"].as_array().into_iter().flatten() {
                    let id = c["id"].as_str().unwrap_or_default().to_owned();
                    let rates = self.rates.entry(id).or_default();
                    rates.push(c["out_per_s"].as_f64().unwrap_or(0.0));
                    if rates.len() > SPARK_POINTS {
                        rates.remove(0);
                    }
                }
                self.status = Some(v);
                self.problem = None;
            }
            Err(e) => self.problem = Some(format!("cannot read {}: {e}", self.url)),
        }
    }

    /// The consumers, sorted as chosen.
    fn consumers(&self) -> Vec<Value> {
        let mut list: Vec<Value> = self
            .status
            .as_ref()
            .and_then(|s| s["consumers"].as_array().cloned())
            .unwrap_or_default();
        let key = |c: &Value, f: &str| c[f].as_f64().unwrap_or(0.0);
        match self.sort {
            SortBy::Name => list.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str())),
            SortBy::Backlog => list.sort_by(|a, b| key(b, "backlog").total_cmp(&key(a, "backlog"))),
            SortBy::Age => {
                list.sort_by(|a, b| key(b, "oldest_age_s").total_cmp(&key(a, "oldest_age_s")));
            }
            SortBy::RateOut => {
                list.sort_by(|a, b| key(b, "out_per_s").total_cmp(&key(a, "out_per_s")));
            }
        }
        list
    }

    async fn control(&mut self, action: &str) {
        let Some(token) = self.token.clone() else {
            self.note = Some("read-only: start hub top with --token to pause and resume".into());
            return;
        };
        let list = self.consumers();
        let Some(c) = self.table.selected().and_then(|i| list.get(i)) else {
            return;
        };
        let id = c["id"].as_str().unwrap_or_default().to_owned();
        let r = self
            .client
            .post(format!("{}/api/v1/consumers/{id}/{action}", self.url))
            .bearer_auth(token)
            .send()
            .await;
        self.note = Some(match r {
            Ok(r) if r.status().is_success() => format!("{action}d {id}"),
            Ok(r) => {
                let code = r.status();
                let why = r
                    .text()
                    .await
                    .ok()
                    .and_then(|t| serde_json::from_str::<Value>(&t).ok());
                let why = why.as_ref().and_then(|v| v["error"].as_str()).unwrap_or("");
                format!("{action} {id}: {code} {why}")
            }
            Err(e) => format!("{action} {id}: {e}"),
        });
        self.refresh().await;
    }

    fn draw(&mut self, f: &mut Frame) {
        let [head, body, foot] = Layout::vertical([
            Constraint::Length(2),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let title = match &self.status {
            Some(s) => {
                let h = &s["hub"];
                let backends: Vec<String> = s["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|b| {
                        let up = if b["connected"].as_bool().unwrap_or(false) {
                            "up"
                        } else {
                            "DOWN"
                        };
                        format!("{} {up}", b["id"].as_str().unwrap_or(""))
                    })
                    .collect();
                format!(
                    "hub {} ({}) · up {} · {} · backends: {}",
                    h["name"].as_str().unwrap_or(""),
                    h["version"].as_str().unwrap_or(""),
                    duration(h["uptime_s"].as_f64()),
                    self.url,
                    backends.join(", ")
                )
            }
            None => format!("hub top · {} · connecting…", self.url),
        };
        let mut lines = vec![Line::styled(
            title,
            Style::new().add_modifier(Modifier::BOLD),
        )];
        if let Some(p) = self.problem.as_ref().or(self.note.as_ref()) {
            lines.push(Line::styled(p.clone(), Style::new().fg(Color::Yellow)));
        }
        f.render_widget(Paragraph::new(lines), head);

        let list = self.consumers();
        let rows = list.iter().map(|c| {
            let id = c["id"].as_str().unwrap_or("").to_owned();
            let state = c["state"].as_str().unwrap_or("").to_owned();
            let colour = match state.as_str() {
                "running" => Color::Green,
                "failing" => Color::Red,
                _ => Color::Yellow,
            };
            let backlog = c["backlog"].as_f64().unwrap_or(0.0);
            let catch_up = if backlog == 0.0 {
                "caught up".to_owned()
            } else {
                duration(c["catch_up_s"].as_f64())
            };
            Row::new(vec![
                id.clone(),
                state,
                number(backlog),
                duration(c["oldest_age_s"].as_f64()),
                catch_up,
                format!("{}/s", number(c["in_per_s"].as_f64().unwrap_or(0.0))),
                format!("{}/s", number(c["out_per_s"].as_f64().unwrap_or(0.0))),
                number(c["outcomes"]["ok"].as_f64().unwrap_or(0.0)),
                number(
                    c["outcomes"]["error"].as_f64().unwrap_or(0.0)
                        + c["outcomes"]["timeout"].as_f64().unwrap_or(0.0)
                        + c["outcomes"]["panic"].as_f64().unwrap_or(0.0),
                ),
                sparkline(self.rates.get(&id).map_or(&[][..], Vec::as_slice)),
            ])
            .style(Style::new().fg(colour))
        });
        let widths = [
            Constraint::Min(12),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(11),
            Constraint::Length(11),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(7),
            Constraint::Length(SPARK_POINTS as u16),
        ];
        let header = Row::new([
            "consumer",
            "state",
            "backlog",
            "oldest",
            "catch-up",
            "in",
            "out",
            "ok",
            "failed",
            "out, last 30 s",
        ])
        .style(Style::new().add_modifier(Modifier::BOLD));
        let table = Table::new(rows, widths)
            .header(header)
            .block(
                Block::bordered().title(format!(" consumers · sorted by {} ", self.sort.label())),
            )
            .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
        if self.table.selected().is_none_or(|i| i >= list.len()) && !list.is_empty() {
            self.table.select(Some(0));
        }
        f.render_stateful_widget(table, body, &mut self.table);
        let keys = if self.token.is_some() {
            "q quit · ↑↓ select · s sort · p pause · r resume"
        } else {
            "q quit · ↑↓ select · s sort · (read-only: --token to pause/resume)"
        };
        f.render_widget(
            Paragraph::new(keys).style(Style::new().fg(Color::DarkGray)),
            foot,
        );
    }
}

/// `1.2 k`, `3.4 M`.
fn number(n: f64) -> String {
    let a = n.abs();
    if a >= 1e6 {
        format!("{:.1} M", n / 1e6)
    } else if a >= 1e4 {
        format!("{:.0} k", n / 1e3)
    } else if a >= 1e3 {
        format!("{:.1} k", n / 1e3)
    } else if a < 10.0 && n.fract() != 0.0 {
        format!("{n:.1}")
    } else {
        format!("{n:.0}")
    }
}

/// `3 min 20 s`; `never` for no value (a consumer that makes no progress).
fn duration(s: Option<f64>) -> String {
    let Some(s) = s.filter(|s| s.is_finite()) else {
        return "never".into();
    };
    if s < 1.0 {
        return if s == 0.0 {
            "0 s".into()
        } else {
            format!("{:.0} ms", s * 1000.0)
        };
    }
    let s = s.round() as u64;
    let (d, h, m, x) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {x} s")
    } else {
        format!("{x} s")
    }
}

fn sparkline(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|v| {
            if max <= 0.0 {
                SPARK[0]
            } else {
                let i = ((v / max) * (SPARK.len() - 1) as f64).round() as usize;
                SPARK[i.min(SPARK.len() - 1)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_as_people_write_them() {
        assert_eq!(number(1234.0), "1.2 k");
        assert_eq!(number(42.0), "42");
        assert_eq!(number(2.5), "2.5");
        assert_eq!(number(3_400_000.0), "3.4 M");
        assert_eq!(duration(Some(200.0)), "3 min 20 s");
        assert_eq!(duration(Some(0.25)), "250 ms");
        assert_eq!(duration(None), "never");
        assert_eq!(sparkline(&[0.0, 1.0, 2.0]), "▁▅█");
    }
}
