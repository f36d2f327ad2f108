//! The order service: creates orders, confirms them, cancels them.
//!
//! Test behaviours (by `customer_id` prefix):
//! - `noorder-`: `create_order` fails (`order.creation_failed`).
//! - `noupdate-`: `update_order_status` fails (`order.status_update_failed`), so the saga reverts
//!   the payment and cancels the order.
//!
//! For the refund saga: `begin_refund` fails unless the order is the customer's and confirmed
//! (CREATED) — so a second refund of one order fails; `complete_refund` ends it REFUNDED.

use serde_json::{json, Value};
use sqlx::{Any, Transaction};
use uuid::Uuid;

use platform::db::{self, Engine};
use platform::Envelope;

use crate::runtime::{
    column, field, pairs, reject_on_err, CommandService, Outcome, Outcomes, StatusStep,
};
use crate::Result;

/// Its tables; the same SQL runs on SQLite and PostgreSQL. Migration 1 once created
/// `processed_commands` too, which the runtime now owns: a database that ran that text is
/// accepted.
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    db::corrected(
        sqlx::migrate!("./migrations/order"),
        1,
        include_str!("../migrations/superseded/order/0001_orders.sql"),
    )
});

pub struct OrderService;

impl CommandService for OrderService {
    const NAME: &'static str = "order-service";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    const COMMANDS: &'static str = "order_commands";
    const REPLIES: &'static str = "order_events";

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Any>,
        engine: Engine,
        commands: &[&Envelope],
    ) -> Result<Vec<Outcome>> {
        let now = platform::time::now_ms();
        let mut out = Outcomes::new(commands.len());
        let mut creates = Vec::new();
        let mut updates = Vec::new();
        let mut cancels = Vec::new();
        let mut refunds = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            match command.message_type.as_str() {
                "create_order" => {
                    let customer = reject_on_err!(out, i, field(command, "customer_id"));
                    if customer.starts_with("noorder-") {
                        out.set(i, Outcome::Failed(
                            json!({"reason": "the store cannot take this order (test customer noorder-)"}),
                        ));
                        continue;
                    }
                    creates.push((i, *command, customer));
                }
                "update_order_status" => {
                    let order_id = reject_on_err!(out, i, field(command, "order_id"));
                    let status = reject_on_err!(out, i, field(command, "status"));
                    let customer = field(command, "customer_id").unwrap_or_default();
                    if customer.starts_with("noupdate-") {
                        out.set(i, Outcome::Failed(
                            json!({"order_id": order_id, "reason": "the order cannot be confirmed (test customer noupdate-)"}),
                        ));
                        continue;
                    }
                    updates.push((i, order_id, status));
                }
                // The saga may not know the order id (create_order's reply never came): the
                // order is then found by its saga.
                "cancel_order" => cancels.push((i, *command, field(command, "order_id").ok())),
                "begin_refund" | "abort_refund" | "complete_refund" => {
                    let order_id = reject_on_err!(out, i, field(command, "order_id"));
                    refunds.push((
                        i,
                        command.message_type.as_str(),
                        order_id,
                        field(command, "customer_id").ok(),
                    ));
                }
                other => out.set(
                    i,
                    Outcome::Reject(format!("order-service does not handle {other:?}")),
                ),
            }
        }
        create_orders(tx, engine, &creates, now, &mut out).await?;
        update_statuses(tx, engine, &updates, now, &mut out).await?;
        cancel_orders(tx, engine, &cancels, now, &mut out).await?;
        for (i, command, order_id, customer) in refunds {
            out.set(i, refund_step(tx, command, order_id, customer, now).await?);
        }
        Ok(out.into_vec())
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        let reason = json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"});
        match command.message_type.as_str() {
            "create_order" => Some(Outcome::Failed(reason)),
            "update_order_status" => Some(Outcome::Failed(reason)),
            "begin_refund" => Some(Outcome::Failed(reason)),
            // After refund_order's pivot (the money has left) a step is retried until done: a
            // failure there is "not now", not recorded, so the next re-send is handled afresh.
            "complete_refund" | "abort_refund" => Some(Outcome::Refused(
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            "cancel_order" => Some(Outcome::Refused(
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            _ => None,
        }
    }
}

/// The refund saga's steps on an order: `begin_refund` takes a confirmed order (CREATED) of the
/// customer to REFUNDING, `abort_refund` (its compensation) takes it back, `complete_refund`
/// ends it REFUNDED. One row each, and refunds are rare: one statement per command.
async fn refund_step(
    tx: &mut Transaction<'_, Any>,
    command: &str,
    order_id: &str,
    customer: Option<&str>,
    now: i64,
) -> Result<Outcome> {
    let (from, to) = match command {
        "begin_refund" => ("CREATED", "REFUNDING"),
        "abort_refund" => ("REFUNDING", "CREATED"),
        _ => ("REFUNDING", "REFUNDED"),
    };
    StatusStep {
        table: "orders",
        key_column: "order_id",
        thing: "order",
        key: order_id,
        customer_id: customer.filter(|_| command == "begin_refund"),
        from,
        to,
        undo: command == "abort_refund",
    }
    .apply(tx, now)
    .await
}

/// Looks up the order of each of a list of sagas (see [`db::fetch_in`]).
const ORDER_OF_SAGA: &str = "SELECT saga_id, order_id FROM orders WHERE saga_id";

/// One order per saga, even if create_order arrives under another command id: the insert skips a
/// saga that has one, and that one is the answer. One statement on the usual path.
async fn create_orders(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    creates: &[(usize, &Envelope, &str)],
    now: i64,
    out: &mut Outcomes,
) -> Result<()> {
    if creates.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO orders (order_id, saga_id, customer_id, order_details, amount_cents, status, created_at, updated_at) \
         VALUES {} ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id, order_id",
        engine.values(creates.len(), 8)
    );
    let mut q = db::dynamic(&sql);
    for (_, command, customer) in creates {
        let details = command.payload.get("order_details").unwrap_or(&Value::Null);
        let amount = command.payload.get("amount_cents").and_then(Value::as_i64);
        q = q
            .bind(Uuid::new_v4().to_string())
            .bind(command.correlation_id.to_string())
            .bind(*customer)
            .bind(details.to_string())
            .bind(amount.unwrap_or(0))
            .bind("PENDING")
            .bind(now)
            .bind(now);
    }
    let mut order_of = pairs(q.fetch_all(&mut **tx).await?, "saga_id", "order_id")?;
    let existing: Vec<String> = creates
        .iter()
        .map(|(_, c, _)| c.correlation_id.to_string())
        .filter(|saga| !order_of.contains_key(saga))
        .collect();
    let rows = db::fetch_in(&mut **tx, engine, ORDER_OF_SAGA, &existing).await?;
    order_of.extend(pairs(rows, "saga_id", "order_id")?);
    for (i, command, _) in creates {
        let order_id = order_of.get(&command.correlation_id.to_string());
        out.set(*i, Outcome::Succeeded(json!({ "order_id": order_id })));
    }
    Ok(())
}

/// Any order but a cancelled one takes the status; only for those that did not is it worth
/// looking at why.
async fn update_statuses(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    updates: &[(usize, &str, &str)],
    now: i64,
    out: &mut Outcomes,
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "WITH v (id, new_status, at) AS (VALUES {}) \
         UPDATE orders SET status = v.new_status, updated_at = v.at FROM v \
         WHERE orders.order_id = v.id AND orders.status <> 'CANCELLED' RETURNING order_id",
        engine.values(updates.len(), 3)
    );
    let mut q = db::dynamic(&sql);
    for (_, order_id, status) in updates {
        q = q.bind(*order_id).bind(*status).bind(now);
    }
    let updated = column(q.fetch_all(&mut **tx).await?, "order_id")?;
    let missed: Vec<&str> = updates
        .iter()
        .map(|(_, order_id, _)| *order_id)
        .filter(|id| !updated.contains(*id))
        .collect();
    let rows = db::fetch_in(
        &mut **tx,
        engine,
        "SELECT order_id FROM orders WHERE order_id",
        &missed,
    )
    .await?;
    let exists = column(rows, "order_id")?;
    for (i, order_id, status) in updates {
        out.set(
            *i,
            if updated.contains(*order_id) {
                Outcome::Succeeded(json!({"order_id": order_id, "status": status}))
            } else {
                let reason = if exists.contains(*order_id) {
                    "the order is cancelled"
                } else {
                    "no such order"
                };
                Outcome::Failed(json!({"order_id": order_id, "reason": reason}))
            },
        );
    }
    Ok(())
}

/// Cancelling an order that does not exist leaves nothing to undo (no row changes): success.
async fn cancel_orders(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    cancels: &[(usize, &Envelope, Option<&str>)],
    now: i64,
    out: &mut Outcomes,
) -> Result<()> {
    if cancels.is_empty() {
        return Ok(());
    }
    let unknown: Vec<String> = cancels
        .iter()
        .filter(|(_, _, order_id)| order_id.is_none())
        .map(|(_, c, _)| c.correlation_id.to_string())
        .collect();
    let rows = db::fetch_in(&mut **tx, engine, ORDER_OF_SAGA, &unknown).await?;
    let order_of = pairs(rows, "saga_id", "order_id")?;
    let order_ids: Vec<Option<String>> = cancels
        .iter()
        .map(|(_, c, order_id)| match order_id {
            Some(id) => Some(id.to_string()),
            None => order_of.get(&c.correlation_id.to_string()).cloned(),
        })
        .collect();
    let known: Vec<&String> = order_ids.iter().flatten().collect();
    if !known.is_empty() {
        let sql = format!(
            "UPDATE orders SET status = 'CANCELLED', updated_at = {} WHERE order_id IN ({})",
            engine.placeholders(1, 1),
            engine.placeholders(2, known.len())
        );
        let mut q = db::dynamic(&sql).bind(now);
        for id in known {
            q = q.bind(id);
        }
        q.execute(&mut **tx).await?;
    }
    for ((i, _, _), order_id) in cancels.iter().zip(order_ids) {
        out.set(*i, Outcome::Succeeded(json!({ "order_id": order_id })));
    }
    Ok(())
}
