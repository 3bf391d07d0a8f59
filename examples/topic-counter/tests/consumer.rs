//! The consumer through the test kit, built from its settings with a real pool (PostgreSQL at
//! 127.0.0.1, as on every machine of this project).
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use hub_core::{ResourceConfig, Resources, Verdict, json};
use hub_testkit::{TestHub, build_consumer};
use topic_counter::{PgPoolConfig, TopicCountConfig};

/// A `[resources.main]` pool as the hub builds it (connecting on first use).
fn pools() -> Resources {
    let pool = PgPoolConfig::new("host=127.0.0.1 user=postgres dbname=test")
        .max_size(2)
        .build("main")
        .unwrap();
    Resources::new().with_named("main", pool)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_per_topic_through_the_shared_pool() {
    let pool = topic_counter::pool()
        .await
        .expect("PostgreSQL at 127.0.0.1");
    let table = format!("tc_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let hub = TestHub::builder()
        .resource_named("main", pool.clone())
        .consumer_from_settings::<TopicCountConfig>(
            "count",
            &["org.#"],
            &format!("table = \"{table}\""),
        )
        .start()
        .await;
    for topic in ["org.a", "org.b", "org.a"] {
        assert_eq!(hub.send(topic, json!({})).await, Verdict::Ack);
    }
    hub.shutdown().await;
    let client = pool.get().await.unwrap();
    let rows = client
        .query(&format!("SELECT topic, n FROM {table} ORDER BY topic"), &[])
        .await
        .unwrap();
    let counts: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(counts, vec![("org.a".into(), 2), ("org.b".into(), 1)]);
    client
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .unwrap();
}

#[test]
fn a_wrong_pool_or_a_bad_setting_is_refused_when_built() {
    let err = build_consumer::<TopicCountConfig>("pool = \"mian\"", &pools())
        .err()
        .expect("no such pool");
    assert!(
        err.contains("no [resources.mian] is configured (did you mean `main`?); configured: main"),
        "{err}"
    );
    let wrong = Resources::new().with_named("main", 5u8);
    let err = build_consumer::<TopicCountConfig>("", &wrong)
        .err()
        .expect("a resource of another type");
    assert!(err.contains("[resources.main] is a `u8`"), "{err}");
    let err = build_consumer::<TopicCountConfig>("tabel = \"x\"", &pools())
        .err()
        .expect("a typo");
    assert!(
        err.contains("settings.tabel") && err.contains("did you mean `table`"),
        "{err}"
    );
}
