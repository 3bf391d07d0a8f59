//! Any text through the hub's configuration loader and checker:
//! `Hub::builder().stock().env_overrides(false).check(&ConfigSource::Text(text))`, as `hub check`
//! runs it (inside a multi-threaded tokio runtime, every stock type registered; every part is
//! built, nothing connects).
//!
//! Asserts: `Ok` or `Err`, never a panic; the errors format (`Display`).
#![no_main]

use std::sync::OnceLock;

use hub::{ConfigSource, Hub, HubBuilder};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

thread_local! {
    static HUB: HubBuilder = Hub::builder().stock().env_overrides(false);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _rt = runtime().enter();
    HUB.with(|hub| match hub.check(&ConfigSource::Text(text.to_owned())) {
        Ok(config) => drop(config),
        Err(e) => drop(e.to_string()),
    });
});
