//! Realistic Parallel webhook payloads for `hookrelay send-test`, in the
//! shapes Parallel documents (see PROTOCOL.md "Event types and payloads").

/// The event types `send-test` can produce.
pub const EVENT_TYPES: &[&str] =
    &["monitor.event.detected", "monitor.execution.completed", "monitor.execution.failed", "task_run.status"];

/// A sample body for `event_type`, with ids made from `suffix` (hex) and the
/// given RFC 3339 time; `None` for a type it does not know.
pub fn sample_event(event_type: &str, suffix: &str, timestamp: &str) -> Option<String> {
    let monitor = format!("monitor_{suffix}");
    let data = match event_type {
        "monitor.event.detected" => serde_json::json!({
            "monitor_id": monitor,
            "event": { "event_group_id": format!("mevtgrp_{suffix}") },
            "metadata": { "team": "research", "source": "hookrelay send-test" },
        }),
        "monitor.execution.completed" => serde_json::json!({
            "monitor_id": monitor,
            "event": { "type": "completion", "monitor_ts": format!("completed_{suffix}") },
            "metadata": { "team": "research", "source": "hookrelay send-test" },
        }),
        "monitor.execution.failed" => serde_json::json!({
            "monitor_id": monitor,
            "event": { "type": "error", "error": "sample failure from hookrelay send-test", "id": format!("error_{suffix}"), "date": timestamp },
            "metadata": { "team": "research", "source": "hookrelay send-test" },
        }),
        "task_run.status" => serde_json::json!({
            "run_id": format!("trun_{suffix}"),
            "status": "completed",
            "is_active": false,
            "error": null,
            "processor": "base",
            "metadata": { "team": "research", "source": "hookrelay send-test" },
            "created_at": timestamp,
            "modified_at": timestamp,
        }),
        _ => return None,
    };
    Some(serde_json::json!({ "type": event_type, "timestamp": timestamp, "data": data }).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    #[test]
    fn every_sample_routes_by_its_type() {
        for event_type in EVENT_TYPES {
            let body = sample_event(event_type, "abc", "2026-11-28T09:00:00Z").unwrap();
            let envelope = Envelope::from_body(body.as_bytes());
            assert_eq!(envelope.event_type.as_deref(), Some(*event_type));
            assert_eq!(envelope.monitor_id.is_some(), event_type.starts_with("monitor."));
        }
        assert_eq!(sample_event("nope", "abc", "t"), None);
    }
}
