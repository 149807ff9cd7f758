//! The step from a verified body to routing: the event type and monitor id
//! are read from arbitrary bytes, then targets are chosen by globs and
//! JSON-pointer matches. Never panics; kept fields are bounded.
#![no_main]

use hookrelay::envelope::Envelope;
use hookrelay::routing::{Route, Router, glob_match};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let envelope = Envelope::from_body(body);
    for field in [&envelope.event_type, &envelope.monitor_id].into_iter().flatten() {
        assert!(field.len() <= 256, "an over-long field was kept");
    }
    let route = |name: &str, events: &[&str], pointer: Option<&str>| Route {
        target: name.to_owned(),
        source: "parallel".to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        matches: pointer.map(|p| (p.to_owned(), serde_json::json!("research"))).into_iter().collect(),
    };
    let router = Router::new([
        route("all", &[], None),
        route("monitors", &["monitor.*"], None),
        route("team", &["*"], Some("/data/metadata/team")),
    ]);
    let targets = router.targets_for("parallel", envelope.event_type.as_deref(), body);
    assert!(targets.iter().any(|t| t == "all"), "the unfiltered target always matches");
    if let Some(event) = &envelope.event_type {
        assert_eq!(targets.iter().any(|t| t == "monitors"), glob_match("monitor.*", event));
    }
});
