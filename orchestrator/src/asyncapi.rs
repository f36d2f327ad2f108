//! The AsyncAPI 3.0 document of the system, generated from what the orchestrator runs: every
//! topic of `topics.json` (a channel each), every command and reply the loaded saga definitions
//! use (with its payload schema from `messages.toml`, inside the envelope every message travels
//! in), the lifecycle events and the dead letters. Served at `/asyncapi.json`, so it cannot
//! drift from the code: it *is* the code's contract.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use platform::{Contract, Topics};

use crate::saga::engine::LIFECYCLE_EVENTS;
use crate::saga::Registry;

/// What an envelope is: a command or event the orchestrator sends, or a reply it consumes.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Sent,
    Reply,
}

/// The envelope of every message, with `payload` as given. A reply must name the command it
/// answers: without `causation_id` it is dead-lettered.
fn envelope(message_type: &str, payload: &Value, kind: Kind) -> Value {
    let mut required = vec![
        "message_id",
        "type",
        "correlation_id",
        "timestamp",
        "payload",
    ];
    let causation = match kind {
        Kind::Sent => {
            json!({"type": ["string", "null"], "format": "uuid", "description": "The message that caused this one (a reply, or none)"})
        }
        Kind::Reply => {
            required.push("causation_id");
            json!({"type": "string", "format": "uuid", "description": "The message_id of the command this reply answers; a reply without it, or naming a command the saga never sent, is dead-lettered (dlq.reason rejected)"})
        }
    };
    json!({
        "type": "object",
        "required": required,
        "properties": {
            "message_id": {"type": "string", "format": "uuid", "description": "Unique per message; a re-sent command keeps its id, and a participant answers it with the same reply (same message_id)"},
            "type": {"const": message_type},
            "correlation_id": {"type": "string", "format": "uuid", "description": "The saga id (also the Kafka key)"},
            "causation_id": causation,
            "timestamp": {"type": "string", "format": "date-time"},
            "payload": payload,
        }
    })
}

/// The Kafka headers of every message: W3C trace context. A participant copies `traceparent`'s
/// trace id from the command to its reply (with its own span as the parent), and `tracestate`
/// as it came, so that one saga is one trace across every component.
fn trace_headers() -> Value {
    json!({
        "type": "object",
        "properties": {
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": "W3C trace context. On a reply: the command's trace id, the replying span's id. A reply without it starts a new trace, and the saga's trace breaks there",
            },
            "tracestate": {"type": "string", "description": "W3C trace state: copied from the command to the reply unchanged"},
        }
    })
}

/// The headers a dead letter adds to the original message's, one spelling (the code's).
fn dead_letter_headers() -> Value {
    let mut properties = Map::new();
    for (name, about) in platform::dead_letters::HEADERS {
        let mut schema = json!({"type": "string", "description": about});
        if name == "dlq.reason" {
            schema["enum"] = json!(platform::kafka::dead_letter::ALL);
        }
        properties.insert(name.to_string(), schema);
    }
    let required: Vec<&str> = platform::dead_letters::HEADERS
        .iter()
        .map(|(n, _)| *n)
        .collect();
    json!({"type": "object", "required": required, "properties": properties})
}

pub fn document(registry: &Registry, contract: &Contract, topics: &Topics) -> Value {
    // Which saga steps send each command: command -> "saga vN: step".
    let mut senders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lifecycle_topics = Vec::new();
    for def in registry.all() {
        let who = |step: &str| format!("{} v{}: {step}", def.saga_type, def.version);
        for step in &def.steps {
            senders
                .entry(step.command.command_type.clone())
                .or_default()
                .push(who(&step.name));
            if let Some(c) = &step.compensation {
                senders
                    .entry(c.command.command_type.clone())
                    .or_default()
                    .push(who(&format!("{} (compensation of {})", c.name, step.name)));
            }
        }
        if let Some(t) = &def.lifecycle_topic {
            if !lifecycle_topics.contains(t) {
                lifecycle_topics.push(t.clone());
            }
        }
    }

    let mut channels = Map::new();
    let mut channel_messages: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let role_of = |name: &str| {
        topics
            .roles()
            .find(|(_, t)| t.name == name)
            .map(|(r, _)| r.to_string())
    };
    let mut messages = Map::new();
    let mut operations = Map::new();
    let mut add = |role: &str,
                   name: &str,
                   message: Value,
                   channel_messages: &mut BTreeMap<String, Map<String, Value>>| {
        messages.insert(name.to_string(), message);
        channel_messages
            .entry(role.to_string())
            .or_default()
            .insert(
                name.to_string(),
                json!({"$ref": format!("#/components/messages/{name}")}),
            );
    };
    for (command, used_by) in &senders {
        let Some(c) = contract.command(command) else {
            continue;
        };
        add(
            &c.topic,
            command,
            json!({
                "name": command,
                "title": command,
                "summary": c.summary,
                "contentType": "application/json",
                "headers": trace_headers(),
                "payload": envelope(command, &c.payload, Kind::Sent),
                // The outcome of each reply is also a tag on the reply message (standard
                // AsyncAPI); this says it from the command's side.
                "x-replies": {"success": c.success, "failure": c.failure, "topic": c.reply_topic},
                "x-sent-by": used_by,
            }),
            &mut channel_messages,
        );
        operations.insert(
            format!("send_{command}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{}", c.topic)},
                "messages": [{"$ref": format!("#/channels/{}/messages/{command}", c.topic)}],
                "reply": {
                    "channel": {"$ref": format!("#/channels/{}", c.reply_topic)},
                    "messages": [
                        {"$ref": format!("#/channels/{}/messages/{}", c.reply_topic, c.success)},
                        {"$ref": format!("#/channels/{}/messages/{}", c.reply_topic, c.failure)},
                    ],
                },
            }),
        );
        for (reply, outcome) in [(&c.success, "success"), (&c.failure, "failure")] {
            let schema = contract
                .replies
                .get(reply)
                .map(|r| r.payload.clone())
                .unwrap_or_else(|| json!({"type": "object"}));
            add(
                &c.reply_topic,
                reply,
                json!({
                    "name": reply,
                    "title": reply,
                    "summary": format!("The {outcome} reply to {command}"),
                    "tags": [{"name": outcome, "description": format!("{outcome} of {command}")}],
                    "contentType": "application/json",
                    "headers": trace_headers(),
                    "payload": envelope(reply, &schema, Kind::Reply),
                }),
                &mut channel_messages,
            );
            operations.insert(
                format!("receive_{}", reply.replace('.', "_")),
                json!({
                    "action": "receive",
                    "channel": {"$ref": format!("#/channels/{}", c.reply_topic)},
                    "messages": [{"$ref": format!("#/channels/{}/messages/{reply}", c.reply_topic)}],
                }),
            );
        }
    }
    for topic in &lifecycle_topics {
        let Some(role) = role_of(topic) else { continue };
        for event in LIFECYCLE_EVENTS {
            add(
                &role,
                event,
                json!({
                    "name": event,
                    "title": event,
                    "summary": "A saga's lifecycle, for people and systems following sagas",
                    "contentType": "application/json",
                    "headers": trace_headers(),
                    "payload": envelope(event, &json!({
                        "type": "object",
                        "properties": {
                            "saga_type": {"type": "string"},
                            "status": {"type": "string"},
                            "error": {"type": ["string", "null"]},
                            "context": {
                                "type": "object",
                                "description": "On the events that end a saga (completed, compensated, cancelled, failed): its input and the fields its steps replied",
                            },
                        }
                    }), Kind::Sent),
                }),
                &mut channel_messages,
            );
        }
        operations.insert(
            format!("send_lifecycle_{role}"),
            json!({
                "action": "send",
                "channel": {"$ref": format!("#/channels/{role}")},
            }),
        );
    }
    add(
        "dead_letter",
        "dead_letter",
        json!({
            "name": "dead_letter",
            "title": "A dead letter",
            "summary": "A message no component could handle, as it came (key, payload and headers), with the dlq.* headers saying where it came from and why",
            "headers": dead_letter_headers(),
            "payload": {"description": "The original message's bytes, unchanged (it may not be JSON at all)"},
        }),
        &mut channel_messages,
    );
    operations.insert(
        "send_dead_letter".into(),
        json!({
            "action": "send",
            "channel": {"$ref": "#/channels/dead_letter"},
            "messages": [{"$ref": "#/channels/dead_letter/messages/dead_letter"}],
        }),
    );
    for (role, topic) in topics.roles() {
        let mut channel = json!({
            "address": topic.name,
            "description": format!(
                "{role}: {} partitions, retention {} ms. Every message is keyed by its saga's id \
                 (the envelope's correlation_id) and placed as the Java client places keys: \
                 partition = (murmur2(key) & 0x7fffffff) % partitions; a participant keys its \
                 replies the same way",
                topic.partitions, topic.retention_ms
            ),
        });
        if role == "dead_letter" {
            let headers: Vec<&str> = platform::dead_letters::HEADERS
                .iter()
                .map(|(n, _)| *n)
                .collect();
            channel["description"] = json!(format!(
                "{role}: {} partitions, retention {} ms. Messages that could not be handled, as \
                 they came (key, payload, headers), with the headers {}",
                topic.partitions,
                topic.retention_ms,
                headers.join(", ")
            ));
        }
        if let Some(delay) = topic.delay_ms {
            channel["description"] = json!(format!(
                "{role}: {} partitions, retention {} ms. A retry topic of the notification \
                 deliveries: a job that failed waits here {delay} ms (its retry.due_ms header \
                 says until when), then is tried again",
                topic.partitions, topic.retention_ms
            ));
        }
        if let Some(m) = channel_messages.remove(role) {
            channel["messages"] = Value::Object(m);
        }
        channels.insert(role.to_string(), channel);
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "Saga orchestrator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!(
                "Commands the orchestrator sends, the replies it consumes, and the lifecycle events it publishes, for the saga types: {}",
                registry.types().map(|d| format!("{} v{}", d.saga_type, d.version)).collect::<Vec<_>>().join(", ")
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::SagasSource;

    #[test]
    fn every_topic_command_and_reply_of_the_loaded_sagas_is_in_the_document() {
        let topics = Topics::load(None).unwrap();
        let contract = Contract::built_in();
        let registry = SagasSource::BuiltIn.load(&topics, contract).unwrap();
        let doc = document(&registry, contract, &topics);
        assert_eq!(doc["asyncapi"], "3.0.0");
        for (role, topic) in topics.roles() {
            assert_eq!(
                doc["channels"][role]["address"],
                topic.name.as_str(),
                "{role}"
            );
        }
        for def in registry.all() {
            for step in &def.steps {
                let command = &doc["components"]["messages"][&step.command.command_type];
                assert!(command.is_object(), "{}", step.command.command_type);
                for reply in [&step.on_success, &step.on_failure] {
                    assert!(doc["components"]["messages"][reply].is_object(), "{reply}");
                }
            }
        }
        let create = &doc["components"]["messages"]["create_order"];
        assert_eq!(
            create["payload"]["properties"]["payload"],
            contract.command("create_order").unwrap().payload
        );
        assert_eq!(
            create["payload"]["properties"]["type"]["const"],
            "create_order"
        );
        assert!(
            doc["channels"]["order_commands"]["messages"]["create_order"]["$ref"]
                .as_str()
                .unwrap()
                .ends_with("/create_order")
        );
        assert!(doc["channels"]["payment_events"]["messages"]["payment.released"].is_object());
        assert!(doc["channels"]["notification_events"]["messages"]["saga.completed"].is_object());
        let send = &doc["operations"]["send_authorize_payment"];
        assert_eq!(send["action"], "send");
        assert_eq!(
            send["reply"]["channel"]["$ref"],
            "#/channels/payment_events"
        );
        // Every $ref points at something in the document.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/").skip(1) {
            let path = &r[..r.find('"').unwrap()];
            let mut node = &doc;
            for part in path.split('/') {
                node = &node[part];
            }
            assert!(!node.is_null(), "dangling $ref #/{path}");
        }
    }

    /// With `TOPIC_PREFIX` the document names the topics as the broker has them; channels keep
    /// their roles, so a participant's code generated from it reads the same.
    #[test]
    fn a_topic_prefix_shows_in_every_channel_address() {
        let topics = Topics::load(None).unwrap().prefixed("staging.").unwrap();
        let contract = Contract::built_in();
        let registry = SagasSource::BuiltIn.load(&topics, contract).unwrap();
        let doc = document(&registry, contract, &topics);
        assert_eq!(
            doc["channels"]["order_commands"]["address"],
            "staging.order_commands"
        );
        for (role, _) in topics.roles() {
            let address = doc["channels"][role]["address"].as_str().unwrap();
            assert!(address.starts_with("staging."), "{role}: {address}");
        }
    }
}
