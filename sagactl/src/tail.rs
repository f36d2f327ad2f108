//! `sagactl tail`: the notification log (one JSON line per message the notification service saw),
//! filtered to one saga or one message type, followed as it grows and across its rotations.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::render::Paint;
use crate::Error;

/// Which lines, and how they are shown.
#[derive(Debug, Clone)]
pub struct Tail {
    pub path: PathBuf,
    pub saga: Option<String>,
    /// A message type (`saga.completed`), or a prefix ending in `*` (`order.*`).
    pub message_type: Option<String>,
    /// Lines already in the log to show first (the last ones that match); `None`: all.
    pub lines: Option<usize>,
    pub follow: bool,
    /// Aligned and coloured (a terminal), or the JSON lines as they are (piped).
    pub pretty: Option<Paint>,
}

/// How often the log is looked at for new lines.
const POLL: Duration = Duration::from_millis(200);

impl Tail {
    pub fn matches(&self, line: &Value) -> bool {
        let saga = self
            .saga
            .as_ref()
            .is_none_or(|id| line["saga_id"].as_str() == Some(id.as_str()));
        let kind = self.message_type.as_ref().is_none_or(|t| {
            let actual = line["type"].as_str().unwrap_or("");
            match t.strip_suffix('*') {
                Some(prefix) => actual.starts_with(prefix),
                None => actual == t,
            }
        });
        saga && kind
    }

    /// How one line is printed.
    pub fn format(&self, raw: &str, line: &Value) -> String {
        let Some(paint) = self.pretty else {
            return raw.to_string();
        };
        let time = line["time"].as_str().unwrap_or("");
        let time = time
            .split_once('T')
            .map_or(time, |(_, t)| t.trim_end_matches('Z'));
        let kind = line["type"].as_str().unwrap_or("(unreadable)");
        let saga = line["saga_id"].as_str().unwrap_or("-");
        // A delivery attempt has no payload: who it went to, which try, and why it failed.
        let delivery = || {
            line.get("to").map(|to| {
                let mut s = format!(
                    "{} (try {})",
                    to.as_str().unwrap_or(""),
                    line["attempt"].as_u64().unwrap_or(0)
                );
                if let Some(e) = line["error"].as_str() {
                    s.push_str(": ");
                    s.push_str(e);
                }
                s
            })
        };
        let mut payload = line
            .get("payload")
            .map(|p| p.to_string())
            .or_else(|| line.get("unreadable").map(|u| u.to_string()))
            .or_else(delivery)
            .unwrap_or_default();
        if payload.chars().count() > 120 {
            payload = payload.chars().take(119).collect::<String>() + "…";
        }
        // Padded before painting: escape codes have no width on screen.
        let padded = format!("{kind:<32}");
        let kind_shown = if kind.ends_with("failed")
            || kind == "delivery.retrying"
            || kind == "delivery.dead_lettered"
        {
            padded.replace(kind, &paint.failure(kind))
        } else {
            padded
        };
        format!(
            "{}  {:<22}  {}  {}  {}",
            paint.dim(time),
            line["topic"]
                .as_str()
                .or_else(|| line["channel"].as_str())
                .unwrap_or(""),
            kind_shown,
            saga,
            paint.dim(&payload)
        )
    }

    /// Prints what matches until the log ends (or, following, until the process is stopped).
    pub fn run(&self, out: &mut impl Write) -> Result<(), Error> {
        let file = open(&self.path, !self.follow)?;
        let mut reader = BufReader::new(file);
        // What is there already: the last `lines` that match.
        let mut existing = Vec::new();
        let mut position = read_lines(&mut reader, |raw, v| {
            if self.matches(v) {
                existing.push(self.format(raw, v));
                if let Some(n) = self.lines {
                    if existing.len() > n {
                        existing.remove(0);
                    }
                }
            }
        })?;
        for l in existing {
            emit(out, &l)?;
        }
        if !self.follow {
            return Ok(());
        }
        let mut identity = identity_of(&self.path);
        loop {
            std::thread::sleep(POLL);
            let now = identity_and_len(&self.path);
            // Rotated (another file under the name) or truncated: read the new one from its start.
            let rotated = now.map(|(id, len)| Some(id) != identity || len < position);
            if rotated == Some(true) {
                if let Ok(file) = open(&self.path, false) {
                    reader = BufReader::new(file);
                    position = 0;
                    identity = identity_of(&self.path);
                }
            }
            reader
                .seek(SeekFrom::Start(position))
                .map_err(|e| Error::Io(format!("reading {}: {e}", self.path.display())))?;
            position += read_lines(&mut reader, |raw, v| {
                if self.matches(v) {
                    let _ = emit(out, &self.format(raw, v));
                }
            })?;
        }
    }
}

fn emit(out: &mut impl Write, line: &str) -> Result<(), Error> {
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        // The reader went away (`| head`): stop quietly.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error::Quiet),
        Err(e) => Err(Error::Io(e.to_string())),
        Ok(()) => Ok(()),
    }
}

fn open(path: &Path, must_exist: bool) -> Result<std::fs::File, Error> {
    loop {
        match std::fs::File::open(path) {
            Ok(f) => return Ok(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                // Not written yet (nothing has run): wait for it.
                std::thread::sleep(POLL);
            }
            Err(e) => {
                return Err(Error::Io(format!(
                    "cannot read the notification log {} (--file): {e}",
                    path.display()
                )))
            }
        }
    }
}

/// Reads complete lines from where the reader is; a partial last line is left for next time.
/// Returns the bytes consumed.
fn read_lines(
    reader: &mut BufReader<std::fs::File>,
    mut each: impl FnMut(&str, &Value),
) -> Result<u64, Error> {
    let mut consumed = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader
            .by_ref()
            .read_line(&mut line)
            .map_err(|e| Error::Io(e.to_string()))?;
        if n == 0 || !line.ends_with('\n') {
            return Ok(consumed);
        }
        consumed += n as u64;
        let raw = line.trim_end();
        if let Ok(v) = serde_json::from_str::<Value>(raw) {
            each(raw, &v);
        }
    }
}

#[cfg(unix)]
fn identity_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| m.ino())
}

#[cfg(not(unix))]
fn identity_of(_path: &Path) -> Option<u64> {
    Some(0)
}

fn identity_and_len(path: &Path) -> Option<(u64, u64)> {
    let len = std::fs::metadata(path).ok()?.len();
    Some((identity_of(path)?, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tail(saga: Option<&str>, t: Option<&str>) -> Tail {
        Tail {
            path: PathBuf::new(),
            saga: saga.map(str::to_string),
            message_type: t.map(str::to_string),
            lines: None,
            follow: false,
            pretty: None,
        }
    }

    #[test]
    fn filters_by_saga_and_by_type_or_prefix() {
        let line = json!({"saga_id": "a", "type": "order.created"});
        assert!(tail(None, None).matches(&line));
        assert!(tail(Some("a"), None).matches(&line));
        assert!(!tail(Some("b"), None).matches(&line));
        assert!(tail(None, Some("order.*")).matches(&line));
        assert!(tail(None, Some("order.created")).matches(&line));
        assert!(!tail(None, Some("order.")).matches(&line));
        assert!(!tail(Some("a"), Some("saga.*")).matches(&line));
    }

    #[test]
    fn piped_lines_are_the_log_lines_unchanged() {
        let raw = r#"{"saga_id":"a","type":"order.created"}"#;
        let v: Value = serde_json::from_str(raw).unwrap();
        assert_eq!(tail(None, None).format(raw, &v), raw);
    }

    #[test]
    fn a_terminal_gets_aligned_columns_and_colour() {
        let line = json!({
            "time": "2026-12-04T19:35:10.029Z", "topic": "order_events", "type": "order.creation_failed",
            "saga_id": "s-1", "payload": {"reason": "no"}
        });
        let mut t = tail(None, None);
        t.pretty = Some(Paint { enabled: false });
        let plain = t.format("", &line);
        assert_eq!(
            plain,
            format!(
                "19:35:10.029  {:<22}  {:<32}  s-1  {{\"reason\":\"no\"}}",
                "order_events", "order.creation_failed"
            )
        );
        t.pretty = Some(Paint { enabled: true });
        let coloured = t.format("", &line);
        assert!(
            coloured.contains("\u{1b}[31morder.creation_failed"),
            "{coloured:?}"
        );
    }

    #[test]
    fn a_delivery_attempt_shows_its_channel_recipient_try_and_error() {
        let line = json!({
            "time": "2026-12-06T08:00:00.000Z", "type": "delivery.retrying", "saga_id": "s-1",
            "channel": "mail", "to": "c-1@customers.example", "attempt": 2, "error": "451 busy"
        });
        let mut t = tail(None, Some("delivery.*"));
        assert!(t.matches(&line));
        t.pretty = Some(Paint { enabled: false });
        assert_eq!(
            t.format("", &line),
            format!(
                "08:00:00.000  {:<22}  {:<32}  s-1  c-1@customers.example (try 2): 451 busy",
                "mail", "delivery.retrying"
            )
        );
    }

    #[test]
    fn shows_the_last_lines_that_match_then_stops_without_follow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notifications.log");
        let mut text = String::new();
        for i in 0..5 {
            text.push_str(&format!(
                "{{\"saga_id\":\"s{}\",\"type\":\"t{i}\"}}\n",
                i % 2
            ));
        }
        text.push_str("{\"saga_id\":\"s0\",\"type\":\"partial"); // no newline yet
        std::fs::write(&path, text).unwrap();
        let mut t = tail(Some("s0"), None);
        t.path = path;
        t.lines = Some(2);
        let mut out = Vec::new();
        t.run(&mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "{\"saga_id\":\"s0\",\"type\":\"t2\"}\n{\"saga_id\":\"s0\",\"type\":\"t4\"}\n"
        );
    }
}
