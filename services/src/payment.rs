//! The payment service: authorizes payments and releases them.
//!
//! Test behaviours: a `customer_id` starting with `declined-`, or an amount over
//! [`MAX_AMOUNT_CENTS`], is declined (`payment.failed`), like a payment provider's test cards.
//!
//! For the refund saga: `hold_refund` holds an authorized payment of the customer
//! (REFUND_HELD), `release_refund_hold` (its compensation) releases it, `refund_payment` refunds
//! a held payment (REFUNDED) — except for a `refundfail-` customer, whose refund the provider
//! refuses (`payment.refund_failed`).

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sqlx::{Any, Row, Transaction};
use uuid::Uuid;

use platform::db::{self, Engine};
use platform::Envelope;

use crate::runtime::{column, field, reject_on_err, CommandService, Outcome, Outcomes, StatusStep};
use crate::Result;

/// Its tables; the same SQL runs on SQLite and PostgreSQL. Migration 1 once created
/// `processed_commands` too, which the runtime now owns: a database that ran that text is
/// accepted.
static MIGRATOR: std::sync::LazyLock<sqlx::migrate::Migrator> = std::sync::LazyLock::new(|| {
    db::corrected(
        sqlx::migrate!("./migrations/payment"),
        1,
        include_str!("../migrations/superseded/payment/0001_payments.sql"),
    )
});

/// Larger amounts are declined: 1,000,000 cents.
pub const MAX_AMOUNT_CENTS: i64 = 1_000_000;

pub struct PaymentService;

impl CommandService for PaymentService {
    const NAME: &'static str = "payment-service";

    fn migrator() -> &'static sqlx::migrate::Migrator {
        &MIGRATOR
    }

    const COMMANDS: &'static str = "payment_commands";
    const REPLIES: &'static str = "payment_events";

    async fn handle(
        &self,
        tx: &mut Transaction<'_, Any>,
        engine: Engine,
        commands: &[&Envelope],
    ) -> Result<Vec<Outcome>> {
        let now = platform::time::now_ms();
        let mut out = Outcomes::new(commands.len());
        let mut authorizations = Vec::new();
        let mut releases = Vec::new();
        let mut refunds = Vec::new();
        for (i, command) in commands.iter().enumerate() {
            match command.message_type.as_str() {
                "authorize_payment" => {
                    let customer = reject_on_err!(out, i, field(command, "customer_id"));
                    let Some(amount) = command.payload.get("amount_cents").and_then(Value::as_i64)
                    else {
                        out.set(
                            i,
                            Outcome::Reject("authorize_payment has no integer amount_cents".into()),
                        );
                        continue;
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
                    authorizations.push(Authorization {
                        i,
                        command,
                        customer,
                        amount,
                        declined,
                    });
                }
                // Without a payment id (its authorization was never confirmed to the saga), the
                // payment is found by its saga.
                "revert_payment" => releases.push((i, *command, field(command, "payment_id").ok())),
                "hold_refund" | "release_refund_hold" | "refund_payment" => {
                    let payment_id = reject_on_err!(out, i, field(command, "payment_id"));
                    refunds.push((
                        i,
                        command.message_type.as_str(),
                        payment_id,
                        field(command, "customer_id").ok(),
                    ));
                }
                other => out.set(
                    i,
                    Outcome::Reject(format!("payment-service does not handle {other:?}")),
                ),
            }
        }
        authorize(tx, engine, &authorizations, now, &mut out).await?;
        release(tx, engine, &releases, now, &mut out).await?;
        for (i, command, payment_id, customer) in refunds {
            out.set(
                i,
                refund_step(tx, command, payment_id, customer, now).await?,
            );
        }
        Ok(out.into_vec())
    }

    fn failure(&self, command: &Envelope) -> Option<Outcome> {
        match command.message_type.as_str() {
            "authorize_payment" => Some(Outcome::Failed(
                json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"}),
            )),
            "hold_refund" | "refund_payment" => Some(Outcome::Failed(
                json!({"reason": "injected failure (CHAOS_FAILURE_RATE)"}),
            )),
            "release_refund_hold" => Some(Outcome::Refused(
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            "revert_payment" => Some(Outcome::Refused(
                "injected refusal (CHAOS_FAILURE_RATE)".into(),
            )),
            _ => None,
        }
    }
}

struct Authorization<'a> {
    /// The command's place in the batch.
    i: usize,
    command: &'a Envelope,
    customer: &'a str,
    amount: i64,
    declined: Option<String>,
}

/// One payment per saga, even if authorize_payment arrives under another command id: the insert
/// skips a saga that has one, and that one is the answer.
async fn authorize(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    authorizations: &[Authorization<'_>],
    now: i64,
    out: &mut Outcomes,
) -> Result<()> {
    if authorizations.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO payments (payment_id, saga_id, customer_id, payment_method_id, amount_cents, status, reason, created_at, updated_at) \
         VALUES {} ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id",
        engine.values(authorizations.len(), 9)
    );
    let ids: Vec<String> = authorizations
        .iter()
        .map(|_| Uuid::new_v4().to_string())
        .collect();
    let mut q = db::dynamic(&sql);
    for (a, payment_id) in authorizations.iter().zip(&ids) {
        let method = a
            .command
            .payload
            .get("payment_method_id")
            .and_then(Value::as_str);
        q = q
            .bind(payment_id)
            .bind(a.command.correlation_id.to_string())
            .bind(a.customer)
            .bind(method)
            .bind(a.amount)
            .bind(if a.declined.is_some() {
                "DECLINED"
            } else {
                "AUTHORIZED"
            })
            .bind(a.declined.as_deref())
            .bind(now)
            .bind(now);
    }
    let inserted = column(q.fetch_all(&mut **tx).await?, "saga_id")?;
    let existing: Vec<String> = authorizations
        .iter()
        .map(|a| a.command.correlation_id.to_string())
        .filter(|saga| !inserted.contains(saga))
        .collect();
    let mut stored = HashMap::new();
    let select = "SELECT saga_id, payment_id, status, reason FROM payments WHERE saga_id";
    for row in db::fetch_in(&mut **tx, engine, select, &existing).await? {
        let payment: (String, String, Option<String>) = (
            row.try_get("payment_id")?,
            row.try_get("status")?,
            row.try_get("reason")?,
        );
        stored.insert(row.try_get::<String, _>("saga_id")?, payment);
    }
    for (a, payment_id) in authorizations.iter().zip(ids) {
        let outcome = match stored.remove(&a.command.correlation_id.to_string()) {
            // The saga's payment existed: it is the answer.
            Some((payment_id, status, reason)) if status == "DECLINED" => {
                Outcome::Failed(json!({"payment_id": payment_id, "reason": reason}))
            }
            Some((payment_id, _, _)) => {
                Outcome::Succeeded(json!({"payment_id": payment_id, "amount_cents": a.amount}))
            }
            None => match &a.declined {
                Some(reason) => Outcome::Failed(json!({"reason": reason})),
                None => {
                    Outcome::Succeeded(json!({"payment_id": payment_id, "amount_cents": a.amount}))
                }
            },
        };
        out.set(a.i, outcome);
    }
    Ok(())
}

/// Releasing a payment that was never authorized leaves nothing to undo: success. A payment is
/// named by its id, or else found by its saga; each group takes one statement.
async fn release(
    tx: &mut Transaction<'_, Any>,
    engine: Engine,
    releases: &[(usize, &Envelope, Option<&str>)],
    now: i64,
    out: &mut Outcomes,
) -> Result<()> {
    let by_payment: Vec<String> = releases
        .iter()
        .filter_map(|(_, _, id)| id.map(str::to_string))
        .collect();
    let by_saga: Vec<String> = releases
        .iter()
        .filter(|(_, _, id)| id.is_none())
        .map(|(_, c, _)| c.correlation_id.to_string())
        .collect();
    let mut released = HashSet::new();
    for (column_name, keys) in [("payment_id", &by_payment), ("saga_id", &by_saga)] {
        if keys.is_empty() {
            continue;
        }
        let sql = format!(
            "UPDATE payments SET status = 'RELEASED', updated_at = {} \
             WHERE status = 'AUTHORIZED' AND {column_name} IN ({}) RETURNING {column_name}",
            engine.placeholders(1, 1),
            engine.placeholders(2, keys.len())
        );
        let mut q = db::dynamic(&sql).bind(now);
        for key in keys {
            q = q.bind(key);
        }
        released.extend(column(q.fetch_all(&mut **tx).await?, column_name)?);
    }
    for (i, command, payment_id) in releases {
        let key = match payment_id {
            Some(id) => id.to_string(),
            None => command.correlation_id.to_string(),
        };
        out.set(
            *i,
            Outcome::Succeeded(json!({ "released": released.contains(&key) })),
        );
    }
    Ok(())
}

/// The refund saga's steps on a payment; one row each, one statement per command.
async fn refund_step(
    tx: &mut Transaction<'_, Any>,
    command: &str,
    payment_id: &str,
    customer: Option<&str>,
    now: i64,
) -> Result<Outcome> {
    let (from, to) = match command {
        "hold_refund" => ("AUTHORIZED", "REFUND_HELD"),
        "release_refund_hold" => ("REFUND_HELD", "AUTHORIZED"),
        _ => ("REFUND_HELD", "REFUNDED"),
    };
    if command == "refund_payment" && customer.is_some_and(|c| c.starts_with("refundfail-")) {
        return Ok(Outcome::Failed(json!({
            "payment_id": payment_id,
            "reason": "the provider refused the refund (test customer refundfail-)",
        })));
    }
    let mut outcome = StatusStep {
        table: "payments",
        key_column: "payment_id",
        thing: "payment",
        key: payment_id,
        customer_id: customer.filter(|_| command == "hold_refund"),
        from,
        to,
        undo: command == "release_refund_hold",
    }
    .apply(tx, now)
    .await?;
    // A payment that moved says its amount (the refund saga keeps it).
    if let Outcome::Succeeded(Value::Object(reply)) = &mut outcome {
        if reply["status"].is_string() {
            let amount: Option<i64> =
                sqlx::query("SELECT amount_cents FROM payments WHERE payment_id = $1")
                    .bind(payment_id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .map(|r| r.try_get("amount_cents"))
                    .transpose()?;
            reply.insert("amount_cents".into(), json!(amount));
        }
    }
    Ok(outcome)
}
