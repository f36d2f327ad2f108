//! Every saga type the orchestrator runs, at every version it was given.
//!
//! A new saga starts under the newest version of its type; a stored saga is driven by the
//! version it started with, for as long as it runs, even after a newer one is deployed.
//!
//! Every instance records the definitions it was given in the database (see
//! [`SagaStore::deploy`](crate::store::SagaStore::deploy)); a saga of a version this instance was
//! not given (another instance's rolling deploy brought it, or it was dropped from this one's
//! files) runs under that stored copy, learnt when the saga is first met. Only a version no
//! instance ever recorded, or one this instance's contract refuses, parks a saga (see
//! [`engine::park`](super::engine)): it is never run under another version, and `retry` resumes
//! it once the version is back.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

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
    /// The topics the definitions were resolved against: stored definitions are read with them.
    topics: Option<platform::Topics>,
    /// Each loaded definition's file and text, as they are recorded in the database.
    sources: BTreeMap<(String, u32), (String, String)>,
    /// Definitions this instance was not given, learnt from the database. They run stored sagas;
    /// new sagas start only under the given ones.
    learnt: RwLock<BTreeMap<(String, u32), Arc<SagaDefinition>>>,
    /// Stored definitions this instance cannot run, and why (its contract refuses them).
    refused: RwLock<BTreeMap<(String, u32), String>>,
}

/// A definition as the database records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Deployed {
    pub saga_type: String,
    pub version: u32,
    pub file: String,
    pub source: String,
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

    /// The registry remembering each definition's file and text and the topics they were read
    /// with, so they can be recorded and other instances' definitions read alike.
    pub(super) fn with_sources(
        mut self,
        topics: &platform::Topics,
        sources: BTreeMap<(String, u32), (String, String)>,
    ) -> Self {
        self.sources = sources;
        self.topics = Some(topics.clone());
        self
    }

    /// The loaded definitions with the text to record of each (those read from files).
    pub fn deployed(&self) -> Vec<Deployed> {
        self.sources
            .iter()
            .map(|((saga_type, version), (file, source))| Deployed {
                saga_type: saga_type.clone(),
                version: *version,
                file: file.clone(),
                source: source.clone(),
            })
            .collect()
    }

    /// Whether a saga of `saga_type` at `version` has its definition here (given or learnt), or
    /// is known to be refused: nothing to look up in the database.
    pub fn knows(&self, saga_type: &str, version: u32) -> bool {
        let key = (saga_type.to_string(), version);
        self.definitions.contains_key(&key)
            || read(&self.learnt).contains_key(&key)
            || read(&self.refused).contains_key(&key)
    }

    /// Whether a recorded text means what this instance was given under the same version
    /// (another text may differ only in comments or layout).
    pub fn reads_as_given(&self, stored: &Deployed) -> bool {
        let (Some(topics), Some(given)) =
            (&self.topics, self.get(&stored.saga_type, stored.version))
        else {
            return false;
        };
        super::file::parse(&stored.file, &stored.source, topics, &self.contract)
            .is_ok_and(|def| def == **given)
    }

    /// Reads a definition another instance recorded, with this instance's topics and contract,
    /// and keeps it for the sagas that run under it. One this instance cannot run is remembered
    /// with why, which a saga parked for it then says.
    pub fn learn(&self, stored: &Deployed) {
        let key = (stored.saga_type.clone(), stored.version);
        if self.knows(&key.0, key.1) {
            return;
        }
        let read_back = match &self.topics {
            Some(topics) => {
                super::file::parse(&stored.file, &stored.source, topics, &self.contract)
                    .map_err(|e| e.to_string())
                    .and_then(|def| {
                        if (def.saga_type.as_str(), def.version) == (key.0.as_str(), key.1) {
                            Ok(def)
                        } else {
                            Err(format!(
                                "the text recorded for {} version {} defines {} version {}",
                                key.0, key.1, def.saga_type, def.version
                            ))
                        }
                    })
            }
            None => Err("definitions were not read from files here".to_string()),
        };
        match read_back {
            Ok(def) => {
                tracing::info!(
                    saga_type = %key.0,
                    version = key.1,
                    file = %stored.file,
                    "saga definition learnt from the database (deployed by another instance)"
                );
                write(&self.learnt).insert(key, Arc::new(def));
            }
            Err(problem) => {
                tracing::error!(
                    saga_type = %key.0,
                    version = key.1,
                    %problem,
                    "a saga definition recorded in the database cannot run here; its sagas are parked"
                );
                write(&self.refused).insert(key, problem);
            }
        }
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
        let mut refused: Vec<String> = Vec::new();
        if let serde_json::Value::Object(fields) = input {
            for key in fields.keys() {
                let at = format!("/{}", key.replace('~', "~0").replace('/', "~1"));
                if let Some(function) = def.computed.get(key) {
                    refused.push(format!(
                        "{at}: computed by the saga ({function}) from the rest of the input; \
                         leave it out"
                    ));
                } else if let Some(step) = def.steps.iter().find(|s| s.receive.contains(key)) {
                    refused.push(format!(
                        "{at}: set by the reply to step {}; a start input cannot set it",
                        step.name
                    ));
                }
            }
        }
        if let Err(more) = problems(validator, input) {
            refused.extend(more);
        }
        refused.truncate(MAX_PROBLEMS);
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused)
        }
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

    /// The definition a stored saga runs under (given, or learnt from the database), or why
    /// there is none.
    pub fn of_saga(&self, state: &SagaState) -> std::result::Result<Arc<SagaDefinition>, String> {
        self.of_saga_type(&state.saga_type, state.definition_version)
    }

    /// [`Self::of_saga`] by type and version.
    pub fn of_saga_type(
        &self,
        saga_type: &str,
        version: u32,
    ) -> std::result::Result<Arc<SagaDefinition>, String> {
        let key = (saga_type.to_string(), version);
        if let Some(def) = self.definitions.get(&key) {
            return Ok(def.clone());
        }
        if let Some(def) = read(&self.learnt).get(&key) {
            return Ok(def.clone());
        }
        let why = match read(&self.refused).get(&key) {
            Some(problem) => format!("its recorded definition cannot run here: {problem}"),
            None => "no instance recorded it in the database".to_string(),
        };
        Err(format!(
            "saga type {saga_type} version {version} is not loaded (SAGAS_DIR) and {why}; it is \
             never run under another version: deploy that version and retry the saga"
        ))
    }
}

/// A poisoned lock only means a panic elsewhere held it; the maps stay consistent (one insert).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
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
            Ok(def) => run(&def),
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
            Ok(def) => engine::retry(&def, &self.policy, state, now),
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

    #[test]
    fn a_recorded_version_is_learnt_with_the_local_contract_and_one_it_refuses_says_why() {
        let topics = platform::Topics::load(None).unwrap();
        let contract = platform::Contract::built_in();
        let given = crate::saga::SagasSource::BuiltIn
            .load(&topics, contract)
            .unwrap();
        let recorded = given.deployed();
        let v1 = recorded
            .iter()
            .find(|d| d.saga_type == "create_order")
            .unwrap();
        assert!(given.reads_as_given(v1), "the given text reads as given");
        let commented = Deployed {
            source: format!("# a comment\n{}", v1.source),
            ..v1.clone()
        };
        assert!(given.reads_as_given(&commented));
        let changed = Deployed {
            source: v1
                .source
                .replacen("[[steps]]", "[[steps]]\ntimeout = \"9s\"", 1),
            ..v1.clone()
        };
        assert!(!given.reads_as_given(&changed));

        let v2 = Deployed {
            version: 2,
            source: v1.source.replace("version = 1", "version = 2"),
            ..v1.clone()
        };
        let (mut state, _) = engine::start(
            given.latest("create_order").unwrap(),
            &Policy::default(),
            Uuid::new_v4(),
            Default::default(),
            0,
        );
        state.definition_version = 2;
        assert!(!given.knows("create_order", 2));
        let missing = given.of_saga(&state).unwrap_err();
        assert!(missing.contains("no instance recorded it"), "{missing}");
        given.learn(&v2);
        assert!(given.knows("create_order", 2));
        assert_eq!(given.of_saga(&state).unwrap().version, 2);
        assert_eq!(
            given.latest("create_order").unwrap().version,
            1,
            "a learnt version runs stored sagas, it starts none"
        );

        // A text whose version is not the one it is recorded under, and one naming a command
        // the contract lacks: refused, and the reason is what a parked saga says.
        let mislabelled = Deployed {
            version: 3,
            ..v1.clone()
        };
        given.learn(&mislabelled);
        state.definition_version = 3;
        let why = given.of_saga(&state).unwrap_err();
        assert!(why.contains("defines create_order version 1"), "{why}");
        let unknown = Deployed {
            version: 4,
            source: v1.source.replace("version = 1", "version = 4").replacen(
                "command = \"create_order\"",
                "command = \"no_such_command\"",
                1,
            ),
            ..v1.clone()
        };
        given.learn(&unknown);
        state.definition_version = 4;
        let why = given.of_saga(&state).unwrap_err();
        assert!(why.contains("cannot run here"), "{why}");
    }
}
