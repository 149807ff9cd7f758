//! What routing needs to know about a verified body: the event type and, for
//! Monitor events, the monitor id and the event group (a detection's identity,
//! which backfill and dedup key on). Pure; the body itself is never rewritten.

use serde::Deserialize;
use serde_json::value::RawValue;

/// Routing keys read from a webhook body. Both are `None` for a body that is
/// not a JSON object of Parallel's shape; such a body is still journaled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub event_type: Option<String>,
    pub monitor_id: Option<String>,
    /// `data.event.event_group_id` (some schema versions say
    /// `monitor_group_id`) of a `monitor.event.detected`.
    pub event_group_id: Option<String>,
}

/// The Monitor event whose `event_group_id` names a detection.
pub const MONITOR_EVENT_DETECTED: &str = "monitor.event.detected";

/// Longest event type or monitor id kept; longer ones are not Parallel's and
/// are dropped rather than indexed.
const MAX_KEY_LEN: usize = 256;

impl Envelope {
    /// Reads `type` and `data.monitor_id` without building the rest of the
    /// document: other fields are only skipped over.
    pub fn from_body(body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Object<'a> {
            #[serde(rename = "type", borrow, default)]
            event_type: Option<&'a RawValue>,
            #[serde(borrow, default)]
            data: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Data<'a> {
            #[serde(borrow, default)]
            monitor_id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            event: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Event<'a> {
            #[serde(borrow, default)]
            event_group_id: Option<&'a RawValue>,
            #[serde(borrow, default)]
            monitor_group_id: Option<&'a RawValue>,
        }
        let Ok(object) = serde_json::from_slice::<Object>(body) else {
            return Envelope::default();
        };
        let event_type = routing_key(object.event_type);
        let data = object.data.and_then(|raw| serde_json::from_str::<Data>(raw.get()).ok());
        let event_group_id = match (&event_type, data.as_ref().and_then(|data| data.event)) {
            (Some(kind), Some(event)) if kind == MONITOR_EVENT_DETECTED => {
                serde_json::from_str::<Event>(event.get()).ok().and_then(|event| {
                    routing_key(event.event_group_id).or(routing_key(event.monitor_group_id))
                })
            }
            _ => None,
        };
        Envelope {
            event_type,
            monitor_id: routing_key(data.and_then(|data| data.monitor_id)),
            event_group_id,
        }
    }
}

/// A JSON string of sensible length, unescaped; anything else is no key.
fn routing_key(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok().filter(|key| !key.is_empty() && key.len() <= MAX_KEY_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_event() {
        let body = br#"{"type":"monitor.event.detected","timestamp":"2025-07-02T23:29:35Z",
            "data":{"monitor_id":"monitor_abc","event":{"event_group_id":"mevtgrp_1"},"metadata":{"team":"x"}}}"#;
        assert_eq!(
            Envelope::from_body(body),
            Envelope {
                event_type: Some("monitor.event.detected".into()),
                monitor_id: Some("monitor_abc".into()),
                event_group_id: Some("mevtgrp_1".into()),
            }
        );
    }

    #[test]
    fn event_groups_under_either_name_and_only_for_detections() {
        let older = br#"{"type":"monitor.event.detected","data":{"monitor_id":"m","event":{"monitor_group_id":"g2"}}}"#;
        assert_eq!(Envelope::from_body(older).event_group_id.as_deref(), Some("g2"));
        let completed = br#"{"type":"monitor.execution.completed","data":{"monitor_id":"m","event":{"event_group_id":"g"}}}"#;
        assert_eq!(Envelope::from_body(completed).event_group_id, None);
        let odd = br#"{"type":"monitor.event.detected","data":{"event":{"event_group_id":7}}}"#;
        assert_eq!(Envelope::from_body(odd).event_group_id, None);
    }

    #[test]
    fn task_run_has_no_monitor() {
        let body = br#"{"type":"task_run.status","data":{"run_id":"trun_1","status":"completed"}}"#;
        let envelope = Envelope::from_body(body);
        assert_eq!(envelope.event_type.as_deref(), Some("task_run.status"));
        assert_eq!(envelope.monitor_id, None);
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let envelope = Envelope::from_body(br#"{"type":"a\u002eb"}"#);
        assert_eq!(envelope.event_type.as_deref(), Some("a.b"));
    }

    #[test]
    fn odd_shapes_still_route_by_type() {
        let envelope = Envelope::from_body(br#"{"type":"x","data":[1,2]}"#);
        assert_eq!(envelope.event_type.as_deref(), Some("x"));
        assert_eq!(envelope.monitor_id, None);
        let envelope = Envelope::from_body(br#"{"type":"x","data":{"monitor_id":5}}"#);
        assert_eq!(envelope.event_type.as_deref(), Some("x"));
    }

    #[test]
    fn non_json_and_non_objects_have_no_keys() {
        for body in
            [&b"not json"[..], b"", b"[1]", b"\"s\"", b"\xff\xfe", br#"{"type":5}"#, br#"{"type":""}"#]
        {
            assert_eq!(Envelope::from_body(body), Envelope::default(), "{body:?}");
        }
    }
}
