//! Where a notification goes: email by SMTP (or, on `cargo run`'s defaults, as `.eml` files a
//! mail client opens) and operator alerts by a signed webhook (or as `.json` files).
//!
//! A failure is [`SendError::Transient`] (try again later: the server is away, a 4xx, a
//! timeout) or [`SendError::Permanent`] (trying again cannot help: a rejected address, an SMTP
//! 5xx, a webhook's 4xx), which skips the retries.

use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;
use sha2::Sha256;

use super::rules::Rendered;
use crate::{Error, Result};

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    Transient(String),
    Permanent(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(e) => write!(f, "{e}"),
            SendError::Permanent(e) => write!(f, "{e}"),
        }
    }
}

/// How long one delivery may take before it counts as failed (and is retried).
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// In the file transport, a `slowmail-` customer's mailbox refuses this many deliveries, then
/// accepts (as the test SMTP server's does).
pub const SLOWMAIL_FAILURES: u32 = 2;

/// One email.
#[derive(Debug, Clone)]
pub struct Email<'a> {
    /// The delivery's id: the Message-ID, and the file name.
    pub id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub content: &'a Rendered,
    /// Which try this is (1 = the first).
    pub attempt: u32,
}

/// Sends email.
#[derive(Clone)]
pub enum Mailer {
    /// Each email as `<id>.eml` in a folder: `cargo run`'s mail, for a mail client to open.
    Files(PathBuf),
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
}

impl Mailer {
    /// SMTP when `smtp_url` is given (`smtp://host:25`, `smtp://user:pass@host:587?tls=required`
    /// for STARTTLS, `smtps://user:pass@host:465` for implicit TLS), else files in `dir`. The
    /// server's certificate is checked against the public roots, and `ca_pem` (a private CA)
    /// when given.
    pub fn new(smtp_url: Option<&str>, ca_pem: Option<&[u8]>, dir: PathBuf) -> Result<Self> {
        let setting = |name: &str, reason: String| Error::Notifications {
            file: name.into(),
            reason,
        };
        match smtp_url {
            Some(url) => {
                // The URL may hold a password: errors say only their kind.
                let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    .map_err(|e| {
                        setting(
                            "SMTP_URL",
                            format!("not a usable SMTP URL ({})", smtp_kind(&e)),
                        )
                    })?
                    .timeout(Some(SEND_TIMEOUT));
                if let Some(pem) = ca_pem {
                    let parsed = reqwest::Url::parse(url)
                        .map_err(|_| setting("SMTP_URL", "not a URL".into()))?;
                    let host = parsed.host_str().unwrap_or_default().to_string();
                    let tls = |e: lettre::transport::smtp::Error| {
                        setting(
                            "SMTP_CA_FILE",
                            format!("not a usable CA certificate ({})", smtp_kind(&e)),
                        )
                    };
                    let parameters = TlsParameters::builder(host)
                        .add_root_certificate(Certificate::from_pem(pem).map_err(tls)?)
                        .build()
                        .map_err(tls)?;
                    let mode = parsed
                        .query_pairs()
                        .find(|(k, _)| k == "tls")
                        .map(|(_, v)| v.into_owned());
                    builder = match (parsed.scheme(), mode.as_deref()) {
                        ("smtps", _) => builder.tls(Tls::Wrapper(parameters)),
                        (_, Some("required")) => builder.tls(Tls::Required(parameters)),
                        (_, Some("opportunistic")) => builder.tls(Tls::Opportunistic(parameters)),
                        _ => {
                            return Err(setting(
                                "SMTP_CA_FILE",
                                "set, but SMTP_URL uses no TLS (smtps://, or ?tls=required)".into(),
                            ))
                        }
                    };
                }
                Ok(Mailer::Smtp(builder.build()))
            }
            None => Ok(Mailer::Files(folder(dir, "mail")?)),
        }
    }

    /// Where mail goes, for the start-up log (no secret in it).
    pub fn describe(&self) -> String {
        match self {
            Mailer::Files(dir) => format!("files in {}", dir.display()),
            Mailer::Smtp(_) => "SMTP (SMTP_URL)".into(),
        }
    }

    pub async fn send(&self, email: &Email<'_>) -> Result<(), SendError> {
        let message = build(email)?;
        match self {
            Mailer::Files(dir) => {
                test_mailbox(email.to, email.attempt)?;
                let path = dir.join(format!("{}.eml", email.id));
                write_atomically(path, message.formatted()).await
            }
            Mailer::Smtp(transport) => match transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(SendError::Permanent(smtp_error(&e))),
                Err(e) => Err(SendError::Transient(smtp_error(&e))),
            },
        }
    }
}

/// The RFC 5322 message: text and HTML alternatives, a Message-ID made of the delivery id (so
/// a copy sent again after a crash is recognisably the same message).
fn build(email: &Email<'_>) -> Result<Message, SendError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| SendError::Permanent(format!("{what}: {e}"));
    let from: Mailbox = email
        .from
        .parse()
        .map_err(|e| bad("the From address", &e))?;
    let to: Mailbox = email
        .to
        .parse()
        .map_err(|e| bad("the recipient's address", &e))?;
    let builder = Message::builder()
        .from(from)
        .to(to)
        .subject(email.content.subject.clone())
        .message_id(Some(format!("<{}@saga-orchestrator>", email.id)));
    let message = match &email.content.html {
        Some(html) => builder.multipart(MultiPart::alternative_plain_html(
            email.content.text.clone(),
            html.clone(),
        )),
        None => builder.body(email.content.text.clone()),
    };
    message.map_err(|e| bad("the message", &e))
}

/// The file transport's test mailboxes, as the test SMTP server has them: `bounce-` addresses
/// are rejected for good, `slowmail-` ones refuse the first tries.
fn test_mailbox(to: &str, attempt: u32) -> Result<(), SendError> {
    let local = to.rsplit_once('@').map_or(to, |(l, _)| l);
    let local = local.rsplit_once('<').map_or(local, |(_, l)| l);
    if local.starts_with("bounce-") {
        return Err(SendError::Permanent(format!(
            "550 5.1.1 <{to}>: mailbox unavailable (test customer bounce-)"
        )));
    }
    if local.starts_with("slowmail-") && attempt <= SLOWMAIL_FAILURES {
        return Err(SendError::Transient(format!(
            "451 4.2.0 <{to}>: mailbox busy, try again later (test customer slowmail-, attempt {attempt} of {} refused)",
            SLOWMAIL_FAILURES
        )));
    }
    Ok(())
}

/// What went wrong with SMTP, without the server's address or credentials.
fn smtp_error(e: &lettre::transport::smtp::Error) -> String {
    match e.status() {
        Some(code) => format!(
            "SMTP {code}: {}",
            e.to_string()
                .rsplit_once(": ")
                .map_or(String::new(), |(_, m)| m.to_string())
        ),
        None => format!("SMTP {}", smtp_kind(e)),
    }
}

fn smtp_kind(e: &lettre::transport::smtp::Error) -> &'static str {
    if e.is_timeout() {
        "timed out"
    } else if e.is_tls() {
        "TLS failed"
    } else if e.is_client() {
        "client error"
    } else if e.is_response() {
        "unexpected response"
    } else if e.is_transient() || e.is_permanent() {
        "refused"
    } else {
        "connection failed"
    }
}

/// `dir`, created if missing: where the file transports write (`what`: mail, alerts).
fn folder(dir: PathBuf, what: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(&dir).map_err(|e| Error::Notifications {
        file: dir.display().to_string(),
        reason: format!("cannot create the {what} folder: {e}"),
    })?;
    Ok(dir)
}

/// Writes `bytes` to `path` whole or not at all (a reader never sees half a file).
async fn write_atomically(path: PathBuf, bytes: Vec<u8>) -> Result<(), SendError> {
    let tmp = path.with_extension("part");
    let result = async {
        tokio::fs::write(&tmp, &bytes).await?;
        tokio::fs::rename(&tmp, &path).await
    }
    .await;
    result.map_err(|e| SendError::Transient(format!("cannot write {}: {e}", path.display())))
}

/// Sends operator alerts.
#[derive(Clone)]
pub enum Alerter {
    /// Each alert as `<id>.json` in a folder.
    Files(PathBuf),
    /// An HTTP POST of the JSON, signed.
    Webhook {
        client: reqwest::Client,
        url: reqwest::Url,
        secret: String,
    },
}

/// The signature header of a webhook: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body">`.
pub const SIGNATURE_HEADER: &str = "x-saga-signature";

impl Alerter {
    /// A webhook when `url` is given (with the secret its requests are signed with), else files
    /// in `dir`.
    pub fn new(url: Option<&str>, secret: Option<&str>, dir: PathBuf) -> Result<Self> {
        let setting = |reason: String| Error::Notifications {
            file: "ALERT_WEBHOOK_URL".into(),
            reason,
        };
        match url {
            Some(url) => {
                let url = reqwest::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https"))
                    .ok_or_else(|| setting("not an http(s) URL".into()))?;
                let secret = secret
                    .filter(|s| s.len() >= 16)
                    .ok_or_else(|| Error::Notifications {
                        file: "ALERT_WEBHOOK_SECRET".into(),
                        reason: "needed with ALERT_WEBHOOK_URL, at least 16 characters (the receiver checks each request's signature with it)".into(),
                    })?;
                let client = reqwest::Client::builder()
                    .timeout(SEND_TIMEOUT)
                    .build()
                    .map_err(|e| setting(format!("no HTTP client: {e}")))?;
                Ok(Alerter::Webhook {
                    client,
                    url,
                    secret: secret.to_string(),
                })
            }
            None => Ok(Alerter::Files(folder(dir, "alerts")?)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Alerter::Files(dir) => format!("files in {}", dir.display()),
            Alerter::Webhook { url, .. } => {
                format!("webhook {}", url.origin().ascii_serialization())
            }
        }
    }

    pub async fn send(&self, id: &str, body: &Value) -> Result<(), SendError> {
        let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
        match self {
            Alerter::Files(dir) => write_atomically(dir.join(format!("{id}.json")), bytes).await,
            Alerter::Webhook {
                client,
                url,
                secret,
            } => {
                let t = platform::time::now_ms() / 1000;
                let response = client
                    .post(url.clone())
                    .header("content-type", "application/json")
                    .header("x-saga-delivery", id)
                    .header(SIGNATURE_HEADER, signature(secret, t, &bytes))
                    .body(bytes)
                    .send()
                    .await;
                match response {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => {
                        let status = r.status();
                        let why = format!("webhook answered {status}");
                        // 408 and 429 say "later"; any other 4xx will not change by itself.
                        if status.is_client_error() && status != 408 && status != 429 {
                            Err(SendError::Permanent(why))
                        } else {
                            Err(SendError::Transient(why))
                        }
                    }
                    Err(e) if e.is_timeout() => {
                        Err(SendError::Transient("webhook timed out".into()))
                    }
                    Err(_) => Err(SendError::Transient("webhook unreachable".into())),
                }
            }
        }
    }
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, as Stripe signs its webhooks: the
/// timestamp in the signed text lets a receiver refuse a replayed request.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> Rendered {
        Rendered {
            subject: "Your order is confirmed".into(),
            text: "Hello\n".into(),
            html: Some("<p>Hello</p>".into()),
        }
    }

    #[tokio::test]
    async fn the_file_transport_writes_a_message_and_keeps_the_test_mailboxes() {
        let dir = tempfile::tempdir().unwrap();
        let mailer = Mailer::new(None, None, dir.path().join("mail")).unwrap();
        let c = content();
        let email = |to, attempt| Email {
            id: "d-1",
            from: "Orders <orders@campus.example>",
            to,
            content: &c,
            attempt,
        };
        mailer
            .send(&email("c-1@customers.example", 1))
            .await
            .unwrap();
        let eml = std::fs::read_to_string(dir.path().join("mail/d-1.eml")).unwrap();
        assert!(eml.contains("Message-ID: <d-1@saga-orchestrator>"), "{eml}");
        assert!(eml.contains("To: c-1@customers.example"), "{eml}");
        assert!(eml.contains("multipart/alternative"), "{eml}");
        assert!(matches!(
            mailer.send(&email("bounce-1@customers.example", 1)).await,
            Err(SendError::Permanent(e)) if e.starts_with("550")
        ));
        assert!(matches!(
            mailer.send(&email("slowmail-1@customers.example", SLOWMAIL_FAILURES)).await,
            Err(SendError::Transient(e)) if e.starts_with("451")
        ));
        mailer
            .send(&email(
                "slowmail-1@customers.example",
                SLOWMAIL_FAILURES + 1,
            ))
            .await
            .unwrap();
    }

    /// Against Python's `hmac.new(secret, b"1700000000." + body, sha256)`: what a receiver in
    /// another language computes.
    #[test]
    fn the_signature_is_hmac_sha256_of_the_timestamp_and_body() {
        assert_eq!(
            signature("whsec-test-secret-0123", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=68d0d2c2b1fd8dd3cf9757f6711713db6c1f8e87bc8e05ae6ebfab6607942326"
        );
        assert_ne!(signature("k", 1, b"a"), signature("k", 2, b"a"));
    }
}
