//! The WebSocket/SSE gateway against the `hub` binary, driven by real clients: Python's
//! `websockets` library, pyzmq for what `forward_to` sends on ZeroMQ, and raw HTTP for SSE.
//! Each scenario runs a Python script that prints one JSON object; the assertions are here.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

mod common;
use common::*;

/// Helpers every script gets: `ws(token=None, **kw)` connects to the hub's `/ws`, `send(ws,
/// obj)`, `recv(ws, timeout)` (a parsed frame, or None), `metrics()` (the metrics page).
const PRELUDE: &str = r##"
import asyncio, json, os, socket, sys, time, urllib.request
import websockets
PORT = int(os.environ["HUB_PORT"])
URL = f"ws://127.0.0.1:{PORT}/ws"

def ws(token=None, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return websockets.connect(URL, additional_headers=headers, **kw)

async def send(ws, obj):
    await ws.send(json.dumps(obj))

async def recv(ws, timeout=5.0):
    try:
        return json.loads(await asyncio.wait_for(ws.recv(), timeout))
    except asyncio.TimeoutError:
        return None

def metrics():
    return urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics").read().decode()

def sample(text, series):
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None
"##;

/// Runs `script` (after [`PRELUDE`]) against the hub on `port`; its last stdout line, as JSON.
fn run_python(py: &Path, port: u16, script: &str) -> Value {
    let out = Command::new(py)
        .args(["-c", &format!("{PRELUDE}\n{script}")])
        .env("HUB_PORT", port.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "script failed: {stderr}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// The hub binary on `config` (with `[http] listen` added), stderr kept in `dir/hub.log`.
fn start(dir: &Path, config: &str) -> (Proc, u16) {
    let port = free_port();
    let cfg = write_config(
        dir,
        &format!("[http]\nlisten = \"127.0.0.1:{port}\"\n{config}"),
    );
    let mut p = spawn(
        hub(&["run", "--config", cfg.to_str().unwrap()])
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("hub.log")).unwrap()),
    );
    wait_ready(port, &mut p);
    (p, port)
}

fn stop(mut p: Proc) {
    signal(&p, "-TERM");
    assert!(wait_exit(&mut p, Duration::from_secs(15)).success());
}

fn metric(port: u16, series: &str) -> f64 {
    sample(&http_get(port, "/metrics").unwrap().1, series).unwrap_or(0.0)
}

/// The hub protocol: subscribe, publish, ack; routing by pattern and by the token's patterns;
/// a client's publish reaches a hub consumer on the `gateway` backend and a ZeroMQ subscriber
/// (pyzmq) through `forward_to`; a read-only token's publish is refused.
#[test]
fn publishes_are_acked_routed_and_forwarded_to_zeromq() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let zport = free_port();
    let echo = dir.path().join("echo.jsonl");
    let reader_token = dir.path().join("reader.token");
    std::fs::write(&reader_token, "tok-Read-Secret-2\n").unwrap();
    let (hub, port) = start(
        dir.path(),
        &format!(
            r##"
[backends.z]
type = "zeromq"
subscribe = []
publish = "tcp://127.0.0.1:{zport}"
[consumers.store]
type = "echo"
backend = "gateway"
topics = ["org.gw.#"]
settings = {{ path = "{echo}" }}
[gateway]
forward_to = "z"
[gateway.tokens.app]
token = "tok-Gw-Secret-1"
subscribe = ["org.gw.#"]
publish = ["org.gw.#"]
[gateway.tokens.reader]
token = {{ file = "{reader}" }}
subscribe = ["org.gw.a.#"]
"##,
            echo = echo.display(),
            reader = reader_token.display(),
        ),
    );
    let result = run_python(
        &py,
        port,
        &format!(
            r##"
import zmq
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB)
sub.connect("tcp://127.0.0.1:{zport}")
sub.setsockopt(zmq.SUBSCRIBE, b"")
time.sleep(0.5)  # the subscription reaches the hub's PUB

async def main():
    out = {{}}
    async with ws("tok-Gw-Secret-1") as app, ws("tok-Read-Secret-2") as reader:
        await send(app, {{"op": "subscribe", "patterns": ["org.gw.a.*"], "ref": 1}})
        out["subscribed"] = await recv(app)
        await send(reader, {{"op": "subscribe", "patterns": ["#"], "ref": "r"}})
        await recv(reader)
        # The ack and the message itself may come in either order.
        await send(app, {{"op": "publish", "topic": "org.gw.a.one", "body": {{"n": 1}}, "headers": {{"h": "v", "x-hub-attempts": 7}}, "ref": 2}})
        first = [await recv(app), await recv(app)]
        out["ack1"] = next(f for f in first if f["type"] == "ack")
        out["app_got"] = [f for f in first if f["type"] != "ack"]
        await send(app, {{"op": "publish", "topic": "org.gw.b.two", "body": {{"n": 2}}, "ref": 3}})
        out["ack2"] = await recv(app)
        out["app_got"].append(await recv(app, 0.7))
        out["reader_got"] = [await recv(reader), await recv(reader, 0.7)]
        await send(reader, {{"op": "publish", "topic": "org.gw.a.x", "body": {{}}, "ref": 4}})
        out["reader_publish"] = await recv(reader)
        await send(app, {{"op": "ping", "ref": 5}})
        out["pong"] = await recv(app)
    zmq_got = []
    while sub.poll(2000):
        topic, body = sub.recv_multipart()
        zmq_got.append([topic.decode(), json.loads(body)])
        if len(zmq_got) == 2:
            break
    out["zmq"] = zmq_got
    print(json.dumps(out))
asyncio.run(main())
"##
        ),
    );
    assert_eq!(result["subscribed"]["type"], "subscribed", "{result}");
    assert_eq!(result["subscribed"]["patterns"][0], "org.gw.a.*");
    assert_eq!(result["subscribed"]["ref"], 1);
    let (ack1, ack2) = (&result["ack1"], &result["ack2"]);
    assert_eq!(ack1["type"], "ack", "{result}");
    assert_eq!(ack1["ref"], 2);
    assert_eq!(ack2["type"], "ack", "{result}");
    let (id1, id2) = (ack1["id"].as_str().unwrap(), ack2["id"].as_str().unwrap());
    // The publisher gets its own message only because it subscribed to it, once.
    let app = &result["app_got"];
    assert_eq!(app[0]["type"], "message");
    assert_eq!(app[0]["id"], id1);
    assert_eq!(app[0]["topic"], "org.gw.a.one");
    assert_eq!(app[0]["body"], serde_json::json!({"n": 1}));
    assert_eq!(app[0]["headers"]["h"], "v");
    // The hub's count of attempts is its own: a client cannot set it.
    assert!(app[0]["headers"].get("x-hub-attempts").is_none(), "{app}");
    assert!(
        app[1].is_null(),
        "org.gw.b.two is outside org.gw.a.*: {app}"
    );
    // The reader subscribed to everything, but its token allows org.gw.a.# only.
    let reader = &result["reader_got"];
    assert_eq!(reader[0]["id"], id1, "{reader}");
    assert!(reader[1].is_null(), "{reader}");
    assert_eq!(result["reader_publish"]["type"], "error");
    assert!(
        result["reader_publish"]["error"]
            .as_str()
            .unwrap()
            .contains("may not publish on \"org.gw.a.x\""),
        "{result}"
    );
    assert_eq!(
        result["pong"],
        serde_json::json!({"type": "pong", "ref": 5})
    );
    // Forwarded to ZeroMQ as fedmsg, with the ids the client was given.
    let zmq = result["zmq"].as_array().unwrap();
    assert_eq!(zmq.len(), 2, "{result}");
    assert_eq!(zmq[0][0], "org.gw.a.one");
    assert_eq!(zmq[0][1]["msg_id"], id1);
    assert_eq!(zmq[0][1]["msg"], serde_json::json!({"n": 1}));
    assert_eq!(zmq[1][1]["msg_id"], id2);
    // The hub's own consumer on the gateway backend stored both.
    wait_until("the consumer stored both", Duration::from_secs(5), || {
        std::fs::read_to_string(&echo).is_ok_and(|t| t.contains(id1) && t.contains(id2))
    });
    assert_eq!(
        metric(
            port,
            r#"hub_gateway_published_messages_total{client="app"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            port,
            r#"hub_gateway_rejected_publishes_total{client="reader",reason="not_allowed"}"#
        ),
        1.0
    );
    stop(hub);
    let log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap();
    for secret in ["tok-Gw-Secret-1", "tok-Read-Secret-2"] {
        assert!(!log.contains(secret), "a token in the log");
    }
}

/// Moksha's livesocket: `__topic_subscribe__` (a topic, `*` forms translated) and frames in
/// Moksha's shape, `{"topic", "body"}` only; anonymous access is read-only.
#[test]
fn moksha_clients_subscribe_and_get_mokshas_frames() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hub, port) = start(
        dir.path(),
        r##"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.moksha.tick"
rate = 20.0
[producers.other]
type = "ticker"
[producers.other.settings]
topic = "com.elsewhere.tick"
rate = 20.0
[gateway]
anonymous_subscribe = true
[gateway.tokens.page]
token = "tok-Moksha-5"
subscribe = ["#"]
publish = ["org.moksha.page.#"]
"##,
    );
    let result = run_python(
        &py,
        port,
        r##"
async def main():
    out = {}
    async with ws() as exact, ws() as star, ws("tok-Moksha-5") as page:
        await send(exact, {"topic": "__topic_subscribe__", "body": "org.moksha.tick"})
        await send(star, {"topic": "__topic_subscribe__", "body": "org.moksha.*"})
        out["exact"] = [await recv(exact) for _ in range(3)]
        out["star"] = [await recv(star) for _ in range(3)]
        # Moksha's client2server publish: no reply, the message comes back to a subscriber.
        await send(page, {"topic": "__topic_subscribe__", "body": "org.moksha.page.*"})
        await asyncio.sleep(0.2)
        await send(page, {"topic": "org.moksha.page.hello", "body": {"a": 1}})
        out["page"] = await recv(page)
        # Anonymous clients are read-only: an error frame (Moksha's clients ignore it).
        await send(exact, {"topic": "org.moksha.x", "body": {}})
        while True:
            f = await recv(exact)
            if f is None or f.get("type") == "error":
                out["publish"] = f
                break
    print(json.dumps(out))
asyncio.run(main())
"##,
    );
    for key in ["exact", "star"] {
        for f in result[key].as_array().unwrap() {
            let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["body", "topic"], "Moksha's shape: {f}");
            assert_eq!(f["topic"], "org.moksha.tick");
            // Moksha's body was the fedmsg envelope: the message under `msg`.
            let body = &f["body"];
            assert_eq!(body["topic"], "org.moksha.tick");
            assert!(body["msg"]["seq"].is_u64(), "{f}");
            assert!(
                body["msg_id"].is_string() && body["timestamp"].is_f64(),
                "{f}"
            );
        }
    }
    let page = &result["page"];
    assert_eq!(page["topic"], "org.moksha.page.hello", "{result}");
    assert_eq!(page["body"]["msg"], serde_json::json!({"a": 1}));
    assert!(
        result["publish"]["error"]
            .as_str()
            .unwrap()
            .contains("\"anonymous\" may not publish"),
        "{result}"
    );
    stop(hub);
}

/// SSE: events carry the message id; a reconnect with `Last-Event-ID` inside the replay
/// buffer resumes with nothing lost or repeated; one beyond it (or unknown) gets a `gap`.
#[test]
fn sse_resumes_from_last_event_id_and_reports_a_gap_beyond_the_buffer() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hub, port) = start(
        dir.path(),
        r##"
[backends.mem]
type = "memory"
[producers.tick]
type = "ticker"
[producers.tick.settings]
topic = "org.sse.tick"
rate = 50.0
[gateway]
replay_buffer = 20
[gateway.tokens.feed]
token = "tok-Sse-3"
subscribe = ["org.sse.#"]
"##,
    );
    let result = run_python(
        &py,
        port,
        r##"
import http.client

def events(n, last_id=None, token_in_query=True):
    """The first n events (type, id, data) of a fresh /events stream."""
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    headers = {} if token_in_query else {"Authorization": "Bearer tok-Sse-3"}
    if last_id:
        headers["Last-Event-ID"] = last_id
    path = "/events?topic=org.sse.%23" + ("&token=tok-Sse-3" if token_in_query else "")
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    assert r.status == 200, (r.status, r.read())
    assert r.getheader("content-type") == "text/event-stream"
    out, ev = [], {}
    while len(out) < n:
        line = r.fp.readline().decode().rstrip("\n")
        if line == "":
            if "data" in ev:
                out.append(ev)
            ev = {}
            continue
        if line.startswith(":") or line.startswith("retry:"):
            continue
        k, _, v = line.partition(": ")
        ev[k] = v
    conn.close()
    return out

first = events(10, token_in_query=False)
seqs = [json.loads(e["data"])["body"]["seq"] for e in first]
ids_match = all(e["id"] == json.loads(e["data"])["id"] for e in first)
time.sleep(0.2)                      # about 10 messages: inside the buffer of 20
resumed = events(15, first[-1]["id"])
resumed_seqs = [json.loads(e["data"])["body"]["seq"] for e in resumed]
time.sleep(1.0)                      # about 50 messages: beyond it
gap = events(2, resumed[-1]["id"])
unknown = events(1, "no-such-id")
print(json.dumps({"seqs": seqs, "ids_match": ids_match, "resumed": resumed_seqs,
                  "events": [e.get("event") for e in first + resumed],
                  "gap": gap, "unknown": unknown}))
"##,
    );
    let seqs: Vec<u64> = serde_json::from_value(result["seqs"].clone()).unwrap();
    let resumed: Vec<u64> = serde_json::from_value(result["resumed"].clone()).unwrap();
    assert!(
        result["ids_match"].as_bool().unwrap(),
        "event id = message id"
    );
    assert!(
        result["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e == "message")
    );
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    // Nothing lost, nothing twice: the resumed stream starts right after the last event seen.
    let expect: Vec<u64> = (seqs[9] + 1..seqs[9] + 16).collect();
    assert_eq!(resumed, expect, "resumed after {}", seqs[9]);
    let gap = &result["gap"][0];
    assert_eq!(gap["event"], "gap", "{result}");
    let data: Value = serde_json::from_str(gap["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["replay_buffer"], 20);
    assert_eq!(result["gap"][1]["event"], "message", "live after the gap");
    assert_eq!(result["unknown"][0]["event"], "gap");
    stop(hub);
}

/// A client that reads nothing, over WebSocket and over SSE: its drops are counted and it is
/// disconnected after `slow_client_timeout`; a slow reader is told what it missed (`dropped` frames); a fast
/// client and the hub's own consumer meanwhile miss nothing.
#[test]
fn a_stuck_client_is_dropped_and_disconnected_while_others_keep_full_speed() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let echo = dir.path().join("echo.jsonl");
    let (hub, port) = start(
        dir.path(),
        &format!(
            r##"
[backends.mem]
type = "memory"
[producers.flood]
type = "ticker"
[producers.flood.settings]
topic = "org.load.tick"
rate = 2000.0
body = {{ pad = "{pad}" }}
[consumers.store]
type = "echo"
topics = ["org.load.#"]
queue_capacity = 100000
settings = {{ path = "{echo}" }}
[gateway]
client_queue = 256
slow_client_timeout = "4s"
[gateway.tokens.stuck]
token = "tok-Stuck"
subscribe = ["#"]
[gateway.tokens.slow]
token = "tok-Slow"
subscribe = ["#"]
[gateway.tokens.fast]
token = "tok-Fast"
subscribe = ["#"]
"##,
            pad = "x".repeat(2000),
            echo = echo.display()
        ),
    );
    let result = run_python(
        &py,
        port,
        r##"
def small_socket():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", PORT))
    return s

async def main():
    out = {}
    # An SSE client that reads its response's head and nothing more.
    sse = small_socket()
    sse.sendall(("GET /events?topic=org.load.%23 HTTP/1.1\r\nHost: 127.0.0.1:" + str(PORT) +
                 "\r\nAuthorization: Bearer tok-Stuck\r\n\r\n").encode())
    out["sse_head"] = sse.recv(12).decode()
    # max_queue=1: the library stops reading its socket once one frame waits unread.
    async with ws("tok-Stuck", sock=small_socket(), max_queue=1) as stuck, \
               ws("tok-Slow") as slow, \
               ws("tok-Fast", max_queue=None) as fast:
        for c in (stuck, slow, fast):
            await send(c, {"op": "subscribe", "patterns": ["org.load.#"]})
        await recv(fast)
        await recv(slow)
        fast_seqs, slow_dropped, slow_frames = [], 0, 0
        async def read_fast():
            while len(fast_seqs) < 12000:
                f = await recv(fast, 10)
                if f is None:
                    return
                if f.get("type") == "message":
                    fast_seqs.append(f["body"]["seq"])
                else:
                    fast_seqs.append(("control", f))
        async def read_slow():
            # Reads a little, stops reading for 1.5 s (its queue overflows meanwhile, but its
            # socket is not stuck for slow_client_timeout), then reads on.
            nonlocal slow_dropped, slow_frames
            for _ in range(10):
                await recv(slow)
            await asyncio.sleep(1.5)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                f = await recv(slow, 1)
                if f is None:
                    continue
                slow_frames += 1
                if f.get("type") == "dropped":
                    slow_dropped += f["count"]
        await asyncio.gather(read_fast(), read_slow())
        out["fast_controls"] = [s for s in fast_seqs if not isinstance(s, int)]
        seqs = [s for s in fast_seqs if isinstance(s, int)]
        out["fast_n"] = len(seqs)
        out["fast_gaps"] = sum(1 for a, b in zip(seqs, seqs[1:]) if b != a + 1)
        out["slow_dropped_told"] = slow_dropped
        out["slow_frames"] = slow_frames
        # The stuck client: closed by the hub by now (its close frame may never arrive).
        # Both stuck clients, the WebSocket and the SSE one.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (sample(metrics(), 'hub_gateway_disconnects_total{reason="slow"}') or 0) < 2:
            await asyncio.sleep(0.2)
        out["disconnects_slow"] = sample(metrics(), 'hub_gateway_disconnects_total{reason="slow"}')
    # The SSE client's connection is closed: reading on reaches its end (a live stream would
    # go on for ever).
    sse.settimeout(0.5)
    out["sse_closed"] = False
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            data = sse.recv(1 << 20)
        except socket.timeout:
            continue
        except OSError:
            out["sse_closed"] = True
            break
        if not data:
            out["sse_closed"] = True
            break
    print(json.dumps(out))
asyncio.run(main())
"##,
    );
    assert_eq!(result["fast_controls"], serde_json::json!([]), "{result}");
    assert!(result["fast_n"].as_u64().unwrap() >= 10_000, "{result}");
    assert_eq!(
        result["fast_gaps"], 0,
        "the fast client missed nothing: {result}"
    );
    assert!(
        result["slow_dropped_told"].as_u64().unwrap() > 0,
        "the slow reader is told what it missed: {result}"
    );
    assert_eq!(result["sse_head"], "HTTP/1.1 200", "{result}");
    assert!(
        result["disconnects_slow"].as_f64().unwrap() >= 2.0,
        "the stuck WebSocket and SSE clients were disconnected as slow: {result}"
    );
    assert_eq!(result["sse_closed"], true, "{result}");
    let dropped = |c: &str| {
        metric(
            port,
            &format!("hub_gateway_dropped_messages_total{{client=\"{c}\"}}"),
        )
    };
    assert!(dropped("stuck") > 0.0);
    assert!(dropped("slow") >= result["slow_dropped_told"].as_f64().unwrap());
    assert_eq!(dropped("fast"), 0.0);
    // The hub's own consumer dropped nothing and kept up.
    let m = http_get(port, "/metrics").unwrap().1;
    assert_eq!(
        sample(
            &m,
            r#"hub_consumer_dropped_messages_total{consumer="store",reason="queue_full"}"#
        ),
        Some(0.0)
    );
    assert_balanced(&m, "store");
    stop(hub);
}

/// Tokens: none, wrong, in the header and in the query; an origin from another site refused,
/// a listed one let in; the token values appear in no log line.
#[test]
fn tokens_and_origins_are_checked_and_never_logged() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hub, port) = start(
        dir.path(),
        r##"
[backends.mem]
type = "memory"
[gateway]
allowed_origins = ["https://app.example.org"]
[gateway.tokens.app]
token = "tok-Auth-Secret-9"
subscribe = ["#"]
"##,
    );
    let result = run_python(
        &py,
        port,
        r##"
async def status(**kw):
    try:
        async with websockets.connect(URL, **kw) as c:
            await send(c, {"op": "ping"})
            return (await recv(c))["type"]
    except websockets.exceptions.InvalidStatus as e:
        return e.response.status_code

async def main():
    out = {
        "none": await status(),
        "wrong": await status(additional_headers={"Authorization": "Bearer nope"}),
        "header": await status(additional_headers={"Authorization": "Bearer tok-Auth-Secret-9"}),
        "evil_origin": await status(additional_headers={"Authorization": "Bearer tok-Auth-Secret-9"}, origin="https://evil.example"),
        "good_origin": await status(additional_headers={"Authorization": "Bearer tok-Auth-Secret-9"}, origin="https://app.example.org"),
    }
    async with websockets.connect(URL + "?token=tok-Auth-Secret-9") as c:
        await send(c, {"op": "ping"})
        out["query"] = (await recv(c))["type"]
    print(json.dumps(out))
asyncio.run(main())
"##,
    );
    assert_eq!(result["none"], 401, "{result}");
    assert_eq!(result["wrong"], 401, "{result}");
    assert_eq!(result["header"], "pong", "{result}");
    assert_eq!(result["query"], "pong", "{result}");
    assert_eq!(result["evil_origin"], 403, "{result}");
    assert_eq!(result["good_origin"], "pong", "{result}");
    stop(hub);
    let log = std::fs::read_to_string(dir.path().join("hub.log")).unwrap();
    assert!(!log.contains("tok-Auth-Secret-9"), "the token in the log");
}

/// Each kind of bad frame is answered with an error frame naming the problem and counted, the
/// connection kept; too many close it (1008); a frame past 4 × max_frame_bytes closes it too.
#[test]
fn malformed_frames_get_errors_and_repeated_abuse_closes_the_connection() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hub, port) = start(
        dir.path(),
        r##"
[backends.mem]
type = "memory"
[gateway]
max_frame_bytes = 1024
max_bad_frames = 8
[gateway.tokens.app]
token = "tok-Bad-4"
subscribe = ["#"]
publish = ["#"]
"##,
    );
    let result = run_python(
        &py,
        port,
        r##"
async def main():
    out = {}
    async with ws("tok-Bad-4") as c:
        for name, frame in [
            ("not_json", "this is not json"),
            ("not_object", "[1, 2]"),
            ("unknown_op", json.dumps({"op": "dance"})),
            ("body_not_object", json.dumps({"op": "publish", "topic": "org.x", "body": [1]})),
            ("wildcard_topic", json.dumps({"op": "publish", "topic": "org.*", "body": {}})),
            ("bad_pattern", json.dumps({"op": "subscribe", "patterns": ["org..x"]})),
            ("too_large", json.dumps({"op": "ping", "pad": "x" * 2000})),
            ("binary", b"\x00\x01"),
        ]:
            await c.send(frame)
            out[name] = await recv(c)
        # 5 frames of 60 patterns (each frame under max_frame_bytes): the fifth passes 256.
        for k in range(5):
            await send(c, {"op": "subscribe", "patterns": [f"p{k}x{i}" for i in range(60)], "ref": "many"})
            out["too_many"] = await recv(c)
        await send(c, {"op": "ping", "ref": "still here"})
        out["after"] = await recv(c)
    async with ws("tok-Bad-4") as c:
        for _ in range(9):
            await c.send("nope")
        try:
            while True:
                await asyncio.wait_for(c.recv(), 5)
        except websockets.exceptions.ConnectionClosed as e:
            out["abuse_close"] = [e.rcvd.code if e.rcvd else None, e.rcvd.reason if e.rcvd else None]
    async with ws("tok-Bad-4") as c:
        await c.send(json.dumps({"op": "ping", "pad": "x" * 5000}))
        try:
            while True:
                await asyncio.wait_for(c.recv(), 5)
        except websockets.exceptions.ConnectionClosed as e:
            out["huge_close"] = e.rcvd.code if e.rcvd else None
    print(json.dumps(out))
asyncio.run(main())
"##,
    );
    let error = |k: &str| -> String {
        let f = &result[k];
        assert_eq!(f["type"], "error", "{k}: {result}");
        f["error"].as_str().unwrap().to_owned()
    };
    assert!(error("not_json").starts_with("not JSON"));
    assert!(error("not_object").contains("JSON object"));
    assert!(error("unknown_op").contains("unknown op \"dance\""));
    assert!(error("body_not_object").contains("`body` must be a JSON object"));
    assert!(error("wildcard_topic").contains("cannot hold wildcards"));
    assert!(error("bad_pattern").contains("org..x"));
    assert!(error("too_large").contains("over max_frame_bytes (1024)"));
    assert!(error("binary").contains("binary frames"));
    assert_eq!(result["too_many"]["ref"], "many");
    assert!(
        error("too_many").contains("at most 256 subscriptions"),
        "{result}"
    );
    assert_eq!(
        result["after"],
        serde_json::json!({"type": "pong", "ref": "still here"}),
        "the connection was kept"
    );
    assert_eq!(result["abuse_close"][0], 1008, "{result}");
    assert!(
        result["abuse_close"][1]
            .as_str()
            .unwrap()
            .contains("too many bad frames")
    );
    assert_eq!(result["huge_close"], 1009, "{result}");
    for (reason, n) in [
        ("not_json", 11.0),
        ("unknown_op", 1.0),
        ("invalid", 3.0),
        ("too_large", 2.0),
        ("binary", 1.0),
    ] {
        assert_eq!(
            metric(
                port,
                &format!("hub_gateway_bad_frames_total{{reason=\"{reason}\"}}")
            ),
            n,
            "{reason}"
        );
    }
    assert_eq!(
        metric(port, r#"hub_gateway_disconnects_total{reason="abuse"}"#),
        1.0
    );
    assert_eq!(
        metric(
            port,
            r#"hub_gateway_rejected_publishes_total{client="app",reason="invalid"}"#
        ),
        2.0,
        "the two malformed publishes"
    );
    stop(hub);
}

/// `examples/gateway/client.py`, as its README runs it: subscribes, publishes, prints the ack
/// and the message.
#[test]
fn the_example_client_subscribes_and_publishes() {
    let Some(py) = interop_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (hub, port) = start(
        dir.path(),
        r##"
[backends.local]
type = "memory"
[gateway]
[gateway.tokens.demo]
token = "demo-token"
subscribe = ["#"]
publish = ["org.example.#"]
"##,
    );
    let out = Command::new(py)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/gateway/client.py"
        ))
        .args([
            &format!("ws://127.0.0.1:{port}/ws"),
            "--token",
            "demo-token",
            "--subscribe",
            "org.example.#",
            "--publish",
            "org.example.hello",
            r#"{"hi": 1}"#,
            "--count",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["subscribed"], serde_json::json!(["org.example.#"]));
    // The ack and the message itself, in either order.
    let ack = lines.iter().find(|l| l["published"].is_string()).unwrap();
    let msg = lines.iter().find(|l| l["topic"].is_string()).unwrap();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(msg["id"], ack["published"]);
    assert_eq!(msg["topic"], "org.example.hello");
    assert_eq!(msg["body"], serde_json::json!({"hi": 1}));
    stop(hub);
}
