//! The commands and what each one does.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::client::Client;
use crate::render::{self, Paint};
use crate::tail::Tail;
use crate::Error;

#[derive(Debug, Parser)]
#[command(
    name = "sagactl",
    version,
    about = "Start, follow and steer sagas of the saga orchestrator",
    after_help = "Examples:\n  sagactl start create_order --file examples/order.json --follow\n  sagactl list --status COMPENSATED\n  sagactl show <saga id> --follow\n  sagactl tail --saga <saga id>"
)]
pub struct Cli {
    /// The orchestrator's API.
    #[arg(
        long,
        env = "SAGA_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// A bearer token, when the API asks for one (`read`, `start` or `operator` scope).
    #[arg(long, env = "SAGA_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// `text` for people, `json` for scripts (the API's own JSON).
    #[arg(long, short, value_enum, default_value_t = Output::Text, global = true)]
    pub output: Output,
    /// Colour on a terminal (`auto`: when stdout is one and NO_COLOR is unset).
    #[arg(long, value_enum, default_value_t = Color::Auto, global = true)]
    pub color: Color,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a saga: the input from --file (or - for stdin), --input, and --set fields.
    Start(StartArgs),
    /// List sagas, newest first.
    List(ListArgs),
    /// A saga's state and timeline; --follow shows each change live until it ends.
    Show {
        saga_id: String,
        #[arg(long, short)]
        follow: bool,
    },
    /// Cancel a saga (its completed steps are undone).
    Cancel { saga_id: String },
    /// Retry the failed compensation of a FAILED saga.
    Retry { saga_id: String },
    /// The saga types, with their steps and compensations.
    Types,
    /// Dead letters the dead-letter topic would not take; --republish offers them again.
    DeadLetters {
        #[arg(long)]
        republish: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Follow the notification log: one saga, one message type, or all.
    Tail(TailArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct StartArgs {
    /// The saga type (`create_order`, `refund_order`; `sagactl types` lists them).
    pub saga_type: String,
    /// The input as JSON text.
    #[arg(long, conflicts_with = "file")]
    pub input: Option<String>,
    /// A file holding the input as JSON; `-` reads standard input.
    #[arg(long, short)]
    pub file: Option<PathBuf>,
    /// A field of the input, `key=value` (`order_details.deliveryFee=2`); the value is JSON
    /// when it parses as JSON, else text. Applied over --input and --file.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Makes a retried start answer with the saga the first one started.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Then follow the saga until it ends, as `show --follow`.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long = "type")]
    pub saga_type: Option<String>,
    /// A saga id, or text in a saga's input or context (a customer id, an order id).
    #[arg(long)]
    pub search: Option<String>,
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only this saga's messages.
    #[arg(long)]
    pub saga: Option<String>,
    /// Only this message type (`saga.completed`), or a prefix ending in * (`order.*`).
    #[arg(long = "type")]
    pub message_type: Option<String>,
    /// The notification log.
    #[arg(
        long,
        env = "NOTIFICATION_LOG",
        default_value = "data/notifications.log"
    )]
    pub file: PathBuf,
    /// Lines already in the log to show first (the last ones that match).
    #[arg(long, short = 'n', default_value_t = 20, conflicts_with = "all")]
    pub lines: usize,
    /// Show every line already in the log that matches.
    #[arg(long)]
    pub all: bool,
    /// Stop at the end of the log instead of following it.
    #[arg(long)]
    pub no_follow: bool,
}

/// Runs one command.
pub async fn run(cli: Cli) -> Result<(), Error> {
    let paint = Paint {
        enabled: match cli.color {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
            }
        },
    };
    let json = cli.output == Output::Json;
    let out = &mut std::io::stdout().lock();
    let client = || Client::new(&cli.url, cli.token.clone());
    match cli.command {
        Command::Start(args) => {
            let client = client()?;
            let input = start_input(&args)?;
            let mut headers = Vec::new();
            if let Some(k) = &args.idempotency_key {
                headers.push(("idempotency-key", k.clone()));
            }
            let path = format!("/sagas/{}", segment(&args.saga_type)?);
            let started = client.post(&path, Some(&input), &headers).await?;
            let id = started["saga_id"].as_str().unwrap_or_default().to_string();
            if json && !args.follow {
                return print_json(out, &started);
            }
            if !json {
                print(
                    out,
                    &format!(
                        "started saga {id} ({}): {}",
                        args.saga_type,
                        paint.status(started["status"].as_str().unwrap_or("STARTED"))
                    ),
                )?;
            }
            if args.follow {
                follow(&client, &id, json, paint, out).await?;
            }
            Ok(())
        }
        Command::List(args) => {
            let client = client()?;
            let mut query = vec![format!("limit={}", args.limit)];
            for (k, v) in [
                ("status", &args.status),
                ("type", &args.saga_type),
                ("search", &args.search),
            ] {
                if let Some(v) = v {
                    query.push(format!("{k}={}", encode(v)));
                }
            }
            let sagas = client.get(&format!("/sagas?{}", query.join("&"))).await?;
            if json {
                return print_json(out, &sagas);
            }
            let list = sagas.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                return print(out, "no sagas");
            }
            write(out, &render::saga_table(&list, paint))
        }
        Command::Show { saga_id, follow: f } => {
            let client = client()?;
            let id = segment(&saga_id)?;
            if f {
                return follow(&client, id, json, paint, out).await;
            }
            let saga = client.get(&format!("/sagas/{id}")).await?;
            if json {
                return print_json(out, &saga);
            }
            write(out, &render::saga_header(&saga, paint))?;
            write(out, &render::timeline(&saga, paint))
        }
        Command::Cancel { saga_id } => command(&client()?, &saga_id, "cancel", json, out).await,
        Command::Retry { saga_id } => command(&client()?, &saga_id, "retry", json, out).await,
        Command::Types => {
            let types = client()?.get("/saga-types").await?;
            if json {
                return print_json(out, &types);
            }
            write(
                out,
                &render::types(types.as_array().map(Vec::as_slice).unwrap_or(&[]), paint),
            )
        }
        Command::DeadLetters { republish, limit } => {
            let client = client()?;
            if republish {
                let r = client.post("/dead-letters/republish", None, &[]).await?;
                if json {
                    return print_json(out, &r);
                }
                return print(
                    out,
                    &format!(
                        "republished {} dead letters; {} left in the database",
                        r["published"], r["left"]
                    ),
                );
            }
            let r = client.get(&format!("/dead-letters?limit={limit}")).await?;
            if json {
                return print_json(out, &r);
            }
            let letters = r["dead_letters"].as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                return print(out, "no dead letters waiting in the database");
            }
            for l in letters {
                print(out, &l.to_string())?;
            }
            Ok(())
        }
        Command::Tail(args) => {
            let tail = Tail {
                path: args.file,
                saga: args.saga,
                message_type: args.message_type,
                lines: (!args.all).then_some(args.lines),
                follow: !args.no_follow,
                pretty: (!json && std::io::stdout().is_terminal()).then_some(paint),
            };
            // Blocking reads and sleeps: nothing else runs in this process meanwhile.
            tail.run(out)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "sagactl", out);
            Ok(())
        }
    }
}

/// Cancel or retry.
async fn command(
    client: &Client,
    saga_id: &str,
    verb: &str,
    json: bool,
    out: &mut impl Write,
) -> Result<(), Error> {
    let id = segment(saga_id)?;
    let r = client
        .post(&format!("/sagas/{id}/{verb}"), None, &[])
        .await?;
    if json {
        return print_json(out, &r);
    }
    print(out, r["message"].as_str().unwrap_or("accepted"))
}

/// The saga's state, then each change as it commits, until it ends; reconnects (resuming after
/// the last event seen) if the stream breaks.
async fn follow(
    client: &Client,
    id: &str,
    json: bool,
    paint: Paint,
    out: &mut impl Write,
) -> Result<(), Error> {
    let path = format!("/sagas/{id}/events");
    let mut last_id: Option<String> = None;
    let mut shown_header = false;
    let mut last_state: Option<Value> = None;
    let mut breaks = 0;
    loop {
        let mut events = Box::pin(client.events(&path, last_id.as_deref()).await?);
        let mut broke = false;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(e) => e,
                Err(_) => {
                    broke = true;
                    break;
                }
            };
            if let Some(i) = &event.id {
                last_id = Some(i.clone());
            }
            if json {
                let line =
                    serde_json::json!({"event": event.event, "id": event.id, "data": event.data});
                print(out, &line.to_string())?;
            } else {
                match event.event.as_str() {
                    "saga" if !shown_header => {
                        write(out, &render::saga_header(&event.data, paint))?;
                        write(out, &render::timeline(&event.data, paint))?;
                        shown_header = true;
                    }
                    "change" => {
                        for l in render::change_line(&event.data, paint) {
                            print(out, &l)?;
                        }
                    }
                    "dropped" => broke = true,
                    _ => {}
                }
            }
            if event.event == "saga" {
                last_state = Some(event.data);
            }
        }
        let ended = last_state
            .as_ref()
            .and_then(|s| s["status"].as_str())
            .is_some_and(|s| matches!(s, "COMPLETED" | "COMPENSATED" | "CANCELLED" | "FAILED"));
        if ended || !broke {
            if let (false, Some(s)) = (json, &last_state) {
                if shown_header && ended {
                    print(
                        out,
                        &format!(
                            "saga {id} ended {}",
                            paint.status(s["status"].as_str().unwrap_or(""))
                        ),
                    )?;
                }
            }
            return Ok(());
        }
        breaks += 1;
        if breaks > 20 {
            return Err(Error::Stream(
                "the event stream kept breaking; giving up (the saga goes on)".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// The input of `start`: the file (or stdin) or `--input`, then each `--set` over it.
fn start_input(args: &StartArgs) -> Result<Value, Error> {
    let text = match (&args.input, &args.file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut t = String::new();
            std::io::stdin()
                .read_to_string(&mut t)
                .map_err(|e| Error::Usage(format!("cannot read the input from stdin: {e}")))?;
            Some(t)
        }
        (None, Some(p)) => Some(std::fs::read_to_string(p).map_err(|e| {
            Error::Usage(format!("cannot read the input file {}: {e}", p.display()))
        })?),
        (None, None) => None,
    };
    let mut input = match text {
        Some(t) => serde_json::from_str::<Value>(&t)
            .map_err(|e| Error::Usage(format!("the input is not JSON: {e}")))?,
        None => Value::Object(Map::new()),
    };
    if !input.is_object() {
        return Err(Error::Usage("the input must be a JSON object".into()));
    }
    for assignment in &args.set {
        let (key, value) = assignment
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--set {assignment:?} is not KEY=VALUE")))?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.into()));
        set_path(&mut input, key, value)?;
    }
    Ok(input)
}

/// Sets `a.b.c` in `target`, making objects on the way.
fn set_path(target: &mut Value, key: &str, value: Value) -> Result<(), Error> {
    let mut at = target;
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::Usage(format!("--set key {key:?} has an empty part")));
    }
    for (i, part) in parts.iter().enumerate() {
        let object = at
            .as_object_mut()
            .ok_or_else(|| Error::Usage(format!("--set {key}: {part:?} is inside a non-object")))?;
        if i == parts.len() - 1 {
            object.insert(part.to_string(), value);
            return Ok(());
        }
        at = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

/// A path segment as given: ids and type names are plain; anything else is refused before it
/// reaches a URL.
fn segment(s: &str) -> Result<&str, Error> {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(s)
    } else {
        Err(Error::Usage(format!(
            "{s:?} is not a saga id or type (letters, digits, - and _)"
        )))
    }
}

fn encode(v: &str) -> String {
    let mut out = String::new();
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn print(out: &mut impl Write, line: &str) -> Result<(), Error> {
    write(out, &format!("{line}\n"))
}

fn write(out: &mut impl Write, text: &str) -> Result<(), Error> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Error::Quiet),
        Err(e) => Err(Error::Io(e.to_string())),
        Ok(()) => Ok(()),
    }
}

fn print_json(out: &mut impl Write, v: &Value) -> Result<(), Error> {
    print(
        out,
        &serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(input: Option<&str>, set: &[&str]) -> StartArgs {
        StartArgs {
            saga_type: "create_order".into(),
            input: input.map(str::to_string),
            file: None,
            set: set.iter().map(|s| s.to_string()).collect(),
            idempotency_key: None,
            follow: false,
        }
    }

    #[test]
    fn set_fields_go_over_the_input_as_json_or_text() {
        let v = start_input(&args(
            Some(r#"{"customer_id":"c-1","order_details":{"deliveryFee":1}}"#),
            &[
                "order_details.deliveryFee=2.5",
                "customer_id=noupdate-1",
                "note.text=a=b",
            ],
        ))
        .unwrap();
        assert_eq!(v["order_details"]["deliveryFee"], 2.5);
        assert_eq!(v["customer_id"], "noupdate-1");
        assert_eq!(v["note"]["text"], "a=b");
    }

    #[test]
    fn bad_input_is_a_usage_error_naming_it() {
        for (input, set) in [
            (Some("[1]"), vec![]),
            (Some("{"), vec![]),
            (None, vec!["novalue"]),
            (None, vec!["a..b=1"]),
            (Some(r#"{"a":1}"#), vec!["a.b=1"]),
        ] {
            let e = start_input(&args(input, &set)).unwrap_err();
            assert!(matches!(e, Error::Usage(_)), "{e:?}");
        }
    }

    #[test]
    fn only_plain_segments_reach_a_url() {
        assert!(segment("0190a7e2-0000-7000-8000-000000000000").is_ok());
        assert!(segment("refund_order").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b"] {
            assert!(segment(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
