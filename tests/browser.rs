//! The status page in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/test`) driven over WebDriver (fantoccini), against
//! the `hub` binary with a slow and a fast consumer. A screenshot is saved as
//! `target/status-page.png` (and at a phone's width, `target/status-page-phone.png`) for people
//! to look at.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};

mod common;
use common::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// chromedriver on a free port, stopped when dropped; `None` (skipped) outside CI when
/// Chromium is not installed.
fn chromedriver() -> Option<(Proc, u16)> {
    if !std::path::Path::new(CHROMEDRIVER).exists() || !std::path::Path::new(CHROMIUM).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "no {CHROMIUM} or {CHROMEDRIVER}: scripts/test installs chromium and chromium-driver"
        );
        eprintln!("skipped: no Chromium (run scripts/test to install it)");
        return None;
    }
    let port = free_port();
    let p = spawn(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((p, port))
}

async fn browser(driver_port: u16) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1000"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{driver_port}"))
        .await
        .expect("a WebDriver session with headless Chromium")
}

/// The text of the first element matching `css`, retried while the page re-renders (it
/// redraws every second, so an element found may be gone by the time it is read).
async fn text(c: &Client, css: &str) -> String {
    for _ in 0..50 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && let Ok(t) = e.text().await
        {
            return t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {css} on the page");
}

async fn click(c: &Client, css: &str) {
    for _ in 0..50 {
        if let Ok(e) = c.find(Locator::Css(css)).await
            && e.click().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot click {css}");
}

/// A number as the page writes it ("1.2 k" → 1200).
fn number(s: &str) -> f64 {
    let s = s.trim();
    let (n, mult) = match s.rsplit_once(' ') {
        Some((n, "k")) => (n, 1e3),
        Some((n, "M")) => (n, 1e6),
        _ => (s, 1.0),
    };
    n.parse::<f64>()
        .unwrap_or_else(|_| panic!("not a number: {s:?}"))
        * mult
}

async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "not within 20 s: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_backlogs_and_pauses_with_the_token() {
    let Some((_driver, driver_port)) = chromedriver() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rejecter = rejecting_script(dir.path());
    let cfg = write_config(
        dir.path(),
        &format!(
            r#"
[hub]
name = "pagetest"
shutdown_grace = "1s"
[http]
listen = "127.0.0.1:{port}"
admin_token = "tok-Page-42"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.page.tick"
rate = 100.0
[consumers.fast]
type = "delay"
topics = ["org.page.#"]
queue_capacity = 100000
settings = {{ delay = "0ms" }}
[consumers.slow]
type = "delay"
topics = ["org.page.#"]
queue_capacity = 100000
settings = {{ delay = "40ms" }}
[producers.rare]
type = "ticker"
[producers.rare.settings]
topic = "org.rare.tick"
rate = 5.0
[consumers.picky]
type = "exec"
topics = ["org.rare.#"]
dead_letter = {{ file = "{dead}" }}
settings = {{ command = ["python3", "{rejecter}"] }}
"#,
            dead = dir.path().join("dead.jsonl").display(),
            rejecter = rejecter.display(),
        ),
    );
    let mut hub_proc = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    wait_ready(port, &mut hub_proc);
    let c = browser(driver_port).await;
    c.goto(&format!("http://127.0.0.1:{port}/")).await.unwrap();
    let slow_backlog = r#"section[data-consumer="slow"] [data-field="backlog"]"#;
    let fast_backlog = r#"section[data-consumer="fast"] [data-field="backlog"]"#;
    let fast_ok = r#"section[data-consumer="fast"] [data-field="ok"]"#;
    let fast_state = r#"section[data-consumer="fast"] [data-state]"#;

    // The slow consumer falls behind, the fast one does not; the slow one's chart rises.
    until("the slow backlog shows", async || {
        number(&text(&c, slow_backlog).await) > 20.0
    })
    .await;
    let first = number(&text(&c, slow_backlog).await);
    until("the slow backlog rises", async || {
        number(&text(&c, slow_backlog).await) > first + 20.0
    })
    .await;
    // "Does not fall behind": a sample may catch the message that just came (100 a second on a
    // loaded 2-core machine, 0 ms each), never a backlog that grows like the slow one's.
    let fast_now = number(&text(&c, fast_backlog).await);
    assert!(
        fast_now < 5.0,
        "the fast consumer keeps up: backlog {fast_now}"
    );
    // The chart: several points, the last above the first (it rises); the fast one's stays 0.
    let chart = async |consumer: &str| -> Option<(f64, f64, f64)> {
        let css = format!(r#"section[data-consumer="{consumer}"] svg[data-field="backlog"]"#);
        let svg = c.find(Locator::Css(&css)).await.ok()?;
        let mut out = [0.0; 3];
        for (k, name) in ["data-points", "data-first", "data-last"]
            .iter()
            .enumerate()
        {
            out[k] = svg.attr(name).await.ok().flatten()?.parse().ok()?;
        }
        Some((out[0], out[1], out[2]))
    };
    until(
        "the slow backlog chart rises",
        async || matches!(chart("slow").await, Some((n, first, last)) if n >= 3.0 && last > first),
    )
    .await;
    let fast_chart = chart("fast").await.unwrap();
    assert!(
        fast_chart.1 < 5.0 && fast_chart.2 < 5.0,
        "the fast consumer's chart stays near 0 while the slow one's rises: {fast_chart:?}"
    );

    // A consumer with dead letters: its button opens what `hub dead` offers for them.
    click(&c, r#"section[data-consumer="picky"] button[data-dead]"#).await;
    until("the dead letters show", async || {
        let t = text(&c, r#"section[data-consumer="picky"] .dead"#).await;
        t.contains("hub dead requeue picky") && t.contains("not for us") && t.contains("dead.jsonl")
    })
    .await;

    // Without the token, pause is refused and says why.
    click(
        &c,
        r#"section[data-consumer="fast"] button[data-action="pause"]"#,
    )
    .await;
    until("the refusal shows", async || {
        text(&c, "#action").await.contains("401")
    })
    .await;
    assert_eq!(text(&c, fast_state).await, "running");

    // With the token: paused, the count stops; resumed, it goes on.
    let token = c.find(Locator::Css("#token")).await.unwrap();
    token.send_keys("tok-Page-42").await.unwrap();
    click(
        &c,
        r#"section[data-consumer="fast"] button[data-action="pause"]"#,
    )
    .await;
    until("paused", async || text(&c, fast_state).await == "paused").await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let a = number(&text(&c, fast_ok).await);
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let b = number(&text(&c, fast_ok).await);
    assert_eq!(a, b, "a paused consumer's count stops");
    let png = c.screenshot().await.unwrap();
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    std::fs::write(&shot, png).unwrap();
    click(
        &c,
        r#"section[data-consumer="fast"] button[data-action="resume"]"#,
    )
    .await;
    until("resumed and counting", async || {
        text(&c, fast_state).await == "running" && number(&text(&c, fast_ok).await) > b
    })
    .await;
    // A phone's width: nothing wider than the screen.
    c.set_window_size(390, 844).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let widths = c
        .execute(
            "return [document.documentElement.scrollWidth, window.innerWidth];",
            vec![],
        )
        .await
        .unwrap();
    let (scroll, inner) = (widths[0].as_f64().unwrap(), widths[1].as_f64().unwrap());
    assert!(scroll <= inner, "wider than a phone: {scroll} > {inner}");
    let phone =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page-phone.png");
    std::fs::write(&phone, c.screenshot().await.unwrap()).unwrap();
    c.close().await.unwrap();
    signal(&hub_proc, "-TERM");
    assert!(wait_exit(&mut hub_proc, Duration::from_secs(15)).success());
    eprintln!("screenshot: {}", shot.display());
}
