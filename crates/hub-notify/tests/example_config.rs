//! `config/notify-example.toml`: its settings read, and its template renders the messages it
//! subscribes to (fedmsg bodies of Bodhi and Koji) as one line each.

#![allow(clippy::unwrap_used)]

use figment::Figment;
use figment::providers::{Format, Toml};
use hub_core::{Message, json};
use hub_notify::NotifyConfig;

#[test]
fn the_example_renders_bodhi_and_koji_messages() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../config/notify-example.toml"
    );
    let config: NotifyConfig = Figment::from(Toml::file(path))
        .extract_inner("consumers.team-irc.settings")
        .unwrap();
    let n = config.into_notifier().unwrap();
    let comment = Message::new(
        "org.fedoraproject.prod.bodhi.update.comment",
        json!({"comment": {"user": {"name": "ada"}, "update_alias": "FEDORA-2026-1",
                           "text": "works for me\nthanks"}}),
    );
    assert_eq!(
        n.line(&comment).unwrap(),
        "ada commented on FEDORA-2026-1: works for me thanks"
    );
    let status = Message::new(
        "org.fedoraproject.prod.bodhi.update.status",
        json!({"update": {"alias": "FEDORA-2026-2", "status": "stable", "title": "hub-1.0-1.fc44"}}),
    );
    assert_eq!(
        n.line(&status).unwrap(),
        "FEDORA-2026-2 is now stable (hub-1.0-1.fc44)"
    );
    let build = Message::new(
        "org.fedoraproject.prod.buildsys.build.state.change",
        json!({"name": "hub", "version": "1.0", "release": "1.fc44", "new": 1}),
    );
    assert_eq!(n.line(&build).unwrap(), "koji: hub-1.0-1.fc44 completed");
    let odd = Message::new(
        "org.fedoraproject.prod.buildsys.build.state.change",
        json!({"name": "hub", "version": "1.0", "release": "1.fc44", "new": 9}),
    );
    assert_eq!(n.line(&odd).unwrap(), "koji: hub-1.0-1.fc44 state 9");
}
