//! The user service: tells the saga which payment method a customer pays with.
//!
//! Test behaviour: a `customer_id` starting with `nocard-` has no payment method
//! (`user.payment_info_failed`). Every other customer gets one on first lookup.

use serde_json::json;
use sqlx::{Any, Row, Transaction};

use platform::db::Migrations;
use platform::{Envelope, TopicSpec, Topics};

use crate::order::reject_on_err;
use crate::runtime::{field, CommandService, Outcome};
use crate::Result;

/// The same SQL runs on SQLite and PostgreSQL.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/user");

pub struct UserService;

impl CommandService for UserService {
    const NAME: &'static str = "user-service";

    fn migrations() -> Migrations {
        Migrations {
            sqlite: &MIGRATOR,
            postgres: &MIGRATOR,
        }
    }

    fn commands(topics: &Topics) -> &TopicSpec {
        &topics.user_commands
    }

    fn replies(topics: &Topics) -> &TopicSpec {
        &topics.user_events
    }

    async fn handle(&self, tx: &mut Transaction<'_, Any>, command: &Envelope) -> Result<Outcome> {
        if command.message_type != "get_payment_info" {
            return Ok(Outcome::Reject(format!(
                "user-service does not handle {:?}",
                command.message_type
            )));
        }
        let customer = reject_on_err!(field(command, "customer_id"));
        if customer.starts_with("nocard-") {
            return Ok(Outcome::Reply(
                "user.payment_info_failed",
                json!({"customer_id": customer, "reason": "the customer has no payment method (test customer nocard-)"}),
            ));
        }
        let candidate = format!("pm_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(
            "INSERT INTO payment_methods (customer_id, payment_method_id, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (customer_id) DO NOTHING",
        )
        .bind(customer)
        .bind(&candidate)
        .bind(platform::time::now_ms())
        .execute(&mut **tx)
        .await?;
        let row =
            sqlx::query("SELECT payment_method_id FROM payment_methods WHERE customer_id = $1")
                .bind(customer)
                .fetch_one(&mut **tx)
                .await?;
        let method: String = row.try_get("payment_method_id")?;
        Ok(Outcome::Reply(
            "user.payment_info_retrieved",
            json!({"customer_id": customer, "payment_method_id": method}),
        ))
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        (command.message_type == "get_payment_info").then(|| {
            Outcome::Reply(
                "user.payment_info_failed",
                json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"}),
            )
        })
    }
}
