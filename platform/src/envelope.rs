//! The message contract: one JSON envelope for every command and event.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Every command and every event on every topic is one of these, serialized as JSON.
///
/// The Kafka key of a message is always its `correlation_id` (the saga id), so all messages of one
/// saga land on one partition and stay in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per message; receivers de-duplicate on it (the inbox), so a re-send must reuse it.
    pub message_id: Uuid,
    /// What the message is: `create_order` for a command, `order.created` for an event.
    #[serde(rename = "type")]
    pub message_type: String,
    /// The saga this message belongs to.
    pub correlation_id: Uuid,
    /// The message this one answers (a reply names its command); `None` for a first command.
    #[serde(default)]
    pub causation_id: Option<Uuid>,
    /// When the sender created the message, RFC 3339.
    pub timestamp: String,
    /// The message body; its shape depends on `type`.
    #[serde(default)]
    pub payload: Value,
}

impl Envelope {
    /// A reply to `command`: same saga, caused by the command, fresh message id.
    pub fn reply_to(command: &Envelope, message_type: impl Into<String>, payload: Value) -> Self {
        Envelope {
            message_id: Uuid::new_v4(),
            message_type: message_type.into(),
            correlation_id: command.correlation_id,
            causation_id: Some(command.message_id),
            timestamp: crate::time::rfc3339(crate::time::now_ms()),
            payload,
        }
    }

    /// Parses an envelope from a Kafka payload; the error says what is wrong with it.
    pub fn from_bytes(bytes: Option<&[u8]>) -> Result<Self, String> {
        let bytes = bytes.ok_or_else(|| "message has no payload".to_string())?;
        serde_json::from_slice(bytes).map_err(|e| format!("not a valid envelope: {e}"))
    }

    pub fn to_json(&self) -> String {
        // Serializing a struct of strings, uuids and a Value cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The Kafka key: the saga id, so a saga's messages keep their order on one partition.
    pub fn key(&self) -> String {
        self.correlation_id.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_with_type_field() {
        let e = Envelope {
            message_id: Uuid::new_v4(),
            message_type: "order.created".into(),
            correlation_id: Uuid::new_v4(),
            causation_id: Some(Uuid::new_v4()),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            payload: serde_json::json!({"order_id": "o-1"}),
        };
        let json = e.to_json();
        assert!(json.contains("\"type\":\"order.created\""));
        assert_eq!(Envelope::from_bytes(Some(json.as_bytes())).unwrap(), e);
    }

    #[test]
    fn garbage_is_rejected_with_a_reason() {
        assert!(Envelope::from_bytes(None).is_err());
        let err = Envelope::from_bytes(Some(b"{not json")).unwrap_err();
        assert!(err.contains("not a valid envelope"));
        let err = Envelope::from_bytes(Some(br#"{"message_id":"x"}"#)).unwrap_err();
        assert!(err.contains("not a valid envelope"));
    }
}
