//! The payment service: authorizes payments and releases them.
//!
//! Test behaviours: a `customer_id` starting with `declined-`, or an amount over
//! [`MAX_AMOUNT_CENTS`], is declined (`payment.failed`), like a payment provider's test cards.

use serde_json::{json, Value};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use platform::db::Migrations;
use platform::{Envelope, TopicSpec, Topics};

use crate::order::reject_on_err;
use crate::runtime::{field, CommandService, Outcome};
use crate::Result;

/// The same SQL runs on SQLite and PostgreSQL.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/payment");

/// Larger amounts are declined: 1,000,000 cents.
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000;

pub struct PaymentService;

impl CommandService for PaymentService {
    const NAME: &'static str = "payment-service";

    fn migrations() -> Migrations {
        Migrations {
            sqlite: &MIGRATOR,
            postgres: &MIGRATOR,
        }
    }

    fn commands(topics: &Topics) -> &TopicSpec {
        &topics.payment_commands
    }

    fn replies(topics: &Topics) -> &TopicSpec {
        &topics.payment_events
    }

    async fn handle(&self, tx: &mut Transaction<'_, Any>, command: &Envelope) -> Result<Outcome> {
        let saga_id = command.correlation_id.to_string();
        let now = platform::time::now_ms();
        match command.message_type.as_str() {
            "authorize_payment" => {
                let customer = reject_on_err!(field(command, "customer_id"));
                let Some(amount) = command.payload.get("amount_cents").and_then(Value::as_i64)
                else {
                    return Ok(Outcome::Reject(
                        "authorize_payment has no integer amount_cents".into(),
                    ));
                };
                let declined = if customer.starts_with("declined-") {
                    Some("card declined (test customer declined-)".to_string())
                } else if amount > MAX_AMOUNT_CENTS {
                    Some(format!(
                        "amount {amount} cents is over the limit of {MAX_AMOUNT_CENTS}"
                    ))
                } else {
                    None
                };
                let payment_id = Uuid::new_v4().to_string();
                let method = command
                    .payload
                    .get("payment_method_id")
                    .and_then(Value::as_str);
                let inserted = sqlx::query(
                    "INSERT INTO payments (payment_id, saga_id, customer_id, payment_method_id, amount_cents, status, reason, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (saga_id) DO NOTHING",
                )
                .bind(&payment_id)
                .bind(&saga_id)
                .bind(customer)
                .bind(method)
                .bind(amount)
                .bind(if declined.is_some() { "DECLINED" } else { "AUTHORIZED" })
                .bind(declined.as_deref())
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if inserted == 0 {
                    // One payment per saga, even if authorize_payment arrives under another id:
                    // the saga's payment exists, and it is the answer.
                    let row = sqlx::query(
                        "SELECT payment_id, status, reason FROM payments WHERE saga_id = $1",
                    )
                    .bind(&saga_id)
                    .fetch_one(&mut **tx)
                    .await?;
                    let payment_id: String = row.try_get("payment_id")?;
                    let status: String = row.try_get("status")?;
                    let reason: Option<String> = row.try_get("reason")?;
                    return Ok(match status.as_str() {
                        "DECLINED" => Outcome::Reply(
                            "payment.failed",
                            json!({"payment_id": payment_id, "reason": reason}),
                        ),
                        _ => Outcome::Reply(
                            "payment.authorized",
                            json!({"payment_id": payment_id, "amount_cents": amount}),
                        ),
                    });
                }
                Ok(match declined {
                    Some(reason) => Outcome::Reply("payment.failed", json!({"reason": reason})),
                    None => Outcome::Reply(
                        "payment.authorized",
                        json!({"payment_id": payment_id, "amount_cents": amount}),
                    ),
                })
            }
            "revert_payment" => {
                // Releasing a payment that was never authorized leaves nothing to undo: success.
                // Without a payment id (its authorization was never confirmed to the saga), the
                // payment is found by its saga.
                let released = match field(command, "payment_id") {
                    Ok(payment_id) => {
                        sqlx::query("UPDATE payments SET status = 'RELEASED', updated_at = $1 WHERE payment_id = $2 AND status = 'AUTHORIZED'")
                            .bind(now)
                            .bind(payment_id)
                            .execute(&mut **tx)
                            .await?
                    }
                    Err(_) => {
                        sqlx::query("UPDATE payments SET status = 'RELEASED', updated_at = $1 WHERE saga_id = $2 AND status = 'AUTHORIZED'")
                            .bind(now)
                            .bind(&saga_id)
                            .execute(&mut **tx)
                            .await?
                    }
                };
                Ok(Outcome::Reply(
                    "payment.released",
                    json!({ "released": released.rows_affected() > 0 }),
                ))
            }
            other => Ok(Outcome::Reject(format!(
                "payment-service does not handle {other:?}"
            ))),
        }
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        match command.message_type.as_str() {
            "authorize_payment" => Some(Outcome::Reply(
                "payment.failed",
                json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"}),
            )),
            "revert_payment" => Some(Outcome::Refuse(
                "payment.release_failed",
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            _ => None,
        }
    }
}
