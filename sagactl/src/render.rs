//! How `sagactl` shows things on a terminal: a saga's timeline, a list of sagas, the saga types,
//! the changes of a live stream. Plain text with colour only when asked ([`Paint`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anstyle::{AnsiColor, Style};
use serde_json::Value;

/// Colour, or none (output piped, `NO_COLOR`, `--color never`).
#[derive(Debug, Clone, Copy)]
pub struct Paint {
    pub enabled: bool,
}

impl Paint {
    fn paint(&self, style: Style, text: &str) -> String {
        if self.enabled {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    pub fn status(&self, status: &str) -> String {
        let color = match status {
            "COMPLETED" => AnsiColor::Green,
            "COMPENSATED" | "CANCELLED" => AnsiColor::Yellow,
            "FAILED" => AnsiColor::Red,
            "COMPENSATING" | "CANCELLING" => AnsiColor::Magenta,
            _ => AnsiColor::Cyan,
        };
        self.paint(Style::new().fg_color(Some(color.into())).bold(), status)
    }

    pub fn dim(&self, text: &str) -> String {
        self.paint(Style::new().dimmed(), text)
    }

    pub fn bold(&self, text: &str) -> String {
        self.paint(Style::new().bold(), text)
    }

    pub fn failure(&self, text: &str) -> String {
        self.paint(Style::new().fg_color(Some(AnsiColor::Red.into())), text)
    }

    /// An outcome: succeeded green, failed red, timed out yellow.
    pub fn outcome(&self, text: &str) -> String {
        let color = if text == "succeeded" {
            AnsiColor::Green
        } else if text.starts_with("failed") {
            AnsiColor::Red
        } else {
            AnsiColor::Yellow
        };
        self.paint(Style::new().fg_color(Some(color.into())), text)
    }
}

/// Milliseconds since the epoch of an RFC 3339 time as the API writes it.
pub fn millis(text: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
}

/// `12:00:01.123` of an RFC 3339 time (UTC, as the API gives it).
fn clock(text: &str) -> &str {
    text.split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z'))
        .unwrap_or(text)
}

/// A short duration: `340ms`, `2.1s`, `3m12s`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(Duration::from_secs((ms / 1000) as u64)).to_string()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// The saga's header: what it is, where it stands, why.
pub fn saga_header(saga: &Value, paint: Paint) -> String {
    let mut out = format!(
        "{} {} {} (version {})\n",
        paint.bold("saga"),
        text(saga, "saga_id"),
        text(saga, "saga_type"),
        saga["definition_version"]
    );
    out.push_str(&format!(
        "  status   {}",
        paint.status(text(saga, "status"))
    ));
    if let Some(step) = saga["current_step"].as_str() {
        out.push_str(&format!("  at {step}"));
    }
    out.push('\n');
    out.push_str(&format!("  created  {}\n", text(saga, "created_at")));
    if let Some(done) = saga["completed_at"].as_str() {
        let took = millis(done).zip(millis(text(saga, "created_at")));
        let took = took.map(|(b, a)| format!(" (took {})", duration(b - a)));
        out.push_str(&format!("  ended    {done}{}\n", took.unwrap_or_default()));
    }
    for (key, label) in [
        ("error", "error"),
        ("compensation_error", "failed to undo"),
        ("parked", "parked"),
    ] {
        if let Some(why) = saga[key].as_str() {
            out.push_str(&format!("  {label:<8} {why}\n"));
        }
    }
    out
}

/// One line per sending of every step and compensation, in the order they ran: when (from the
/// saga's start), what was sent, and how it ended after how long.
pub fn timeline(saga: &Value, paint: Paint) -> String {
    let start = millis(text(saga, "created_at")).unwrap_or(0);
    let mut out = String::new();
    let steps = saga["steps"].as_array().cloned().unwrap_or_default();
    let width = steps
        .iter()
        .map(|s| text(s, "name").len() + 7)
        .max()
        .unwrap_or(10);
    for step in &steps {
        let compensation = step["kind"] == "compensation";
        let name = if compensation {
            format!("undo {}", text(step, "name"))
        } else {
            text(step, "name").to_string()
        };
        let history = step["history"].as_array().cloned().unwrap_or_default();
        for (i, attempt) in history.iter().enumerate() {
            let sent = text(attempt, "sent_at");
            let sent_ms = millis(sent).unwrap_or(start);
            // An attempt ends when the next is sent (it timed out), or when the step finished.
            let ended = history
                .get(i + 1)
                .and_then(|n| millis(text(n, "sent_at")))
                .or_else(|| step["finished_at"].as_str().and_then(millis));
            let verb = if attempt["attempt"].as_u64().unwrap_or(1) > 1 {
                format!("re-sent (attempt {})", attempt["attempt"])
            } else {
                "sent".to_string()
            };
            let outcome = match attempt["outcome"].as_str() {
                Some(o) => {
                    let took = ended.map(|e| format!(" after {}", duration(e - sent_ms)));
                    format!("{}{}", paint.outcome(o), took.unwrap_or_default())
                }
                None => paint.dim(&format!("waiting for {}", duration(now_ms() - sent_ms))),
            };
            out.push_str(&format!(
                "  {:>9}  {}  {name:<width$}  {verb:<20} {outcome}\n",
                format!("+{}", duration(sent_ms - start)),
                paint.dim(clock(sent)),
            ));
        }
    }
    for w in saga["waiting"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  waiting for the reply to {} (attempt {}); next re-send or give-up at {}\n",
            text(w, "step"),
            w["attempt"],
            clock(text(w, "deadline_at"))
        ));
    }
    out
}

/// A line for one change of a live stream.
pub fn change_line(change: &Value, paint: Paint) -> Vec<String> {
    let at = clock(text(change, "at")).to_string();
    let mut lines = Vec::new();
    for c in change["changes"].as_array().into_iter().flatten() {
        let step = text(c, "step");
        let undo = if c["compensation"] == true {
            "undo "
        } else {
            ""
        };
        let line = match text(c, "kind") {
            "started" => "started".to_string(),
            "sent" => format!("{undo}{step}: sent"),
            "resent" => format!("{undo}{step}: re-sent (attempt {})", c["attempt"]),
            "replied" => format!("{undo}{step}: {}", paint.outcome(text(c, "outcome"))),
            "timed_out" => format!(
                "{undo}{step}: {} (attempt {})",
                paint.outcome("timed out"),
                c["attempt"]
            ),
            "status" => format!("{} → {}", text(c, "from"), paint.status(text(c, "to"))),
            "parked" => format!("parked: {}", text(c, "reason")),
            "resumed" => "resumed".to_string(),
            other => other.to_string(),
        };
        lines.push(format!("  {}  {line}", paint.dim(&at)));
    }
    lines
}

/// A table of sagas: id, type, status, where, customer, created.
pub fn saga_table(sagas: &[Value], paint: Paint) -> String {
    let mut out = format!(
        "{:<36}  {:<16}  {:<12}  {:<22}  {}\n",
        "ID", "TYPE", "STATUS", "STEP", "CREATED"
    );
    for s in sagas {
        let status = text(s, "status");
        // Padded before painting: escape codes have no width on screen.
        let padded = format!("{status:<12}");
        out.push_str(&format!(
            "{:<36}  {:<16}  {}  {:<22}  {}\n",
            text(s, "saga_id"),
            text(s, "saga_type"),
            padded.replace(status, &paint.status(status)),
            s["current_step"].as_str().unwrap_or("-"),
            text(s, "created_at"),
        ));
    }
    out
}

/// Every saga type with its steps, groups and compensations.
pub fn types(types: &[Value], paint: Paint) -> String {
    let mut out = String::new();
    for t in types {
        out.push_str(&format!(
            "{} (version {}): {}\n",
            paint.bold(text(t, "saga_type")),
            t["version"],
            text(t, "description")
        ));
        for s in t["steps"].as_array().into_iter().flatten() {
            let group = s["group"]
                .as_str()
                .map(|g| format!(" [group {g}]"))
                .unwrap_or_default();
            let undo = match s["compensation"]["name"].as_str() {
                Some(c) => format!("undone by {c}"),
                None => text(s, "role").to_string(),
            };
            out.push_str(&format!(
                "  {:<24} {} → {}{group}; {undo}\n",
                text(s, "name"),
                text(&s["command"], "name"),
                text(&s["command"], "topic"),
            ));
        }
    }
    out
}
