//! Small helpers the services' handlers share: reading command fields, reading rows, and the
//! one-row status moves of the refund commands.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};

use platform::db;
use platform::Envelope;

use super::Outcome;

use crate::Result;

/// A string field of a command payload, or a rejection naming it.
pub fn field<'a>(command: &'a Envelope, name: &str) -> Result<&'a str, String> {
    command
        .payload
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            format!(
                "{} command has no string field {name:?}",
                command.message_type
            )
        })
}

/// The values of text column `name` of `rows`.
pub fn column(rows: Vec<AnyRow>, name: &str) -> Result<HashSet<String>> {
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>(name))
        .collect::<std::result::Result<_, _>>()?)
}

/// `key -> value` from two text columns of `rows`.
pub fn pairs(rows: Vec<AnyRow>, key: &str, value: &str) -> Result<HashMap<String, String>> {
    Ok(rows
        .iter()
        .map(|r| Ok((r.try_get::<String, _>(key)?, r.try_get::<String, _>(value)?)))
        .collect::<std::result::Result<_, sqlx::Error>>()?)
}

/// One row's move from one status to another: what each refund command does. `table`,
/// `key_column` and `thing` are the service's own names, never input.
pub struct StatusStep<'a> {
    pub table: &'static str,
    pub key_column: &'static str,
    /// What the row is, in a failure's reason (`order`, `payment`).
    pub thing: &'static str,
    pub key: &'a str,
    /// Only this customer's row moves (the step that starts a refund checks ownership).
    pub customer_id: Option<&'a str>,
    pub from: &'static str,
    pub to: &'static str,
    /// A compensation: a row that is not in `from` has nothing to undo, which is a success.
    pub undo: bool,
}

impl StatusStep<'_> {
    /// Moves the row and says what to reply: success (also when the row is in `to` already, a
    /// command handled under another id), or failure naming the status it is in.
    pub async fn apply(&self, tx: &mut Transaction<'_, Any>, now: i64) -> Result<Outcome> {
        let (table, key_column) = (self.table, self.key_column);
        let customer = if self.customer_id.is_some() {
            " AND customer_id = $5"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {table} SET status = $1, updated_at = $2 WHERE {key_column} = $3 AND status = $4{customer}"
        );
        let mut q = db::dynamic(&sql)
            .bind(self.to)
            .bind(now)
            .bind(self.key)
            .bind(self.from);
        if let Some(c) = self.customer_id {
            q = q.bind(c);
        }
        let moved = q.execute(&mut **tx).await?.rows_affected() > 0;
        let status: Option<String> = if moved {
            Some(self.to.to_string())
        } else {
            let customer = if self.customer_id.is_some() {
                " AND customer_id = $2"
            } else {
                ""
            };
            let sql = format!("SELECT status FROM {table} WHERE {key_column} = $1{customer}");
            let mut q = db::dynamic(&sql).bind(self.key);
            if let Some(c) = self.customer_id {
                q = q.bind(c);
            }
            q.fetch_optional(&mut **tx)
                .await?
                .map(|row| row.try_get("status"))
                .transpose()?
        };
        Ok(match status {
            Some(status) if status == self.to => {
                Outcome::Succeeded(json!({ key_column: self.key, "status": self.to }))
            }
            // Nothing to undo: the step it undoes never happened (or was undone already).
            _ if self.undo => Outcome::Succeeded(json!({ key_column: self.key, "status": null })),
            None => Outcome::Failed(json!({
                key_column: self.key,
                "reason": format!("no such {} for this customer", self.thing),
            })),
            Some(status) => Outcome::Failed(json!({
                key_column: self.key,
                "reason": format!("the {} is {status}, not {}", self.thing, self.from),
            })),
        })
    }
}
