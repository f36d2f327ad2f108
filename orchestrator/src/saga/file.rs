//! Saga definitions as files: `sagas/*.toml`, read at start.
//!
//! TOML, because a definition is written and reviewed by people: it has comments (why a step is
//! there, why its timeout), no significant indentation, and it maps one to one onto JSON, so the
//! input's JSON Schema is written inline. A file names commands as `messages.toml` declares them
//! and takes their topics and replies from there; everything it says is checked before the
//! orchestrator starts, and a mistake stops the start with one line naming the file, the step and
//! the problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use platform::contract::CommandContract;
use platform::{Contract, Topics};

use super::definition::{CommandSpec, Compensation, SagaDefinition, Step, Timing};
use super::registry::Registry;
use crate::{Error, Result};

/// The definitions in the repository's `sagas/` folder, compiled in (see `build.rs`).
pub const BUILT_IN: &[(&str, &str)] = include!(concat!(env!("OUT_DIR"), "/built_in_sagas.rs"));

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SagaFile {
    saga: String,
    version: u32,
    #[serde(default)]
    description: String,
    /// topics.json role of the lifecycle events.
    events: Option<String>,
    deadline: Option<String>,
    #[serde(default = "any_object")]
    input: Value,
    /// Input fields computed from the rest of the input (field → function).
    #[serde(default)]
    computed: BTreeMap<String, String>,
    #[serde(default)]
    steps: Vec<StepFile>,
}

fn any_object() -> Value {
    serde_json::json!({"type": "object"})
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    name: Option<String>,
    command: Option<String>,
    #[serde(default)]
    send: Vec<String>,
    #[serde(default)]
    args: Map<String, Value>,
    #[serde(default)]
    receive: Vec<String>,
    timeout: Option<String>,
    max_timeout: Option<String>,
    attempts: Option<u32>,
    compensation: Option<CompensationFile>,
    /// Why the step needs no compensation though it comes before the pivot.
    nothing_to_undo: Option<String>,
    /// The saga's point of no return.
    #[serde(default)]
    pivot: bool,
    /// Members sent together; the entry is then a group with only a `name`.
    parallel: Option<Vec<StepFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CompensationFile {
    name: Option<String>,
    command: String,
    #[serde(default)]
    send: Vec<String>,
    #[serde(default)]
    args: Map<String, Value>,
    timeout: Option<String>,
    max_timeout: Option<String>,
    retry_delay: Option<String>,
}

/// Where definitions come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SagasSource {
    /// Every `*.toml` in a folder.
    Dir(PathBuf),
    /// The files compiled into the binary.
    BuiltIn,
}

impl SagasSource {
    /// `SAGAS_DIR` when set; else `./sagas` when there is one; else the compiled-in files.
    pub fn resolve(setting: Option<PathBuf>) -> Self {
        match setting {
            Some(dir) => SagasSource::Dir(dir),
            None if Path::new("sagas").is_dir() => SagasSource::Dir("sagas".into()),
            None => SagasSource::BuiltIn,
        }
    }

    /// Reads and checks every definition.
    pub fn load(&self, topics: &Topics, contract: &Contract) -> Result<Registry> {
        let files = match self {
            SagasSource::BuiltIn => BUILT_IN
                .iter()
                .map(|(name, text)| (format!("{name} (built in)"), text.to_string()))
                .collect(),
            SagasSource::Dir(dir) => read_dir(dir)?,
        };
        let mut definitions = Vec::new();
        let mut sources = BTreeMap::new();
        for (file, text) in files {
            let def = parse(&file, &text, topics, contract)?;
            sources.insert((def.saga_type.clone(), def.version), (file.clone(), text));
            definitions.push((file, def));
        }
        Ok(Registry::new(definitions)?
            .with_contract(contract)?
            .with_sources(topics, sources))
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, String)>> {
    let unreadable = |e: std::io::Error| Error::Definition {
        file: dir.display().to_string(),
        problem: format!("cannot read the folder: {e}"),
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(unreadable)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(Error::Definition {
            file: dir.display().to_string(),
            problem: "no saga definitions (*.toml) in this folder".into(),
        });
    }
    paths
        .into_iter()
        .map(|p| {
            let file = p.display().to_string();
            std::fs::read_to_string(&p)
                .map(|text| (file.clone(), text))
                .map_err(|e| Error::Definition {
                    file,
                    problem: format!("cannot read: {e}"),
                })
        })
        .collect()
}

/// Parses and checks one definition; `file` names it in errors.
pub fn parse(
    file: &str,
    text: &str,
    topics: &Topics,
    contract: &Contract,
) -> Result<SagaDefinition> {
    let fail = |problem: String| Error::Definition {
        file: file.to_string(),
        problem,
    };
    let doc: SagaFile = toml::from_str(text).map_err(|e| fail(toml_problem(text, &e)))?;
    Checker {
        topics,
        contract,
        replies: BTreeMap::new(),
        names: BTreeSet::new(),
        input_fields: BTreeSet::new(),
        computed: BTreeSet::new(),
        reply_topics: Vec::new(),
    }
    .definition(doc)
    .map_err(fail)
}

/// A TOML error on one line: where, and what.
fn toml_problem(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .map(|s| {
            format!(
                "line {}: ",
                text[..s.start.min(text.len())].lines().count().max(1)
            )
        })
        .unwrap_or_default();
    format!("{line}{}", e.message().trim().replace('\n', " "))
}

/// Checks a parsed file step by step, remembering what earlier steps declared.
struct Checker<'a> {
    topics: &'a Topics,
    contract: &'a Contract,
    /// Every reply the saga waits for, and who waits for it.
    replies: BTreeMap<String, String>,
    /// Step and compensation names so far.
    names: BTreeSet<String>,
    /// The fields the input schema declares, and those the saga computes.
    input_fields: BTreeSet<String>,
    computed: BTreeSet<String>,
    reply_topics: Vec<String>,
}

type Checked<T> = std::result::Result<T, String>;

impl<'a> Checker<'a> {
    fn definition(mut self, doc: SagaFile) -> Checked<SagaDefinition> {
        let valid_name = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if !valid_name(&doc.saga) {
            return Err(format!(
                "saga {:?}: a saga type is 1 to 64 of a-z, 0-9 and _ (it is part of URLs)",
                doc.saga
            ));
        }
        if doc.version == 0 {
            return Err("version must be 1 or more".into());
        }
        let lifecycle_topic = match &doc.events {
            Some(role) => Some(self.topic(role).map_err(|p| format!("events: {p}"))?),
            None => None,
        };
        let deadline_ms = duration(&doc.deadline, "deadline")?;
        let mut known = input_fields(&doc.input)?;
        self.input_fields = known.clone();
        for (field, function) in &doc.computed {
            if !super::computed::exists(function) {
                return Err(format!(
                    "computed {field}: no function {function:?}; there are: {}",
                    super::computed::FUNCTIONS
                        .iter()
                        .map(|(name, what)| format!("{name} ({what})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if known.contains(field) {
                return Err(format!(
                    "computed {field}: the input schema declares it too; a computed field is \
                     never taken from a client, so leave it out of the schema"
                ));
            }
            known.insert(field.clone());
        }
        self.computed = doc.computed.keys().cloned().collect();
        if doc.steps.is_empty() {
            return Err("a saga needs at least one step".into());
        }
        let mut steps: Vec<Step> = Vec::new();
        let mut pivot: Option<usize> = None;
        for entry in doc.steps {
            let Some(members) = entry.parallel else {
                if entry.pivot {
                    if let Some(p) = pivot {
                        let name = entry.name.clone().or(entry.command.clone());
                        return Err(format!(
                            "step {}: a saga has one pivot, and {} is already it",
                            name.unwrap_or_default(),
                            steps[p].name
                        ));
                    }
                    pivot = Some(steps.len());
                }
                let step = self.step(entry, &known, None)?;
                known.extend(step.receive.iter().cloned());
                steps.push(step);
                continue;
            };
            let group = entry
                .name
                .clone()
                .ok_or("a parallel group needs a name".to_string())?;
            if entry.pivot || members.iter().any(|m| m.pivot) {
                return Err(format!(
                    "group {group}: the pivot is one step, not part of a parallel group (if one \
                     member failed while another had passed the point of no return, the saga \
                     could neither be undone nor go on)"
                ));
            }
            if entry.command.is_some()
                || entry.compensation.is_some()
                || entry.nothing_to_undo.is_some()
                || !entry.send.is_empty()
            {
                return Err(format!(
                    "group {group}: a group has only a name and its parallel members"
                ));
            }
            if members.len() < 2 {
                return Err(format!(
                    "group {group}: a parallel group needs two members or more"
                ));
            }
            if !self.names.insert(group.clone()) {
                return Err(format!("group {group}: the name is used twice"));
            }
            // Members run at the same time: none may send what a sibling receives.
            let mut received = Vec::new();
            for member in members {
                if member.parallel.is_some() {
                    return Err(format!("group {group}: groups do not nest"));
                }
                let step = self.step(member, &known, Some(&group))?;
                received.extend(step.receive.iter().cloned());
                steps.push(step);
            }
            known.extend(received);
        }
        check_structure(&steps, pivot)?;
        Ok(SagaDefinition {
            saga_type: doc.saga,
            version: doc.version,
            description: doc.description,
            input_schema: doc.input,
            computed: doc.computed,
            steps,
            lifecycle_topic,
            deadline_ms,
            reply_topics: self.reply_topics,
            pivot,
        })
    }

    fn step(
        &mut self,
        entry: StepFile,
        known: &BTreeSet<String>,
        group: Option<&str>,
    ) -> Checked<Step> {
        let command = entry.command.ok_or_else(|| match &entry.name {
            Some(n) => format!("step {n}: needs a command (or parallel members)"),
            None => "a step needs a command".to_string(),
        })?;
        let name = entry.name.unwrap_or_else(|| command.clone());
        let at = |p: String| format!("step {name}: {p}");
        if !self.names.insert(name.clone()) {
            return Err(at("the name is used twice".into()));
        }
        let contract = self.command(&command).map_err(at)?;
        let spec = self
            .spec(&command, contract, entry.send, entry.args, known)
            .map_err(at)?;
        let success_schema = self
            .contract
            .replies
            .get(&contract.success)
            .map(|r| &r.payload);
        for field in &entry.receive {
            if self.input_fields.contains(field) || self.computed.contains(field) {
                return Err(at(format!(
                    "receives `{field}`, which the input declares: a start input cannot set a \
                     field a step receives (compensations would undo what the client named)"
                )));
            }
            if !success_schema.is_some_and(|s| declares(s, field)) {
                return Err(at(format!(
                    "receives `{field}`, which reply {} does not declare in messages.toml",
                    contract.success
                )));
            }
        }
        self.expect_replies(&name, contract).map_err(at)?;
        if entry.attempts == Some(0) {
            return Err(at("attempts must be 1 or more".into()));
        }
        let timing = Timing {
            timeout_ms: duration(&entry.timeout, "timeout").map_err(at)?,
            max_timeout_ms: duration(&entry.max_timeout, "max_timeout").map_err(at)?,
            attempts: entry.attempts,
            retry_delay_ms: None,
        };
        let compensation = match entry.compensation {
            None => None,
            Some(c) => {
                // A compensation also runs when its step's reply never came: it may send what
                // the step receives, and gets nothing for the fields that did not arrive.
                let mut visible = known.clone();
                visible.extend(entry.receive.iter().cloned());
                Some(self.compensation(&name, c, &visible).map_err(at)?)
            }
        };
        if entry
            .nothing_to_undo
            .as_deref()
            .is_some_and(|w| w.trim().is_empty())
        {
            return Err(at("nothing_to_undo says why, in words".into()));
        }
        Ok(Step {
            name,
            command: spec,
            on_success: contract.success.clone(),
            on_failure: contract.failure.clone(),
            receive: entry.receive,
            compensation,
            timing,
            group: group.map(str::to_string),
            nothing_to_undo: entry.nothing_to_undo,
        })
    }

    fn compensation(
        &mut self,
        step: &str,
        c: CompensationFile,
        known: &BTreeSet<String>,
    ) -> Checked<Compensation> {
        let name = c.name.unwrap_or_else(|| c.command.clone());
        let at = |p: String| format!("compensation {name}: {p}");
        if !self.names.insert(name.clone()) {
            return Err(at("the name is used twice".into()));
        }
        let contract = self.command(&c.command).map_err(at)?;
        let spec = self
            .spec(&c.command, contract, c.send, c.args, known)
            .map_err(at)?;
        self.expect_replies(&format!("the compensation of {step}"), contract)
            .map_err(at)?;
        Ok(Compensation {
            name: name.clone(),
            command: spec,
            on_success: contract.success.clone(),
            on_failure: Some(contract.failure.clone()),
            timing: Timing {
                timeout_ms: duration(&c.timeout, "timeout").map_err(at)?,
                max_timeout_ms: duration(&c.max_timeout, "max_timeout").map_err(at)?,
                attempts: None,
                retry_delay_ms: duration(&c.retry_delay, "retry_delay").map_err(at)?,
            },
        })
    }

    fn command(&mut self, command: &str) -> Checked<&'a CommandContract> {
        let all: &'a Contract = self.contract;
        let contract = all.command(command).ok_or_else(|| {
            format!("command {command:?} is not in messages.toml (declare it there first)")
        })?;
        let reply_topic = self.topic(&contract.reply_topic)?;
        if !self.reply_topics.contains(&reply_topic) {
            self.reply_topics.push(reply_topic);
        }
        Ok(contract)
    }

    /// The command as sent: its topic, and the fields it carries — each one known by then, and
    /// every field the command requires among them.
    fn spec(
        &self,
        command: &str,
        contract: &CommandContract,
        send: Vec<String>,
        args: Map<String, Value>,
        known: &BTreeSet<String>,
    ) -> Checked<CommandSpec> {
        for field in &send {
            if !known.contains(field) {
                return Err(format!(
                    "sends `{field}`, which is neither in the input schema's properties nor \
                     received by an earlier step"
                ));
            }
            if args.contains_key(field) {
                return Err(format!("`{field}` is both sent and a fixed arg"));
            }
        }
        let required = contract.payload.get("required").and_then(Value::as_array);
        for field in required.into_iter().flatten().filter_map(Value::as_str) {
            if !send.iter().any(|f| f == field) && !args.contains_key(field) {
                return Err(format!(
                    "command {command} requires `{field}` (messages.toml); add it to send or args"
                ));
            }
        }
        Ok(CommandSpec {
            command_type: command.to_string(),
            topic: self.topic(&contract.topic)?,
            send,
            args,
        })
    }

    /// Each reply the saga waits for answers one thing: a reply shared by two steps, or by a
    /// step and a compensation, could not tell them apart in the history or the contract.
    fn expect_replies(&mut self, who: &str, contract: &CommandContract) -> Checked<()> {
        for reply in [&contract.success, &contract.failure] {
            if let Some(other) = self.replies.insert(reply.clone(), who.to_string()) {
                return Err(format!(
                    "reply {reply} would answer both {other} and {who} (a command used twice?)"
                ));
            }
        }
        Ok(())
    }

    fn topic(&self, role: &str) -> Checked<String> {
        self.topics
            .role(role)
            .map(|t| t.name.clone())
            .ok_or_else(|| format!("topic role {role:?} is not in topics.json"))
    }
}

/// Whether the saga can be undone safely wherever it fails (Garcia-Molina and Salem): every step
/// before the pivot is undone by its compensation or says why it has nothing to undo, the pivot
/// itself cannot be undone, and every step after it is retried until it succeeds, so none of
/// them may have a compensation (it could never run). Without a pivot, every step is before it.
fn check_structure(steps: &[Step], pivot: Option<usize>) -> Checked<()> {
    for (i, step) in steps.iter().enumerate() {
        let at = |p: String| format!("step {}: {p}", step.name);
        let undoable = step.compensation.is_some();
        match pivot {
            Some(p) if i == p => {
                if undoable {
                    return Err(at(
                        "the pivot is the step that cannot be undone, yet it has a \
                                   compensation: drop `pivot`, or the compensation"
                            .into(),
                    ));
                }
                if step.nothing_to_undo.is_some() {
                    return Err(at(
                        "the pivot needs no nothing_to_undo: it is the step that \
                                   cannot be undone"
                            .into(),
                    ));
                }
            }
            Some(p) if i > p => {
                let pivot = &steps[p].name;
                if undoable {
                    return Err(at(format!(
                        "comes after the pivot {pivot}, so it is retried until done and never \
                         undone: its compensation could never run (move the step before the \
                         pivot, or drop the compensation)"
                    )));
                }
                if step.nothing_to_undo.is_some() {
                    return Err(at(format!(
                        "comes after the pivot {pivot}, where nothing is undone: drop \
                         nothing_to_undo"
                    )));
                }
            }
            _ => {
                if undoable && step.nothing_to_undo.is_some() {
                    return Err(at(
                        "has a compensation and says nothing_to_undo: keep one".into()
                    ));
                }
                if !undoable && step.nothing_to_undo.is_none() {
                    let before = match pivot {
                        Some(p) => format!("comes before the pivot {}", steps[p].name),
                        None => "is in a saga without a pivot".to_string(),
                    };
                    return Err(at(format!(
                        "{before} but has no compensation: a later failure could not undo it. \
                         Add a compensation, say why there is nothing to undo \
                         (nothing_to_undo = \"a lookup\"), or mark the step that cannot be \
                         undone as the saga's pivot (pivot = true)"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// The top-level fields the input schema declares: what the first step may send.
fn input_fields(schema: &Value) -> Checked<BTreeSet<String>> {
    if schema.get("type").and_then(Value::as_str) != Some("object") {
        return Err("input: the input schema must have type = \"object\"".into());
    }
    jsonschema::validator_for(schema)
        .map_err(|e| format!("input: not a valid JSON Schema: {e}"))?;
    Ok(schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default())
}

/// Whether an object schema lists `field` among its properties (a schema that lists none
/// declares nothing, so every field is unknown).
fn declares(schema: &Value, field: &str) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key(field))
}

/// A duration in milliseconds, the engine's unit: one under 1 ms would become 0, a deadline
/// due at once, forever, so it is refused.
fn duration(value: &Option<String>, key: &str) -> Checked<Option<i64>> {
    value
        .as_deref()
        .map(|v| {
            let d = platform::time::parse_duration_setting(v).map_err(|e| format!("{key}: {e}"))?;
            if d < std::time::Duration::from_millis(1) {
                return Err(format!(
                    "{key}: {v:?} is under the 1 ms the engine counts in"
                ));
            }
            Ok(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        })
        .transpose()
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
