//! Per-message mode with real programs (`/bin/sh` scripts in a temp dir), through the test kit.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use hub_core::{ConsumerOptions, Message, Resources, Verdict, json};
use hub_exec::ExecConfig;
use hub_testkit::{Failure, TestHub, build_consumer};

/// Writes an executable `sh` script and returns its path.
fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn settings(command: &str, out: &Path) -> String {
    format!(
        "mode = \"per-message\"\ncommand = [\"{command}\"]\nenv = {{ OUT = \"{}\" }}\n",
        out.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_are_verdicts_and_the_program_sees_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "verdict.sh",
        r#"cat > "$OUT/$HUB_MESSAGE_ID.json"
echo "$HUB_TOPIC $HUB_ATTEMPT $HUB_CONSUMER" > "$OUT/$HUB_MESSAGE_ID.env"
case "$HUB_TOPIC" in
  a.ok) exit 0 ;;
  a.later) echo "database down" >&2; exit 75 ;;
  *) echo "first line" >&2; echo "no such build" >&2; exit 3 ;;
esac"#,
    );
    let hub = TestHub::builder()
        .consumer_from_settings::<ExecConfig>("run", &["a.#"], &settings(&prog, dir.path()))
        .start()
        .await;
    let ok = Message::builder("a.ok", json!({"n": 1})).id("m-ok").build();
    assert_eq!(hub.send_message(ok).await, Verdict::Ack);
    let later = Message::builder("a.later", json!({}))
        .id("m-later")
        .header("x-hub-attempts", 3)
        .build();
    let v = hub.send_message(later).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("exit 75 (retry): database down")),
        "{v:?}"
    );
    let bad = Message::builder("a.bad", json!({})).id("m-bad").build();
    let v = hub.send_message(bad).await;
    assert!(
        matches!(&v, Verdict::Reject { reason } if reason.contains("exit 3: no such build")),
        "{v:?}"
    );
    let kinds: Vec<_> = hub.handled("run").iter().map(|h| h.failure()).collect();
    assert_eq!(
        kinds,
        vec![None, Some(Failure::Transient), Some(Failure::Invalid)]
    );
    hub.shutdown().await;

    // The message on stdin, as one JSON object; its topic, attempt and consumer in the environment.
    let seen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("m-ok.json")).unwrap())
            .unwrap();
    assert_eq!(seen["id"], "m-ok");
    assert_eq!(seen["topic"], "a.ok");
    assert_eq!(seen["body"], json!({"n": 1}));
    let env = |id: &str| std::fs::read_to_string(dir.path().join(format!("{id}.env"))).unwrap();
    assert_eq!(env("m-ok").trim(), "a.ok 1 run");
    assert_eq!(env("m-later").trim(), "a.later 3 run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeout_kills_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let prog = script(
        dir.path(),
        "hang.sh",
        r#"echo $$ > "$OUT/pid"; exec sleep 30"#,
    );
    let options = ConsumerOptions {
        timeout: Some(Duration::from_millis(300)),
        ..ConsumerOptions::default()
    };
    let consumer =
        build_consumer::<ExecConfig>(&settings(&prog, dir.path()), &Resources::new()).unwrap();
    let hub = TestHub::builder()
        .consumer_with("hang", &["#"], options, consumer)
        .start()
        .await;
    let v = hub.send("a.b", json!({})).await;
    assert!(
        matches!(&v, Verdict::Retry { reason, .. } if reason.contains("timed out")),
        "{v:?}"
    );
    assert_eq!(hub.handled("hang")[0].failure(), Some(Failure::Timeout));
    let pid = std::fs::read_to_string(dir.path().join("pid")).unwrap();
    let alive = || {
        std::process::Command::new("kill")
            .args(["-0", pid.trim()])
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success()
    };
    for _ in 0..100 {
        if !alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(), "the program was killed with its call");
    hub.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_n_runs_n_programs_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Each run waits (up to 5 s) until four runs have started: only four at once can all pass.
    let prog = script(
        dir.path(),
        "meet.sh",
        r#"touch "$OUT/started.$HUB_MESSAGE_ID"
i=0
while [ "$(ls "$OUT" | grep -c started)" -lt 4 ]; do
  i=$((i+1)); [ $i -gt 100 ] && exit 1
  sleep 0.05
done"#,
    );
    let options = ConsumerOptions {
        concurrency: 4,
        ..ConsumerOptions::default()
    };
    let consumer =
        build_consumer::<ExecConfig>(&settings(&prog, dir.path()), &Resources::new()).unwrap();
    let hub = TestHub::builder()
        .consumer_with("meet", &["#"], options, consumer)
        .start()
        .await;
    let (a, b, c, d) = tokio::join!(
        hub.send("a.1", json!({})),
        hub.send("a.2", json!({})),
        hub.send("a.3", json!({})),
        hub.send("a.4", json!({}))
    );
    assert_eq!(
        [a, b, c, d],
        [Verdict::Ack, Verdict::Ack, Verdict::Ack, Verdict::Ack]
    );
    hub.shutdown().await;
}

#[test]
fn settings_that_cannot_work_are_refused_when_built() {
    let err = |toml: &str| {
        build_consumer::<ExecConfig>(toml, &Resources::new())
            .err()
            .unwrap()
    };
    let e = err("mode = \"per-message\"\ncommand = [\"no-such-program-here\"]");
    assert!(
        e.contains("\"no-such-program-here\" is not an executable file in PATH"),
        "{e}"
    );
    let e = err("mode = \"per-message\"\ncommand = []");
    assert!(e.contains("command: give the program"), "{e}");
    let e = err("command = [\"sh\"]\nmax_line_bytes = 0");
    assert!(e.contains("max_line_bytes: must be at least 1"), "{e}");
    let e = err("mode = \"per-mesage\"\ncommand = [\"sh\"]");
    assert!(e.contains("did you mean `per-message`"), "{e}");
    assert!(
        build_consumer::<ExecConfig>(
            "mode = \"per-message\"\ncommand = [\"sh\", \"-c\", \"true\"]",
            &Resources::new()
        )
        .is_ok()
    );
}

/// The shell example in `examples/exec` (the README points to it), run by the test kit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_example_handles_messages_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/exec/on-build.sh"
    );
    let log = dir.path().join("builds.log");
    let settings = format!(
        "mode = \"per-message\"\ncommand = [\"{script}\"]\nenv = {{ LOG = \"{}\" }}\n",
        log.display()
    );
    let hub = TestHub::builder()
        .consumer_from_settings::<ExecConfig>("on_build", &["#"], &settings)
        .start()
        .await;
    let build = Message::builder("org.example.build.done", json!({"n": 1}))
        .id("b-1")
        .build();
    assert_eq!(hub.send_message(build).await, Verdict::Ack);
    let empty = Message::builder("org.example.build.done", serde_json::Value::Null)
        .id("b-2")
        .build();
    let v = hub.send_message(empty).await;
    assert!(
        matches!(&v, Verdict::Reject { reason } if reason.contains("exit 2: no body in message b-2")),
        "{v:?}"
    );
    hub.shutdown().await;
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "org.example.build.done b-1 attempt=1\n"
    );
}
