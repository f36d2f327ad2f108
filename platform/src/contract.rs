//! `messages.toml`: the message contract — every command a participant takes, the topic it goes
//! to, the replies that answer it, and the payload of each (JSON Schema).
//!
//! One place for message names: saga definitions name a command and take its topic and replies
//! from here, and the stub services answer through [`CommandContract::success`] /
//! [`CommandContract::failure`] instead of spelling reply names. The file at the repository root
//! is compiled in; `MESSAGES_FILE` points a deployment at its own copy.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::{Error, Result, Topics};

/// The `messages.toml` at the repository root, as compiled into every binary.
pub const DEFAULT_MESSAGES_TOML: &str = include_str!("../../messages.toml");

/// One command: where it goes and how it is answered.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandContract {
    /// What the command does, for people (and the AsyncAPI document).
    #[serde(default)]
    pub summary: String,
    /// The topics.json role of the topic the command is published to.
    pub topic: String,
    /// The topics.json role of the topic its replies are published to.
    pub reply_topic: String,
    /// The reply that says the command was done.
    pub success: String,
    /// The reply that says it was not (for a compensation: refused for now, to be retried).
    pub failure: String,
    /// JSON Schema of the command's payload.
    #[serde(default = "any_object")]
    pub payload: Value,
}

/// One reply.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplyContract {
    #[serde(default)]
    pub summary: String,
    /// JSON Schema of the reply's payload.
    #[serde(default = "any_object")]
    pub payload: Value,
}

fn any_object() -> Value {
    serde_json::json!({"type": "object"})
}

/// Every command and reply, by name.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    #[serde(default)]
    pub commands: BTreeMap<String, CommandContract>,
    #[serde(default)]
    pub replies: BTreeMap<String, ReplyContract>,
}

impl Contract {
    /// Parses and checks a `messages.toml` document against the topics it names.
    pub fn from_toml(text: &str, origin: &str, topics: &Topics) -> Result<Self> {
        let invalid = |problem: String| Error::ContractInvalid {
            path: origin.to_string(),
            problem,
        };
        let contract: Contract = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (name, c) in &contract.commands {
            for role in [&c.topic, &c.reply_topic] {
                if topics.role(role).is_none() {
                    return Err(invalid(format!(
                        "command {name}: topic role {role:?} is not in topics.json"
                    )));
                }
            }
            if c.success == c.failure {
                return Err(invalid(format!(
                    "command {name}: success and failure are both {:?}",
                    c.success
                )));
            }
            for reply in [&c.success, &c.failure] {
                if !contract.replies.contains_key(reply) {
                    return Err(invalid(format!(
                        "command {name}: reply {reply:?} is not declared under [replies]"
                    )));
                }
            }
        }
        Ok(contract)
    }

    /// The compiled-in `messages.toml`, or the file named by `path` when given.
    pub fn load(path: Option<&str>, topics: &Topics) -> Result<Self> {
        match path {
            None => Self::from_toml(DEFAULT_MESSAGES_TOML, "messages.toml (built in)", topics),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::ContractFile {
                    path: path.to_string(),
                    source,
                })?;
                Self::from_toml(&text, path, topics)
            }
        }
    }

    /// The compiled-in contract, checked against the compiled-in topics: what the stub services
    /// answer with. Checked by a unit test, so it cannot fail at run time.
    pub fn built_in() -> &'static Contract {
        static BUILT_IN: std::sync::LazyLock<Contract> = std::sync::LazyLock::new(|| {
            let topics = Topics::load(None).expect("the built-in topics.json is valid");
            Contract::load(None, &topics).expect("the built-in messages.toml is valid")
        });
        &BUILT_IN
    }

    pub fn command(&self, name: &str) -> Option<&CommandContract> {
        self.commands.get(name)
    }

    /// The command a reply answers, with whether the reply is its success.
    pub fn answering(&self, reply: &str) -> Option<(&str, &CommandContract, bool)> {
        self.commands.iter().find_map(|(name, c)| {
            if c.success == reply {
                Some((name.as_str(), c, true))
            } else if c.failure == reply {
                Some((name.as_str(), c, false))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::load(None).unwrap()
    }

    #[test]
    fn the_repository_contract_is_valid() {
        let c = Contract::built_in();
        let revert = c.command("revert_payment").unwrap();
        assert_eq!(revert.success, "payment.released");
        assert_eq!(revert.topic, "payment_commands");
        assert_eq!(
            c.answering("order.cancel_failed").unwrap().0,
            "cancel_order"
        );
    }

    fn check(doc: &str) -> String {
        Contract::from_toml(doc, "test.toml", &topics())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_unknown_topic_role_is_named() {
        let doc =
            DEFAULT_MESSAGES_TOML.replacen("topic = \"order_commands\"", "topic = \"orders\"", 1);
        let err = check(&doc);
        assert!(
            err.contains("test.toml") && err.contains("\"orders\""),
            "{err}"
        );
    }

    #[test]
    fn an_undeclared_reply_is_named() {
        let doc = DEFAULT_MESSAGES_TOML.replacen(
            "success = \"order.created\"",
            "success = \"order.made\"",
            1,
        );
        assert!(check(&doc).contains("\"order.made\" is not declared"));
    }

    #[test]
    fn success_and_failure_must_differ() {
        let doc = DEFAULT_MESSAGES_TOML.replacen(
            "failure = \"order.creation_failed\"",
            "failure = \"order.created\"",
            1,
        );
        assert!(check(&doc).contains("both"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let doc = DEFAULT_MESSAGES_TOML.replacen("summary =", "sumary =", 1);
        assert!(check(&doc).contains("sumary"));
    }
}
