//! Any text through the hub's configuration reader alone:
//! `Hub::builder().stock().env_overrides(false).load(&ConfigSource::Text(text))`: the TOML,
//! every section and key, each part's settings read into its registered type, without building
//! any part (`config_load` builds them too, about 30 times slower a run).
//!
//! Asserts: `Ok` or `Err`, never a panic; the errors format (`Display`).
#![no_main]

use hub::{ConfigSource, Hub, HubBuilder};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static HUB: HubBuilder = Hub::builder().stock().env_overrides(false);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    HUB.with(|hub| match hub.load(&ConfigSource::Text(text.to_owned())) {
        Ok(config) => drop(config),
        Err(e) => drop(e.to_string()),
    });
});
