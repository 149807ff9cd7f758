//! A journaled delivery and its id.

use std::fmt;
use std::str::FromStr;

use super::codec::{DecodeError, Reader, Writer};

/// A delivery's id: the millisecond it was received, then a sequence number
/// from the journal. Ordered by time, unique across restarts, and the
/// delivery's key in the journal, so the primary index is the time index.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeliveryId {
    pub received_at_ms: u64,
    pub seq: u64,
}

impl DeliveryId {
    pub const KEY_LEN: usize = 16;
    const PREFIX: &str = "dlv_";

    pub fn to_key(self) -> [u8; Self::KEY_LEN] {
        let mut key = [0u8; Self::KEY_LEN];
        key[..8].copy_from_slice(&self.received_at_ms.to_be_bytes());
        key[8..].copy_from_slice(&self.seq.to_be_bytes());
        key
    }

    pub fn from_key(key: &[u8]) -> Option<Self> {
        let key: &[u8; Self::KEY_LEN] = key.try_into().ok()?;
        Some(DeliveryId {
            received_at_ms: u64::from_be_bytes(key[..8].try_into().ok()?),
            seq: u64::from_be_bytes(key[8..].try_into().ok()?),
        })
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:012x}{:016x}", Self::PREFIX, self.received_at_ms, self.seq)
    }
}

/// The text did not look like `dlv_` followed by 28 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a delivery id (expected dlv_ and 28 hex digits)")]
pub struct BadDeliveryId;

impl FromStr for DeliveryId {
    type Err = BadDeliveryId;
    fn from_str(text: &str) -> Result<Self, BadDeliveryId> {
        let hex = text.strip_prefix(Self::PREFIX).ok_or(BadDeliveryId)?;
        if hex.len() != 28 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadDeliveryId);
        }
        let (ms, seq) = hex.split_at(12);
        Ok(DeliveryId {
            received_at_ms: u64::from_str_radix(ms, 16).map_err(|_| BadDeliveryId)?,
            seq: u64::from_str_radix(seq, 16).map_err(|_| BadDeliveryId)?,
        })
    }
}

/// One inbound webhook as the journal keeps it: the exact bytes and headers
/// that were verified, plus routing keys read from the verified body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRecord {
    pub id: DeliveryId,
    pub source: String,
    pub webhook_id: String,
    pub webhook_timestamp: String,
    /// The sender's `webhook-signature`, kept for `signing = "passthrough"`.
    pub webhook_signature: String,
    pub content_type: Option<String>,
    pub event_type: Option<String>,
    pub monitor_id: Option<String>,
    pub body: Vec<u8>,
}

const RECORD_V1: u8 = 1;

impl DeliveryRecord {
    /// A copy with another body (an enriched one), without copying this one's.
    pub fn with_body(&self, body: Vec<u8>) -> DeliveryRecord {
        DeliveryRecord {
            id: self.id,
            source: self.source.clone(),
            webhook_id: self.webhook_id.clone(),
            webhook_timestamp: self.webhook_timestamp.clone(),
            webhook_signature: self.webhook_signature.clone(),
            content_type: self.content_type.clone(),
            event_type: self.event_type.clone(),
            monitor_id: self.monitor_id.clone(),
            body,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(self.body.len() + 256);
        w.u8(RECORD_V1)
            .u64(self.id.received_at_ms)
            .u64(self.id.seq)
            .str(&self.source)
            .str(&self.webhook_id)
            .str(&self.webhook_timestamp)
            .str(&self.webhook_signature)
            .opt_str(self.content_type.as_deref())
            .opt_str(self.event_type.as_deref())
            .opt_str(self.monitor_id.as_deref())
            .bytes(&self.body);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        match r.u8()? {
            RECORD_V1 => {}
            version => return Err(DecodeError::UnknownVersion(version)),
        }
        let record = DeliveryRecord {
            id: DeliveryId { received_at_ms: r.u64()?, seq: r.u64()? },
            source: r.string()?,
            webhook_id: r.string()?,
            webhook_timestamp: r.string()?,
            webhook_signature: r.string()?,
            content_type: r.opt_string()?,
            event_type: r.opt_string()?,
            monitor_id: r.opt_string()?,
            body: r.bytes()?.to_vec(),
        };
        r.finish()?;
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> DeliveryRecord {
        DeliveryRecord {
            id: DeliveryId { received_at_ms: 1_751_498_975_123, seq: 42 },
            source: "parallel".into(),
            webhook_id: "whevent_abc".into(),
            webhook_timestamp: "1751498975".into(),
            webhook_signature: "v1,abc=".into(),
            content_type: Some("application/json".into()),
            event_type: Some("monitor.event.detected".into()),
            monitor_id: None,
            body: b"{\"type\":\"x\"}\xff".to_vec(),
        }
    }

    #[test]
    fn id_text_and_key_round_trip_and_sort_by_time() {
        let id = DeliveryId { received_at_ms: 1_751_498_975_123, seq: 7 };
        let text = id.to_string();
        assert_eq!(text, "dlv_0197cd7967930000000000000007");
        assert_eq!(text.parse::<DeliveryId>(), Ok(id));
        assert_eq!(DeliveryId::from_key(&id.to_key()), Some(id));
        let later = DeliveryId { received_at_ms: id.received_at_ms + 1, seq: 0 };
        assert!(id.to_key() < later.to_key());
        for bad in
            ["", "dlv_", "dlv_xyz", "abc_0197cd3c6e930000000000000007", "dlv_0197cd3c6e9300000000000000077"]
        {
            assert_eq!(bad.parse::<DeliveryId>(), Err(BadDeliveryId), "{bad}");
        }
    }

    #[test]
    fn record_round_trips() {
        let record = sample();
        assert_eq!(DeliveryRecord::decode(&record.encode()), Ok(record));
    }

    #[test]
    fn damaged_records_are_errors() {
        let bytes = sample().encode();
        for len in 0..bytes.len() {
            assert!(DeliveryRecord::decode(&bytes[..len]).is_err(), "prefix of {len} bytes");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(DeliveryRecord::decode(&extra), Err(DecodeError::TrailingBytes(1)));
        let mut version = bytes;
        version[0] = 9;
        assert_eq!(DeliveryRecord::decode(&version), Err(DecodeError::UnknownVersion(9)));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = DeliveryRecord::decode(&bytes);
        }

        #[test]
        fn any_record_round_trips(
            ms in any::<u64>(), seq in any::<u64>(), source in ".{0,16}", id in ".{0,32}",
            ct in proptest::option::of(".{0,16}"), body in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let record = DeliveryRecord {
                id: DeliveryId { received_at_ms: ms, seq },
                source, webhook_id: id, webhook_timestamp: "1".into(), webhook_signature: String::new(),
                content_type: ct, event_type: None, monitor_id: Some("m".into()), body,
            };
            prop_assert_eq!(DeliveryRecord::decode(&record.encode()), Ok(record));
        }
    }
}
