//! Which saga outcome sends what, to whom: `notifications.toml` and its templates, read and
//! checked at start.
//!
//! A rule names a saga type (or `*`), the lifecycle events it answers (`saga.completed`, ...),
//! who is told (`customer`: an email to the saga's customer; `operators`: an alert) and a
//! template: `templates/<name>.subject.txt`, `<name>.txt` and, for email, `<name>.html`. A
//! template may name only fields that exist: `saga.*`, `customer.*` and `context.<field>` where
//! the saga type declares the field (its input, computed fields, or what a step receives). One
//! that names anything else stops the start, naming the template and the field, so nothing
//! fails at send time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result};

/// The fields each saga type's data (`context`) can hold: its input's properties, its computed
/// fields and what its steps receive. Given by whoever loaded the saga definitions.
pub type SagaFields = BTreeMap<String, BTreeSet<String>>;

/// Who a rule tells, and so the channel it goes by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// An email to the saga's customer (`context.customer_id`'s address).
    Customer,
    /// An alert to the operators (webhook), on a channel of its own.
    Operators,
}

impl Audience {
    pub const ALL: [Audience; 2] = [Audience::Customer, Audience::Operators];

    /// The topics.json role of the channel (its retry tiers are `{role}_retry_...`).
    pub fn channel(self) -> &'static str {
        match self {
            Audience::Customer => "mail",
            Audience::Operators => "alerts",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// The From of every email.
    from: String,
    /// The topics.json role of the lifecycle events the rules answer.
    events: String,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    saga: String,
    on: Vec<String>,
    to: Audience,
    template: String,
}

/// One rule, its templates loaded.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// A saga type, or `*` for every one.
    pub saga: String,
    pub on: Vec<String>,
    pub to: Audience,
    pub template: String,
}

/// Every rule, the templates compiled.
#[derive(Debug)]
pub struct Rules {
    pub from: String,
    /// The role of the lifecycle topic.
    pub events: String,
    pub rules: Vec<Rule>,
    env: Environment<'static>,
}

/// What a template is rendered with.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    pub saga: SagaFacts,
    pub customer: Option<Contact>,
    /// The saga's data: its input and what its steps replied.
    pub context: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SagaFacts {
    pub id: String,
    #[serde(rename = "type")]
    pub saga_type: String,
    pub status: String,
    /// The lifecycle event (`saga.completed`).
    pub event: String,
    /// Why it did not complete, in the participant's words (`card declined`); empty when it
    /// completed.
    pub reason: String,
    /// The saga's error as stored, with the step (`authorize_payment failed: card declined`):
    /// for operators.
    pub error: String,
}

impl SagaFacts {
    /// The facts of an ended saga; `error` is the saga's error as the orchestrator stored it.
    pub fn new(
        id: String,
        saga_type: String,
        status: String,
        event: String,
        error: String,
    ) -> Self {
        // "<step> failed: <reason>": the customer is told the reason, not the step's name.
        let reason = match error.split_once(" failed: ") {
            Some((step, reason)) if !step.contains(' ') => reason.to_string(),
            _ => error.clone(),
        };
        SagaFacts {
            id,
            saga_type,
            status,
            event,
            reason,
            error,
        }
    }
}

/// A customer's address, from the user service's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Contact {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// The fields a template may name under `saga` and `customer`.
const SAGA_FIELDS: [&str; 6] = ["id", "type", "status", "event", "reason", "error"];
const CUSTOMER_FIELDS: [&str; 3] = ["id", "email", "name"];

/// The lifecycle events a rule may answer: the ones that end a saga.
pub const OUTCOMES: [&str; 4] = [
    "saga.completed",
    "saga.compensated",
    "saga.cancelled",
    "saga.failed",
];

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: Option<String>,
}

impl Rules {
    /// Reads `dir/notifications.toml` and its templates, checking every template against the
    /// fields of the saga types it serves.
    pub fn load(dir: &Path, fields: &SagaFields) -> Result<Self> {
        let path = dir.join("notifications.toml");
        let text = read(&path)?;
        let file: File = toml::from_str(&text).map_err(|e| Error::Notifications {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let mut env = Environment::new();
        // Whitespace as written, but no blank line where a block tag stood.
        env.set_trim_blocks(true);
        let mut rules = Vec::new();
        for r in file.rules {
            let bad = |reason: String| Error::Notifications {
                file: path.display().to_string(),
                reason: format!("rule {:?}: {reason}", r.name),
            };
            if let Some(event) = r.on.iter().find(|e| !OUTCOMES.contains(&e.as_str())) {
                return Err(bad(format!(
                    "on {event:?}: a rule answers the events that end a saga ({})",
                    OUTCOMES.join(", ")
                )));
            }
            let known: BTreeSet<String> = if r.saga == "*" {
                // Only what every saga type has.
                let mut sets = fields.values();
                let first = sets.next().cloned().unwrap_or_default();
                sets.fold(first, |acc, s| acc.intersection(s).cloned().collect())
            } else if let Some(known) = fields.get(&r.saga) {
                known.clone()
            } else {
                // A deployment that runs other sagas (SAGAS_DIR) keeps the shipped rules: the
                // rules of a type not deployed here never fire, and are said so once.
                tracing::warn!(
                    file = %path.display(),
                    rule = %r.name,
                    saga = %r.saga,
                    deployed = %fields.keys().cloned().collect::<Vec<_>>().join(", "),
                    "a notification rule for a saga type not deployed here is left out"
                );
                continue;
            };
            if r.to == Audience::Customer && !known.contains("customer_id") {
                return Err(bad(format!(
                    "to = \"customer\" needs a customer_id in the saga's data, which {} has not",
                    r.saga
                )));
            }
            let mut parts = vec!["subject.txt", "txt"];
            if r.to == Audience::Customer {
                parts.push("html");
            }
            for part in parts {
                let name = format!("{}.{part}", r.template);
                let file = dir.join("templates").join(&name);
                let source = read(&file)?;
                env.add_template_owned(name.clone(), source)
                    .map_err(|e| template_error(&file, e.to_string()))?;
                let template = env
                    .get_template(&name)
                    .map_err(|e| template_error(&file, e.to_string()))?;
                for var in template.undeclared_variables(true) {
                    check_field(&var, &known).map_err(|why| template_error(&file, why))?;
                }
            }
            rules.push(Rule {
                name: r.name,
                saga: r.saga,
                on: r.on,
                to: r.to,
                template: r.template,
            });
        }
        Ok(Rules {
            from: file.from,
            events: file.events,
            rules,
            env,
        })
    }

    /// The rules a saga type's event sets off.
    pub fn matching<'a>(
        &'a self,
        saga_type: &'a str,
        event: &'a str,
    ) -> impl Iterator<Item = &'a Rule> {
        self.rules.iter().filter(move |r| {
            (r.saga == "*" || r.saga == saga_type) && r.on.iter().any(|e| e == event)
        })
    }

    /// Renders `rule`'s templates with `facts`.
    pub fn render(&self, rule: &Rule, facts: &Facts) -> Result<Rendered> {
        let render = |part: &str| -> Result<String> {
            let name = format!("{}.{part}", rule.template);
            self.env
                .get_template(&name)
                .and_then(|t| t.render(facts))
                .map_err(|e| Error::Notifications {
                    file: name,
                    reason: e.to_string(),
                })
        };
        let subject = render("subject.txt")?;
        Ok(Rendered {
            // A header is one line.
            subject: subject.split_whitespace().collect::<Vec<_>>().join(" "),
            text: render("txt")?,
            html: match rule.to {
                Audience::Customer => Some(render("html")?),
                Audience::Operators => None,
            },
        })
    }
}

/// Whether a template's variable (`saga.id`, `context.order_id.x`) names a field that exists.
fn check_field(var: &str, context_fields: &BTreeSet<String>) -> Result<(), String> {
    let mut parts = var.split('.');
    let root = parts.next().unwrap_or_default();
    let field = parts.next();
    let ok = match (root, field) {
        ("saga", None) | ("customer", None) | ("context", None) => true,
        ("saga", Some(f)) => SAGA_FIELDS.contains(&f),
        ("customer", Some(f)) => CUSTOMER_FIELDS.contains(&f),
        ("context", Some(f)) => context_fields.contains(f),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "names {var:?}, which no saga it serves has (saga.{{{}}}, customer.{{{}}}, context.{{{}}})",
            SAGA_FIELDS.join(","),
            CUSTOMER_FIELDS.join(","),
            context_fields.iter().cloned().collect::<Vec<_>>().join(",")
        ))
    }
}

fn template_error(file: &Path, reason: String) -> Error {
    Error::Notifications {
        file: file.display().to_string(),
        reason,
    }
}

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Notifications {
        file: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../sagas/notifications")
    }

    fn fields() -> SagaFields {
        let set = |f: &[&str]| f.iter().map(|s| s.to_string()).collect();
        SagaFields::from([
            (
                "create_order".to_string(),
                set(&[
                    "customer_id",
                    "order_details",
                    "amount_cents",
                    "order_id",
                    "payment_method_id",
                    "payment_id",
                ]),
            ),
            (
                "refund_order".to_string(),
                set(&[
                    "order_id",
                    "payment_id",
                    "customer_id",
                    "reason",
                    "amount_cents",
                ]),
            ),
        ])
    }

    fn facts(status: &str, event: &str, error: &str) -> Facts {
        Facts {
            saga: SagaFacts::new(
                "s-1".into(),
                "create_order".into(),
                status.into(),
                event.into(),
                error.into(),
            ),
            customer: Some(Contact {
                id: "c-1".into(),
                email: "c-1@customers.example".into(),
                name: "c-1".into(),
            }),
            context: json!({
                "customer_id": "c-1",
                "order_id": "o-9",
                "amount_cents": 2800,
                "order_details": {"foodItems": [{"name": "Burger <XL>", "price": 12.5, "quantity": 2}], "deliveryFee": 3},
            })
            .as_object()
            .cloned()
            .unwrap(),
        }
    }

    #[test]
    fn the_shipped_rules_load_and_render_each_outcome() {
        let rules = Rules::load(&shipped(), &fields()).unwrap();
        let names = |t: &'static str, e: &'static str| -> Vec<String> {
            rules.matching(t, e).map(|r| r.name.clone()).collect()
        };
        assert_eq!(names("create_order", "saga.completed"), ["order_confirmed"]);
        assert_eq!(
            names("create_order", "saga.cancelled"),
            ["order_not_placed"]
        );
        assert_eq!(
            names("refund_order", "saga.compensated"),
            ["refund_not_possible"]
        );
        assert_eq!(names("refund_order", "saga.failed"), ["saga_failed"]);
        assert!(names("create_order", "saga.started").is_empty());

        let confirmed = rules
            .matching("create_order", "saga.completed")
            .next()
            .unwrap();
        let r = rules
            .render(confirmed, &facts("COMPLETED", "saga.completed", ""))
            .unwrap();
        assert_eq!(r.subject, "Your order is confirmed");
        assert!(r.text.contains("2 x Burger <XL>  12.50"), "{}", r.text);
        assert!(r.text.contains("Total  28.00"), "{}", r.text);
        let html = r.html.unwrap();
        assert!(
            html.contains("Burger &lt;XL&gt;"),
            "HTML is escaped: {html}"
        );

        let not_placed = rules
            .matching("create_order", "saga.compensated")
            .next()
            .unwrap();
        let error = "authorize_payment failed: the payment was declined";
        let r = rules
            .render(not_placed, &facts("COMPENSATED", "saga.compensated", error))
            .unwrap();
        assert_eq!(r.subject, "Your order could not be placed");
        assert!(
            r.text.contains("your order: the payment was declined.") && r.text.contains("released"),
            "the reason in the participant's words, not the step's name: {}",
            r.text
        );
        let r = rules
            .render(not_placed, &facts("CANCELLED", "saga.cancelled", ""))
            .unwrap();
        assert_eq!(r.subject, "Your order was cancelled");
    }

    /// A template naming a field its saga type does not have stops the start, naming the file
    /// and the field, instead of failing (or sending a blank) at send time.
    #[test]
    fn a_template_naming_a_missing_field_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let copy = |from: &Path, to: &Path| {
            std::fs::create_dir_all(to).unwrap();
            for e in std::fs::read_dir(from).unwrap() {
                let e = e.unwrap();
                if e.path().is_file() {
                    std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
                }
            }
        };
        copy(&shipped(), dir.path());
        copy(&shipped().join("templates"), &dir.path().join("templates"));
        Rules::load(dir.path(), &fields()).unwrap();
        let file = dir.path().join("templates/refund_done.txt");
        std::fs::write(&file, "{{ context.tracking_number }} {{ saga.id }}").unwrap();
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(
            err.contains("refund_done.txt") && err.contains("context.tracking_number"),
            "{err}"
        );
        std::fs::write(&file, "{{ customer.phone }}").unwrap();
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(err.contains("customer.phone"), "{err}");
        std::fs::write(&file, "{{ context.order_id }}").unwrap();
        Rules::load(dir.path(), &fields()).unwrap();
        std::fs::write(&file, "{% if %}").unwrap();
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(err.contains("refund_done.txt"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(err.contains("refund_done.txt"), "{err}");
    }

    #[test]
    fn a_rule_that_cannot_work_is_refused_and_one_of_another_deployment_left_out() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("templates")).unwrap();
        let write = |rule: &str| {
            std::fs::write(
                dir.path().join("notifications.toml"),
                format!(
                    "from = \"a@b.example\"\nevents = \"notification_events\"\n[[rule]]\n{rule}"
                ),
            )
            .unwrap()
        };
        write("name = \"x\"\nsaga = \"ship\"\non = [\"saga.completed\"]\nto = \"customer\"\ntemplate = \"x\"");
        let rules = Rules::load(dir.path(), &fields()).unwrap();
        assert!(
            rules.rules.is_empty(),
            "a rule of a type not deployed is left out"
        );
        let mut no_customer = fields();
        no_customer.insert("ship".into(), BTreeSet::from(["parcel_id".to_string()]));
        let err = Rules::load(dir.path(), &no_customer)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs a customer_id"), "{err}");
        write("name = \"x\"\nsaga = \"create_order\"\non = [\"saga.started\"]\nto = \"customer\"\ntemplate = \"x\"");
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(err.contains("saga.started"), "{err}");
        write("name = \"x\"\nsaga = \"create_order\"\non = [\"saga.completed\"]\nto = \"everyone\"\ntemplate = \"x\"");
        let err = Rules::load(dir.path(), &fields()).unwrap_err().to_string();
        assert!(err.contains("notifications.toml"), "{err}");
    }
}
