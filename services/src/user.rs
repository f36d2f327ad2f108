//! The user service: tells the saga which payment method a customer pays with.
//!
//! Test behaviour: a `customer_id` starting with `nocard-` has no payment method
//! (`user.payment_info_failed`). Every other customer gets one on first lookup. A `norefund-`
//! customer is not eligible for refunds (`check_refund_eligibility` fails).

use serde_json::json;
use sqlx::{Any, Transaction};

use platform::db::{self, Engine};
use platform::Envelope;

use crate::runtime::{field, pairs, reject_on_err, CommandService, Outcome, Outcomes};
use crate::Result;

/// Its tables; the same SQL runs on SQLite and PostgreSQL. Migration 1 once created
/// `processed_commands` too, which the runtime now owns: a database that ran that text is
/// accepted.
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    db::corrected(
        sqlx::migrate!("./migrations/user"),
        1,
        include_str!("../migrations/superseded/user/0001_payment_methods.sql"),
    )
});

pub struct UserService;

impl CommandService for UserService {
    const NAME: &'static str = "user-service";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    const COMMANDS: &'static str = "user_commands";
    const REPLIES: &'static str = "user_events";

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Any>,
        engine: Engine,
        commands: &[&Envelope],
    ) -> Result<Vec<Outcome>> {
        let mut out = Outcomes::new(commands.len());
        let mut lookups = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            if command.message_type == "check_refund_eligibility" {
                let customer = reject_on_err!(out, i, field(command, "customer_id"));
                out.set(i, refund_eligibility(customer));
                continue;
            }
            if command.message_type != "get_payment_info" {
                out.set(
                    i,
                    Outcome::Reject(format!(
                        "user-service does not handle {:?}",
                        command.message_type
                    )),
                );
                continue;
            }
            let customer = reject_on_err!(out, i, field(command, "customer_id"));
            if customer.starts_with("nocard-") {
                out.set(i, Outcome::Failed(
                    json!({"customer_id": customer, "reason": "the customer has no payment method (test customer nocard-)"}),
                ));
                continue;
            }
            lookups.push((i, customer));
        }
        if lookups.is_empty() {
            return Ok(out.into_vec());
        }
        // A customer seen for the first time gets a payment method; then every customer's is read.
        let mut customers: Vec<&str> = lookups.iter().map(|(_, c)| *c).collect();
        customers.sort_unstable();
        customers.dedup();
        let sql = format!(
            "INSERT INTO payment_methods (customer_id, payment_method_id, created_at) VALUES {} \
             ON CONFLICT (customer_id) DO NOTHING",
            engine.values(customers.len(), 3)
        );
        let now = platform::time::now_ms();
        let mut q = db::dynamic(&sql);
        for customer in &customers {
            q = q
                .bind(*customer)
                .bind(format!("pm_{}", uuid::Uuid::new_v4().simple()))
                .bind(now);
        }
        q.execute(&mut **tx).await?;
        let select = "SELECT customer_id, payment_method_id FROM payment_methods WHERE customer_id";
        let rows = db::fetch_in(&mut **tx, engine, select, &customers).await?;
        let method_of = pairs(rows, "customer_id", "payment_method_id")?;
        for (i, customer) in lookups {
            out.set(
                i,
                Outcome::Succeeded(
                    json!({"customer_id": customer, "payment_method_id": method_of.get(customer)}),
                ),
            );
        }
        Ok(out.into_vec())
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        matches!(
            command.message_type.as_str(),
            "get_payment_info" | "check_refund_eligibility"
        )
        .then(|| Outcome::Failed(json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"})))
    }
}

/// A customer's contact, from the user service's data. The stub has no address book: the
/// address is made from the customer id (characters an address cannot hold become `-`), on the
/// reserved `.example` domain. Test behaviours live in the mailbox, not here: `bounce-…`
/// addresses are rejected for good, `slowmail-…` ones refuse the first deliveries.
pub fn contact(customer_id: &str) -> crate::delivery::Contact {
    let local: String = customer_id
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.+".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let local = local.trim_matches('.');
    let local = if local.is_empty() { "customer" } else { local };
    crate::delivery::Contact {
        id: customer_id.to_string(),
        email: format!("{local}@customers.example"),
        name: customer_id.to_string(),
    }
}

/// Whether the customer may have a refund: a read, with nothing to undo. Test behaviour: a
/// `norefund-` customer may not.
fn refund_eligibility(customer: &str) -> Outcome {
    if customer.starts_with("norefund-") {
        Outcome::Failed(json!({
            "customer_id": customer,
            "reason": "the customer is not eligible for refunds (test customer norefund-)",
        }))
    } else {
        Outcome::Succeeded(json!({"customer_id": customer, "eligible": true}))
    }
}
