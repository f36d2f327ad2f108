//! The order service: creates orders, confirms them, cancels them.
//!
//! Test behaviours (by `customer_id` prefix):
//! - `noorder-`: `create_order` fails (`order.creation_failed`).
//! - `noupdate-`: `update_order_status` fails (`order.status_update_failed`), so the saga reverts
//!   the payment and cancels the order.

use serde_json::{json, Value};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use platform::db::Migrations;
use platform::{Envelope, TopicSpec, Topics};

use crate::runtime::{field, CommandService, Outcome};
use crate::Result;

/// The same SQL runs on SQLite and PostgreSQL.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/order");

pub struct OrderService;

macro_rules! reject_on_err {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(reason) => return Ok(Outcome::Reject(reason)),
        }
    };
}
pub(crate) use reject_on_err;

impl CommandService for OrderService {
    const NAME: &'static str = "order-service";

    fn migrations() -> Migrations {
        Migrations {
            sqlite: &MIGRATOR,
            postgres: &MIGRATOR,
        }
    }

    fn commands(topics: &Topics) -> &TopicSpec {
        &topics.order_commands
    }

    fn replies(topics: &Topics) -> &TopicSpec {
        &topics.order_events
    }

    async fn handle(&self, tx: &mut Transaction<'_, Any>, command: &Envelope) -> Result<Outcome> {
        let saga_id = command.correlation_id.to_string();
        let now = platform::time::now_ms();
        match command.message_type.as_str() {
            "create_order" => {
                let customer = reject_on_err!(field(command, "customer_id"));
                if customer.starts_with("noorder-") {
                    return Ok(Outcome::Reply(
                        "order.creation_failed",
                        json!({"reason": "the store cannot take this order (test customer noorder-)"}),
                    ));
                }
                let order_id = Uuid::new_v4().to_string();
                let details = command
                    .payload
                    .get("order_details")
                    .cloned()
                    .unwrap_or(Value::Null);
                let amount = command
                    .payload
                    .get("amount_cents")
                    .and_then(Value::as_i64)
                    .unwrap_or(0);
                // One order per saga, even if create_order arrives under another command id: the
                // insert does nothing if the saga has one, and that one is the answer. (One
                // statement on the usual path rather than a look-up first.)
                let inserted = sqlx::query(
                    "INSERT INTO orders (order_id, saga_id, customer_id, order_details, amount_cents, status, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, $6) ON CONFLICT (saga_id) DO NOTHING",
                )
                .bind(&order_id)
                .bind(&saga_id)
                .bind(customer)
                .bind(details.to_string())
                .bind(amount)
                .bind(now)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                let order_id = if inserted == 1 {
                    order_id
                } else {
                    sqlx::query("SELECT order_id FROM orders WHERE saga_id = $1")
                        .bind(&saga_id)
                        .fetch_one(&mut **tx)
                        .await?
                        .try_get("order_id")?
                };
                Ok(Outcome::Reply(
                    "order.created",
                    json!({ "order_id": order_id }),
                ))
            }
            "update_order_status" => {
                let order_id = reject_on_err!(field(command, "order_id"));
                let status = reject_on_err!(field(command, "status"));
                let customer = field(command, "customer_id").unwrap_or_default();
                if customer.starts_with("noupdate-") {
                    return Ok(Outcome::Reply(
                        "order.status_update_failed",
                        json!({"order_id": order_id, "reason": "the order cannot be confirmed (test customer noupdate-)"}),
                    ));
                }
                // Any order but a cancelled one takes the status; only when none did is it
                // worth looking at why.
                let updated = sqlx::query(
                    "UPDATE orders SET status = $1, updated_at = $2 WHERE order_id = $3 AND status <> 'CANCELLED'",
                )
                .bind(status)
                .bind(now)
                .bind(order_id)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if updated == 1 {
                    return Ok(Outcome::Reply(
                        "order.status_updated",
                        json!({"order_id": order_id, "status": status}),
                    ));
                }
                let reason = match current_status(tx, order_id).await? {
                    None => "no such order",
                    Some(_) => "the order is cancelled",
                };
                Ok(Outcome::Reply(
                    "order.status_update_failed",
                    json!({"order_id": order_id, "reason": reason}),
                ))
            }
            "cancel_order" => {
                // The saga may not know the order id (create_order's reply never came): the
                // order is then found by its saga.
                let order_id = match field(command, "order_id") {
                    Ok(id) => Some(id.to_string()),
                    Err(_) => sqlx::query("SELECT order_id FROM orders WHERE saga_id = $1")
                        .bind(&saga_id)
                        .fetch_optional(&mut **tx)
                        .await?
                        .map(|r| r.try_get::<String, _>("order_id"))
                        .transpose()?,
                };
                // Cancelling an order that does not exist leaves nothing to undo (the update
                // changes no row): that is success.
                if let Some(order_id) = &order_id {
                    set_status(tx, order_id, "CANCELLED", now).await?;
                }
                Ok(Outcome::Reply(
                    "order.cancelled",
                    json!({ "order_id": order_id }),
                ))
            }
            other => Ok(Outcome::Reject(format!(
                "order-service does not handle {other:?}"
            ))),
        }
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        let reason = json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"});
        match command.message_type.as_str() {
            "create_order" => Some(Outcome::Reply("order.creation_failed", reason)),
            "update_order_status" => Some(Outcome::Reply("order.status_update_failed", reason)),
            "cancel_order" => Some(Outcome::Refuse(
                "order.cancel_failed",
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            _ => None,
        }
    }
}

async fn current_status(tx: &mut Transaction<'_, Any>, order_id: &str) -> Result<Option<String>> {
    let row = sqlx::query("SELECT status FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.map(|r| r.try_get("status")).transpose()?)
}

async fn set_status(
    tx: &mut Transaction<'_, Any>,
    order_id: &str,
    status: &str,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE orders SET status = $1, updated_at = $2 WHERE order_id = $3")
        .bind(status)
        .bind(now)
        .bind(order_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
