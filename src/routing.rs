//! Which targets get a delivery: pure functions of the target's filters and
//! the verified body. A target matches when its source matches, any of its
//! `events` globs matches the event type (no globs: every event), and every
//! `match` JSON pointer resolves to an equal value.

use std::collections::BTreeMap;

use crate::config::TargetConfig;

/// `*` matches any run of characters (dots included); everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (pattern, text) = (pattern.as_bytes(), text.as_bytes());
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The filters of one target.
#[derive(Debug, Clone)]
pub struct Route {
    pub target: String,
    pub source: String,
    pub events: Vec<String>,
    pub matches: BTreeMap<String, serde_json::Value>,
}

impl Route {
    pub fn from_target(target: &TargetConfig) -> Self {
        Route {
            target: target.name.clone(),
            source: target.source.clone(),
            events: target.events.clone(),
            matches: target.match_.clone(),
        }
    }

    /// `body` is parsed only when some route has `match` filters, so it is
    /// `None` both for "not needed" and "not JSON"; a `match` filter never
    /// matches a body that is not JSON.
    pub fn matches(&self, source: &str, event_type: Option<&str>, body: Option<&serde_json::Value>) -> bool {
        if self.source != source {
            return false;
        }
        if !self.events.is_empty() {
            let Some(event_type) = event_type else { return false };
            if !self.events.iter().any(|pattern| glob_match(pattern, event_type)) {
                return false;
            }
        }
        self.matches.iter().all(|(pointer, expected)| body.and_then(|b| b.pointer(pointer)) == Some(expected))
    }
}

/// The routes of every target, in config order.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    pub fn new(targets: impl IntoIterator<Item = Route>) -> Self {
        Router { routes: targets.into_iter().collect() }
    }

    /// Names of the targets that get this delivery.
    pub fn targets_for(&self, source: &str, event_type: Option<&str>, body: &[u8]) -> Vec<String> {
        let needs_body = self.routes.iter().any(|r| r.source == source && !r.matches.is_empty());
        let parsed = if needs_body { serde_json::from_slice::<serde_json::Value>(body).ok() } else { None };
        self.routes
            .iter()
            .filter(|route| route.matches(source, event_type, parsed.as_ref()))
            .map(|route| route.target.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("monitor.*", "monitor.event.detected"));
        assert!(glob_match("monitor.*", "monitor."));
        assert!(!glob_match("monitor.*", "monitor"));
        assert!(glob_match("task_run.status", "task_run.status"));
        assert!(!glob_match("task_run.status", "task_run.statuses"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*.completed", "monitor.execution.completed"));
        assert!(glob_match("findall.*.*ed", "findall.candidate.matched"));
        assert!(!glob_match("findall.*.*ed", "findall.run.cancelling"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("", "a"));
    }

    fn route(target: &str, events: &[&str], matches: &[(&str, serde_json::Value)]) -> Route {
        Route {
            target: target.into(),
            source: "parallel".into(),
            events: events.iter().map(|e| e.to_string()).collect(),
            matches: matches.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        }
    }

    #[test]
    fn fan_out_by_event_and_match() {
        let router = Router::new([
            route("all", &[], &[]),
            route("monitors", &["monitor.*"], &[]),
            route("tasks", &["task_run.status"], &[]),
            route("research", &[], &[("/data/metadata/team", json!("research"))]),
            route("one_monitor", &["monitor.event.detected"], &[("/data/monitor_id", json!("monitor_1"))]),
        ]);
        let body = br#"{"type":"monitor.event.detected","data":{"monitor_id":"monitor_1","metadata":{"team":"research"}}}"#;
        assert_eq!(
            router.targets_for("parallel", Some("monitor.event.detected"), body),
            ["all", "monitors", "research", "one_monitor"]
        );
        let task = br#"{"type":"task_run.status","data":{"run_id":"r","metadata":{"team":"ops"}}}"#;
        assert_eq!(router.targets_for("parallel", Some("task_run.status"), task), ["all", "tasks"]);
        assert_eq!(router.targets_for("other", Some("task_run.status"), task), Vec::<String>::new());
        // Not JSON: only unfiltered targets.
        assert_eq!(router.targets_for("parallel", None, b"\xff"), ["all"]);
    }

    #[test]
    fn match_compares_typed_values() {
        let r = route("n", &[], &[("/n", json!(3))]);
        assert!(r.matches("parallel", None, Some(&json!({"n": 3}))));
        assert!(!r.matches("parallel", None, Some(&json!({"n": "3"}))));
        assert!(!r.matches("parallel", None, Some(&json!({}))));
        assert!(!r.matches("parallel", None, None));
    }
}
