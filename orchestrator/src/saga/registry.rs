//! Every saga type the orchestrator runs, at every version it was given.
//!
//! A new saga starts under the newest version of its type; a stored saga is driven by the
//! version it started with, for as long as it runs, even after a newer one is deployed. A saga
//! whose version is no longer loaded is never run under another: it is parked (see
//! [`engine::park`](super::engine)) and reported, and `retry` resumes it once the version is back.

use std::collections::BTreeMap;
use std::sync::Arc;

use uuid::Uuid;

use super::definition::SagaDefinition;
use super::engine::{self, Decision, Policy, Reply};
use super::state::SagaState;
use crate::{Error, Result};

#[derive(Default)]
pub struct Registry {
    definitions: BTreeMap<(String, u32), Arc<SagaDefinition>>,
    /// Each definition's input schema, compiled once.
    inputs: BTreeMap<(String, u32), jsonschema::Validator>,
    /// The message contract the definitions were checked against (for `/asyncapi.json`).
    pub contract: platform::Contract,
    /// Each reply's payload schema from the contract, compiled once: a reply that breaks it is
    /// dead-lettered before it reaches a saga.
    replies: BTreeMap<String, jsonschema::Validator>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.definitions.keys()).finish()
    }
}

/// At most this many problems are named when an input or a reply is refused.
const MAX_PROBLEMS: usize = 10;

impl Registry {
    /// The definitions with the file each came from (named when two declare the same version).
    pub fn new(definitions: Vec<(String, SagaDefinition)>) -> Result<Self> {
        let mut registry = Registry::default();
        let mut origin = BTreeMap::new();
        for (file, def) in definitions {
            let key = (def.saga_type.clone(), def.version);
            if let Some(other) = origin.insert(key.clone(), file.clone()) {
                return Err(Error::Definition {
                    file,
                    problem: format!(
                        "saga {} version {} is already defined by {other}",
                        key.0, key.1
                    ),
                });
            }
            let validator =
                jsonschema::validator_for(&def.input_schema).map_err(|e| Error::Definition {
                    file: file.clone(),
                    problem: format!("input: not a valid JSON Schema: {e}"),
                })?;
            registry.inputs.insert(key.clone(), validator);
            registry.definitions.insert(key, Arc::new(def));
        }
        Ok(registry)
    }

    /// The registry checking replies against `contract`, whose reply schemas are compiled here
    /// (one that is not a valid JSON Schema stops the start).
    pub fn with_contract(mut self, contract: &platform::Contract) -> Result<Self> {
        for (name, reply) in &contract.replies {
            let validator =
                jsonschema::validator_for(&reply.payload).map_err(|e| Error::Definition {
                    file: "the message contract (MESSAGES_FILE)".into(),
                    problem: format!("reply {name}: payload: not a valid JSON Schema: {e}"),
                })?;
            self.replies.insert(name.clone(), validator);
        }
        self.contract = contract.clone();
        Ok(self)
    }

    /// One definition alone (tests, embedding).
    pub fn of(definition: SagaDefinition) -> Self {
        Registry::new(vec![("(given)".into(), definition)]).expect("one definition")
    }

    /// The version new sagas of `saga_type` start under.
    pub fn latest(&self, saga_type: &str) -> Option<&Arc<SagaDefinition>> {
        self.definitions
            .range((saga_type.to_string(), 0)..=(saga_type.to_string(), u32::MAX))
            .next_back()
            .map(|(_, d)| d)
    }

    pub fn get(&self, saga_type: &str, version: u32) -> Option<&Arc<SagaDefinition>> {
        self.definitions.get(&(saga_type.to_string(), version))
    }

    /// Every loaded definition, each type's versions oldest first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<SagaDefinition>> {
        self.definitions.values()
    }

    /// The newest version of each type.
    pub fn types(&self) -> impl Iterator<Item = &Arc<SagaDefinition>> {
        let mut last: BTreeMap<&str, &Arc<SagaDefinition>> = BTreeMap::new();
        for ((t, _), d) in &self.definitions {
            last.insert(t, d);
        }
        last.into_values()
    }

    /// The topics every participant of every loaded saga replies on: what the orchestrator
    /// consumes.
    pub fn reply_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .all()
            .flat_map(|d| d.reply_topics.iter().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Checks a start input against the definition's schema; the problems name the failing
    /// paths (`/order_details/foodItems: [] has less than 1 item`).
    pub fn check_input(
        &self,
        def: &SagaDefinition,
        input: &serde_json::Value,
    ) -> std::result::Result<(), Vec<String>> {
        let Some(validator) = self.inputs.get(&(def.saga_type.clone(), def.version)) else {
            return Err(vec![format!("{} is not loaded", def.saga_type)]);
        };
        let mut nul = Vec::new();
        nul_paths(input, &mut String::new(), &mut nul);
        if !nul.is_empty() {
            return Err(nul
                .into_iter()
                .take(MAX_PROBLEMS)
                .map(|path| {
                    format!("{path}: contains a NUL character (U+0000), which is not stored")
                })
                .collect());
        }
        problems(validator, input)
    }

    /// Checks a reply's payload against its schema in the message contract. A reply the contract
    /// does not name passes: whether a saga awaits it is the engine's question.
    pub fn check_reply(
        &self,
        reply_type: &str,
        payload: &serde_json::Value,
    ) -> std::result::Result<(), Vec<String>> {
        match self.replies.get(reply_type) {
            Some(validator) => problems(validator, payload),
            None => Ok(()),
        }
    }

    /// The definition a stored saga runs under, or why there is none.
    pub fn of_saga(&self, state: &SagaState) -> std::result::Result<&Arc<SagaDefinition>, String> {
        self.get(&state.saga_type, state.definition_version)
            .ok_or_else(|| {
                format!(
                    "saga type {} version {} is not loaded (SAGAS_DIR); it is never run under \
                     another version: deploy that version and retry the saga",
                    state.saga_type, state.definition_version
                )
            })
    }
}

/// The JSON Pointer of every string (value or key) in `value` holding a NUL character: no
/// schema says it, yet PostgreSQL's JSON types and text columns refuse it, and no person means
/// it.
fn nul_paths(value: &serde_json::Value, at: &mut String, found: &mut Vec<String>) {
    let pointer = |at: &str| {
        if at.is_empty() {
            "/".to_string()
        } else {
            at.to_string()
        }
    };
    match value {
        serde_json::Value::String(s) if s.contains('\0') => found.push(pointer(at)),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let len = at.len();
                at.push_str(&format!("/{i}"));
                nul_paths(item, at, found);
                at.truncate(len);
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, item) in fields {
                let len = at.len();
                // RFC 6901: `~` and `/` in a key are escaped.
                at.push('/');
                at.push_str(&key.replace('~', "~0").replace('/', "~1"));
                if key.contains('\0') {
                    found.push(pointer(at));
                }
                nul_paths(item, at, found);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

/// What `validator` finds wrong with `value`, each naming its path
/// (`/order_details/foodItems: [] has less than 1 item`).
fn problems(
    validator: &jsonschema::Validator,
    value: &serde_json::Value,
) -> std::result::Result<(), Vec<String>> {
    let problems: Vec<String> = validator
        .iter_errors(value)
        .take(MAX_PROBLEMS)
        .map(|e| {
            let path = e.instance_path().to_string();
            let path = if path.is_empty() {
                "/".to_string()
            } else {
                path
            };
            format!("{path}: {e}")
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// The engine, with each saga routed to the definition it started under. A saga whose
/// definition is not loaded is parked (once) instead of being run under another.
#[derive(Debug, Clone)]
pub struct Sagas {
    pub registry: Arc<Registry>,
    pub policy: Policy,
}

impl Sagas {
    pub fn new(registry: Registry, policy: Policy) -> Self {
        Sagas {
            registry: Arc::new(registry),
            policy,
        }
    }

    fn route(
        &self,
        state: &SagaState,
        now: i64,
        run: impl FnOnce(&SagaDefinition) -> Decision,
    ) -> Decision {
        match self.registry.of_saga(state) {
            Ok(def) => run(def),
            Err(why) => engine::park_after_failures(state, now, why),
        }
    }

    pub fn on_reply(&self, state: &SagaState, reply: Reply<'_>, id: Uuid, now: i64) -> Decision {
        self.route(state, now, |d| {
            engine::on_reply(d, &self.policy, state, reply, id, now)
        })
    }

    pub fn on_timer(&self, state: &SagaState, now: i64) -> Decision {
        self.route(state, now, |d| {
            engine::on_timer(d, &self.policy, state, now)
        })
    }

    pub fn cancel(&self, state: &SagaState, now: i64) -> Decision {
        self.route(state, now, |d| engine::cancel(d, &self.policy, state, now))
    }

    /// `retry` resumes a saga parked for a missing definition once that definition is back.
    pub fn retry(&self, state: &SagaState, now: i64) -> Decision {
        match self.registry.of_saga(state) {
            Ok(def) => engine::retry(def, &self.policy, state, now),
            Err(_) => Decision::Ignored(engine::Ignored::Parked),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::saga::{CommandSpec, SagaStatus, Step};

    fn def(version: u32, command: &str) -> SagaDefinition {
        let mut d = SagaDefinition::new(
            "ship",
            vec![Step::new("s", CommandSpec::new(command, "t"), "ok", "ko")],
        );
        d.version = version;
        d.reply_topics = vec![format!("replies_{version}")];
        d
    }

    fn registry() -> Registry {
        Registry::new(vec![
            ("v1".into(), def(1, "one")),
            ("v2".into(), def(2, "two")),
        ])
        .unwrap()
    }

    #[test]
    fn new_sagas_start_under_the_newest_version() {
        let r = registry();
        assert_eq!(r.latest("ship").unwrap().version, 2);
        assert!(r.latest("shi").is_none() && r.latest("ship2").is_none());
        assert_eq!(r.types().count(), 1);
        assert_eq!(r.reply_topics(), vec!["replies_1", "replies_2"]);
    }

    #[test]
    fn an_input_is_checked_against_its_schema_naming_each_failing_path() {
        let mut d = def(1, "x");
        d.input_schema = json!({
            "type": "object",
            "required": ["qty"],
            "properties": {"qty": {"type": "integer", "minimum": 1}, "sku": {"type": "string"}}
        });
        let r = Registry::of(d.clone());
        assert!(r.check_input(&d, &json!({"qty": 2})).is_ok());
        let problems = r.check_input(&d, &json!({"qty": 0, "sku": 5})).unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.starts_with("/qty: ")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.starts_with("/sku: ")),
            "{problems:?}"
        );
        let nul = r
            .check_input(
                &d,
                &json!({"qty": 2, "sku": "a\u{0}b", "x\u{0}": [1, "\u{0}"]}),
            )
            .unwrap_err();
        assert_eq!(nul.len(), 3, "{nul:?}");
        for path in ["/sku: ", "/x\u{0}: ", "/x\u{0}/1: "] {
            assert!(
                nul.iter().any(|p| p.starts_with(path) && p.contains("NUL")),
                "{path} in {nul:?}"
            );
        }
        let missing = r.check_input(&d, &json!({})).unwrap_err();
        assert!(
            missing[0].starts_with("/: ") && missing[0].contains("qty"),
            "{missing:?}"
        );
    }

    #[test]
    fn a_reply_is_checked_against_its_contract_schema_and_an_unnamed_one_passes() {
        let contract = platform::Contract::built_in();
        let r = Registry::of(def(1, "x")).with_contract(contract).unwrap();
        let ok = json!({"payment_id": "pay_1", "extra": true});
        assert!(r.check_reply("payment.authorized", &ok).is_ok());
        let problems = r
            .check_reply("payment.authorized", &json!({"payment_id": 7}))
            .unwrap_err();
        assert!(problems[0].starts_with("/payment_id: "), "{problems:?}");
        let missing = r.check_reply("payment.authorized", &json!({})).unwrap_err();
        assert!(missing[0].contains("payment_id"), "{missing:?}");
        assert!(r.check_reply("no.such_reply", &json!(null)).is_ok());
        // Without a contract nothing is refused.
        assert!(Registry::of(def(1, "x"))
            .check_reply("payment.authorized", &json!({}))
            .is_ok());
        // A reply schema that is not JSON Schema stops the start, naming the reply.
        let mut broken = contract.clone();
        broken
            .replies
            .get_mut("payment.authorized")
            .unwrap()
            .payload = json!({"type": 5});
        let err = Registry::of(def(1, "x"))
            .with_contract(&broken)
            .unwrap_err()
            .to_string();
        assert!(err.contains("reply payment.authorized"), "{err}");
    }

    #[test]
    fn a_version_defined_twice_names_both_files() {
        let err = Registry::new(vec![
            ("a.toml".into(), def(1, "x")),
            ("b.toml".into(), def(1, "y")),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("b.toml") && err.contains("a.toml"), "{err}");
    }

    #[test]
    fn a_saga_keeps_the_version_it_started_with() {
        let sagas = Sagas::new(registry(), Policy::default());
        let (state, _) = engine::start(
            sagas.registry.get("ship", 1).unwrap(),
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        );
        assert_eq!(state.definition_version, 1);
        let pending = state.pending[0];
        let d = sagas.on_timer(&state, pending.deadline_at);
        let Decision::Applied { messages, .. } = d else {
            panic!("{d:?}")
        };
        assert_eq!(
            messages[0].envelope.message_type, "one",
            "re-sent under version 1"
        );
    }

    #[test]
    fn a_saga_whose_version_is_gone_is_parked_not_run_under_another() {
        let old = Sagas::new(registry(), Policy::default());
        let (state, _) = engine::start(
            old.registry.get("ship", 1).unwrap(),
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        );
        let only_v2 = Sagas::new(Registry::of(def(2, "two")), Policy::default());
        let reply = json!({});
        let d = only_v2.on_reply(
            &state,
            Reply {
                message_type: "ok",
                causation_id: Some(state.pending[0].command_id),
                payload: &reply,
            },
            Uuid::new_v4(),
            5,
        );
        let Decision::Applied {
            state: parked,
            messages,
        } = d
        else {
            panic!("{d:?}")
        };
        assert!(messages.is_empty());
        assert!(parked
            .parked
            .as_deref()
            .unwrap()
            .contains("version 1 is not loaded"));
        assert_eq!(parked.status, SagaStatus::Started);
        assert_eq!(parked.next_wake(), None, "no deadline brings it back");
        // Retry does nothing until the version is back, then resumes it under that version.
        assert!(matches!(only_v2.retry(&parked, 6), Decision::Ignored(_)));
        let Decision::Applied {
            state: resumed,
            messages,
        } = old.retry(&parked, 7)
        else {
            panic!()
        };
        assert!(resumed.parked.is_none());
        assert_eq!(
            messages[0].envelope.message_type, "one",
            "re-sent under version 1"
        );
    }
}
