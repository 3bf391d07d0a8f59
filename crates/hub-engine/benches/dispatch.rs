//! Dispatch throughput and topic routing. Run: `cargo bench -p hub-engine`.
//!
//! Deliveries go through the `Sink` a backend is given, and the hub's own Prometheus registry
//! records, so every metric update the hub does in production is paid for here too.
#![allow(missing_docs, clippy::unwrap_used)]

/// The allocator the `hub` binary ships with, so the figures are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hub_core::{Delivery, Message, Pattern, PatternSet, Sink, TopicWords};
use hub_engine::MetricsHandle;
use serde_json::json;
use tokio::sync::mpsc;

const BATCH: u64 = 100_000;

fn hub(
    rt: &tokio::runtime::Runtime,
    consumers: usize,
) -> (Sink, Vec<Arc<AtomicU64>>, MetricsHandle) {
    let _guard = rt.enter();
    common::hub(consumers)
}

async fn wait_all(counts: &[Arc<AtomicU64>], target: u64) {
    while counts.iter().any(|c| c.load(Ordering::Relaxed) < target) {
        tokio::task::yield_now().await;
    }
}

/// One batch to deliver: clones of the distinct messages (reference counts only), or the same
/// message `BATCH` times.
fn batch(distinct: &[Message], same: &Message, use_same: bool) -> Vec<Message> {
    if use_same {
        vec![same.clone(); distinct.len()]
    } else {
        distinct.to_vec()
    }
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let msg = Message::new(
        "org.fedoraproject.prod.buildsys.build.state.change",
        json!({"build_id": 1, "name": "kernel", "owner": "someone"}),
    );
    // Distinct messages, as a bus delivers them (each its own allocation and reference count),
    // cycling through 200 topics (a bus carries a few hundred), built before the clock starts;
    // and, for comparison, one message delivered 100 000 times (every consumer then drops the
    // same reference count: a worst case of cache-line sharing).
    let apps = ["buildsys", "bodhi", "copr", "pagure", "koschei"];
    let topics: Vec<String> = (0..200)
        .map(|i| {
            format!(
                "org.fedoraproject.prod.{}.event{}.state.change",
                apps[i % apps.len()],
                i / apps.len()
            )
        })
        .collect();
    let distinct: Vec<Message> = (0..BATCH)
        .map(|i| {
            Message::new(
                topics[(i % 200) as usize].as_str(),
                json!({"build_id": i, "name": "kernel", "owner": "someone"}),
            )
        })
        .collect();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(8));
    for (n, same) in [(1usize, false), (4, false), (4, true)] {
        let (sink, counts, _metrics) = hub(&rt, n);
        let mut sent = 0u64;
        let name = if same {
            format!("hub_to_{n}_consumers_same_message")
        } else {
            format!("hub_to_{n}_consumers")
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || batch(&distinct, &msg, same),
                    |batch| {
                        rt.block_on(async {
                            for m in batch {
                                sink.deliver(Delivery::new(m)).await.unwrap();
                            }
                            sent += BATCH;
                            wait_all(&counts, sent).await;
                        });
                    },
                )
            });
        });
    }
    for same in [false, true] {
        let name = if same {
            "raw_mpsc_fan_out_to_4_same_message"
        } else {
            "raw_mpsc_fan_out_to_4"
        };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                timed(
                    iters,
                    || batch(&distinct, &msg, same),
                    |batch| {
                        rt.block_on(async {
                            let mut txs = Vec::new();
                            let mut tasks = Vec::new();
                            for _ in 0..4 {
                                let (tx, mut rx) = mpsc::channel::<Message>(1024);
                                txs.push(tx);
                                tasks.push(tokio::spawn(async move {
                                    let mut n = 0u64;
                                    while let Some(m) = rx.recv().await {
                                        black_box(&m);
                                        n += 1;
                                    }
                                    n
                                }));
                            }
                            for m in batch {
                                for tx in &txs {
                                    tx.send(m.clone()).await.unwrap();
                                }
                            }
                            drop(txs);
                            for t in tasks {
                                assert_eq!(t.await.unwrap(), BATCH);
                            }
                        });
                    },
                )
            });
        });
    }
    group.finish();
}

/// Runs `iters` batches, timing only `run` (each batch is prepared before the clock starts).
fn timed(
    iters: u64,
    mut prepare: impl FnMut() -> Vec<Message>,
    mut run: impl FnMut(Vec<Message>),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let batch = prepare();
        let start = Instant::now();
        run(batch);
        total += start.elapsed();
    }
    total
}

fn routing(c: &mut Criterion) {
    // 100 patterns of the shapes real configs use; a 6-word topic that matches a few of them.
    let apps = [
        "buildsys", "bodhi", "copr", "pagure", "fas", "koschei", "mdapi", "anitya", "fmn", "badges",
    ];
    let mut patterns = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        patterns.push(format!("org.fedoraproject.prod.{app}.#"));
        patterns.push(format!("org.fedoraproject.*.{app}.build.*"));
        patterns.push(format!("org.fedoraproject.stg.{app}.update.comment"));
        patterns.push(format!("#.{app}.tag"));
        patterns.push(format!("org.centos.*.{app}.#"));
        patterns.push(format!("*.*.prod.{app}.*.{i}"));
        patterns.push(format!("io.pagure.prod.{app}.#"));
        patterns.push(format!("org.fedoraproject.prod.{app}.*.state.change"));
        patterns.push(format!("org.release-monitoring.prod.{app}.#"));
        patterns.push(format!("#.{app}.#.done"));
    }
    let patterns: Vec<Pattern> = patterns.iter().map(|p| Pattern::new(p).unwrap()).collect();
    assert_eq!(patterns.len(), 100);
    let topic = "org.fedoraproject.prod.buildsys.build.state.change";
    assert!(patterns.iter().filter(|p| p.matches(topic)).count() >= 2);
    // As the dispatcher does: all patterns of a backend in one trie, the topic split once, the
    // matching ids collected (here: counted).
    let mut set = PatternSet::new();
    for (i, p) in patterns.iter().enumerate() {
        set.insert(p, i as u32);
    }
    let mut n = 0;
    set.for_each_match(&TopicWords::new(topic), |_| n += 1);
    assert_eq!(n, patterns.iter().filter(|p| p.matches(topic)).count());
    c.bench_function("route_6_word_topic_against_100_patterns", |b| {
        b.iter(|| {
            let mut n = 0u32;
            black_box(&set).for_each_match(&TopicWords::new(black_box(topic)), |_| n += 1);
            n
        });
    });
    // For comparison: each pattern on its own.
    c.bench_function("route_linear_each_of_100_patterns", |b| {
        b.iter(|| {
            let words = TopicWords::new(black_box(topic));
            black_box(&patterns)
                .iter()
                .filter(|p| p.matches_words(&words))
                .count()
        });
    });
}

fn setup(c: &mut Criterion) {
    dispatch(c);
    routing(c);
}

criterion_group!(benches, setup);
criterion_main!(benches);
