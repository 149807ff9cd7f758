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

/// Unix seconds → `YYYY-MM-DDTHH:MM:SSZ` (UTC), as Parallel writes timestamps.
pub fn rfc3339(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_751_498_975), "2025-07-02T23:29:35Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_859_999), "2026-11-28T09:59:59Z");
    }

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
