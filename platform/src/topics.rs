//! `topics.json`: the single source of topic names and settings.
//!
//! Code never spells a topic name; it asks [`Topics`] for the topic by its role
//! (`topics.require("order_commands")`). The platform knows one role itself, the dead-letter
//! topic every component writes to; every other role is the deployment's (its participants'
//! `*_commands` and `*_events`, the saga lifecycle events), named in `topics.json`, in saga
//! definitions and in `messages.toml`. The file at the repository root is compiled in as the default,
//! and `TOPICS_FILE` can point a deployment at its own copy (other names, more partitions, a
//! higher replication factor) without a rebuild.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::{Error, Result};

/// The `topics.json` at the repository root, as compiled into every binary.
pub const DEFAULT_TOPICS_JSON: &str = include_str!("../../topics.json");

/// One topic: its name on the broker and how it is created.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms` on the broker.
    pub retention_ms: i64,
    /// Any further topic-level settings (`cleanup.policy`, `min.insync.replicas`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// A retry topic: how long a message waits there before it is tried again. Its consumer
    /// holds back only the partition whose next message is not due yet.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// Every topic of the system, by role. A participant added to a deployment brings its roles
/// (`"shipping_commands": {...}`), which saga definitions and `messages.toml` then name.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Topics {
    /// Messages that could not be handled, with headers saying where they came from and why.
    pub dead_letter: TopicSpec,
    /// Every other topic, by role.
    #[serde(flatten)]
    pub by_role: BTreeMap<String, TopicSpec>,
}

/// Where the topics come from and how they are named on the broker (`TOPICS_FILE`,
/// `TOPIC_PREFIX`): one declaration for every binary.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TopicArgs {
    /// A topics.json to use instead of the built-in one.
    #[arg(long, env = "TOPICS_FILE")]
    pub topics_file: Option<String>,
    /// Put in front of every topic name of topics.json (`staging.` gives `staging.order_commands`),
    /// so that several deployments, or test runs, share one Kafka cluster without sharing a topic.
    /// Pair it with GROUP_PREFIX.
    #[arg(long, env = "TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,
}

impl TopicArgs {
    /// The topics, prefixed.
    pub fn load(&self) -> Result<Topics> {
        Topics::load(self.topics_file.as_deref())?.prefixed(&self.topic_prefix)
    }
}

/// Kafka's limit on a topic name's length.
const MAX_TOPIC_NAME: usize = 249;

/// Whether `s` is made of the characters Kafka allows in a topic name.
pub fn legal_topic_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Topics {
    /// Every topic renamed `{prefix}{name}`; the roles stay as they are, so saga definitions and
    /// `messages.toml` need no change. An empty prefix changes nothing.
    pub fn prefixed(mut self, prefix: &str) -> Result<Self> {
        if prefix.is_empty() {
            return Ok(self);
        }
        if !legal_topic_chars(prefix) {
            return Err(Error::TopicsInvalid(format!(
                "TOPIC_PREFIX {prefix:?} may hold only a-z, A-Z, 0-9, '.', '_' and '-'"
            )));
        }
        for spec in self.all_mut() {
            spec.name = format!("{prefix}{}", spec.name);
        }
        self.validate()?;
        Ok(self)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut TopicSpec> {
        std::iter::once(&mut self.dead_letter).chain(self.by_role.values_mut())
    }

    /// Parses and checks a `topics.json` document.
    pub fn from_json(json: &str, origin: &str) -> Result<Self> {
        let topics: Topics = serde_json::from_str(json).map_err(|source| Error::TopicsJson {
            path: origin.to_string(),
            source,
        })?;
        topics.validate()?;
        Ok(topics)
    }

    /// The compiled-in `topics.json`, or the file named by `path` when given.
    pub fn load(path: Option<&str>) -> Result<Self> {
        match path {
            None => Self::from_json(DEFAULT_TOPICS_JSON, "topics.json (built in)"),
            Some(path) => {
                let json = std::fs::read_to_string(path).map_err(|source| Error::TopicsFile {
                    path: path.to_string(),
                    source,
                })?;
                Self::from_json(&json, path)
            }
        }
    }

    /// All topics, for creating them.
    pub fn all(&self) -> Vec<&TopicSpec> {
        self.roles().map(|(_, t)| t).collect()
    }

    /// Every topic with its role: the dead-letter topic, then the others by name.
    pub fn roles(&self) -> impl Iterator<Item = (&str, &TopicSpec)> {
        std::iter::once(("dead_letter", &self.dead_letter))
            .chain(self.by_role.iter().map(|(k, v)| (k.as_str(), v)))
    }

    /// The topic of a role (`"order_commands"`), as saga definitions name it.
    pub fn role(&self, role: &str) -> Option<&TopicSpec> {
        match role {
            "dead_letter" => Some(&self.dead_letter),
            _ => self.by_role.get(role),
        }
    }

    /// The retry topics of `role` (roles named `{role}_retry_...` with a `delay_ms`), shortest
    /// delay first: where a message that failed goes next, tier by tier.
    pub fn retry_tiers(&self, role: &str) -> Vec<(&str, &TopicSpec)> {
        let prefix = format!("{role}_retry_");
        let mut tiers: Vec<(&str, &TopicSpec)> = self
            .by_role
            .iter()
            .filter(|(r, t)| r.starts_with(&prefix) && t.delay_ms.is_some())
            .map(|(r, t)| (r.as_str(), t))
            .collect();
        tiers.sort_by_key(|(_, t)| t.delay_ms);
        tiers
    }

    /// The topic of a role a component cannot run without; the error names the role, who needs
    /// it, and the roles topics.json has.
    pub fn require(&self, role: &str, needed_by: &str) -> Result<&TopicSpec> {
        self.role(role).ok_or_else(|| {
            Error::TopicsInvalid(format!(
                "topics.json has no role {role:?}, which {needed_by} needs (it has: {})",
                self.roles().map(|(r, _)| r).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    fn validate(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in self.all() {
            if t.name.is_empty() || t.partitions < 1 || t.replication_factor < 1 {
                return Err(Error::TopicsInvalid(format!(
                    "topic {:?} needs a name, partitions >= 1 and replication_factor >= 1",
                    t.name
                )));
            }
            if t.name.len() > MAX_TOPIC_NAME || !legal_topic_chars(&t.name) {
                return Err(Error::TopicsInvalid(format!(
                    "topic name {:?} must be at most {MAX_TOPIC_NAME} of a-z, A-Z, 0-9, '.', '_' \
                     and '-' (with TOPIC_PREFIX)",
                    t.name
                )));
            }
            if t.delay_ms == Some(0) {
                return Err(Error::TopicsInvalid(format!(
                    "topic {:?}: delay_ms must be at least 1 (leave it out for a topic that is no retry topic)",
                    t.name
                )));
            }
            if !seen.insert(t.name.as_str()) {
                return Err(Error::TopicsInvalid(format!(
                    "topic name {:?} is used for two roles",
                    t.name
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_topics_file_is_valid_and_complete() {
        let topics = Topics::load(None).unwrap();
        assert_eq!(
            topics.role("order_commands").unwrap().name,
            "order_commands"
        );
        assert_eq!(topics.all().len(), 16);
        let tiers: Vec<u64> = topics
            .retry_tiers("mail")
            .iter()
            .filter_map(|(_, t)| t.delay_ms)
            .collect();
        assert_eq!(tiers, [10_000, 60_000, 600_000]);
        assert_eq!(topics.retry_tiers("alerts").len(), 3);
        assert!(topics.retry_tiers("order_commands").is_empty());
        let err = topics
            .require("shipping_commands", "the shipping service")
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("\"shipping_commands\", which the shipping service needs")
                && err.to_string().contains("order_commands"),
            "{err}"
        );
        assert!(topics.all().iter().all(|t| t.partitions >= 1));
    }

    #[test]
    fn a_name_used_twice_is_rejected() {
        let doc = DEFAULT_TOPICS_JSON
            .replace(r#""name": "user_commands""#, r#""name": "order_commands""#);
        let err = Topics::from_json(&doc, "test").unwrap_err();
        assert!(err.to_string().contains("two roles"), "{err}");
    }

    #[test]
    fn a_deployment_can_add_roles() {
        let doc = DEFAULT_TOPICS_JSON.replacen(
            '{',
            r#"{ "shipping_commands": { "name": "ship", "partitions": 2, "replication_factor": 1, "retention_ms": 1 },"#,
            1,
        );
        let topics = Topics::from_json(&doc, "test").unwrap();
        assert_eq!(topics.role("shipping_commands").unwrap().name, "ship");
        assert_eq!(topics.role("order_events").unwrap().name, "order_events");
        assert!(topics.role("nope").is_none());
        assert_eq!(topics.all().len(), 17);
    }

    #[test]
    fn a_prefix_renames_every_topic_and_keeps_the_roles() {
        let topics = Topics::load(None).unwrap().prefixed("staging.").unwrap();
        assert_eq!(
            topics.role("order_commands").unwrap().name,
            "staging.order_commands"
        );
        assert_eq!(topics.dead_letter.name, "staging.saga_dead_letter");
        assert_eq!(
            topics.role("user_events").unwrap().name,
            "staging.user_events"
        );
        assert!(topics.all().iter().all(|t| t.name.starts_with("staging.")));
        assert_eq!(
            Topics::load(None).unwrap().prefixed("").unwrap(),
            Topics::load(None).unwrap()
        );
        let err = Topics::load(None).unwrap().prefixed("a b/").unwrap_err();
        assert!(err.to_string().contains("TOPIC_PREFIX"), "{err}");
        let long = "x".repeat(240);
        assert!(Topics::load(None).unwrap().prefixed(&long).is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let doc = DEFAULT_TOPICS_JSON.replace(
            "\"retention_ms\": 604800000 }",
            "\"retention_ms\": 604800000, \"retension\": 1 }",
        );
        assert!(Topics::from_json(&doc, "test").is_err());
    }
}
