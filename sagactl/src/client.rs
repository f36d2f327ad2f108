//! The orchestrator's HTTP API as `sagactl` calls it: JSON in and out, the bearer token, the API's
//! refusals turned into one clear [`Error::Api`], and the event streams read as they arrive.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures_util::{Stream, StreamExt};
use reqwest::{header, Method, StatusCode};
use serde_json::Value;

use crate::Error;

/// Where the API is, and how to call it.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One event of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamEvent {
    /// `saga`, `change`, `dropped`.
    pub event: String,
    pub id: Option<String>,
    pub data: Value,
}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Self, Error> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!(
                "--url (SAGA_URL) must start with http:// or https://, not {base:?}"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| Error::Usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// `GET path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        let r = self
            .request(Method::GET, path)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        json_of(r).await
    }

    /// `POST path` with `body` (none: an empty body) and extra headers.
    pub async fn post(
        &self,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, String)],
    ) -> Result<Value, Error> {
        let mut r = self
            .request(Method::POST, path)
            .timeout(Duration::from_secs(30));
        if let Some(b) = body {
            r = r.json(b);
        }
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        let r = r.send().await.map_err(|e| self.unreachable(e))?;
        json_of(r).await
    }

    /// The events of `path` (an event stream), after `last_event_id`. Ends when the server ends
    /// the stream; a 204 (nothing more will come) is an empty stream.
    pub async fn events(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<impl Stream<Item = Result<StreamEvent, Error>>, Error> {
        let mut r = self
            .request(Method::GET, path)
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            r = r.header("last-event-id", id);
        }
        let response = r.send().await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let empty = status == StatusCode::NO_CONTENT;
        if !status.is_success() {
            return Err(api_error(response).await);
        }
        let events = response.bytes_stream().eventsource();
        Ok(events
            .take_while(move |_| std::future::ready(!empty))
            .filter_map(|item| async move {
                match item {
                    Err(e) => Some(Err(Error::Stream(e.to_string()))),
                    // Comments (heartbeats) and the reconnect hint carry no event.
                    Ok(e) if e.data.is_empty() => None,
                    Ok(e) => Some(Ok(StreamEvent {
                        event: if e.event.is_empty() {
                            "message".to_string()
                        } else {
                            e.event
                        },
                        id: (!e.id.is_empty()).then_some(e.id),
                        data: serde_json::from_str(&e.data).unwrap_or(Value::String(e.data)),
                    })),
                }
            }))
    }

    fn unreachable(&self, e: reqwest::Error) -> Error {
        if e.is_timeout() {
            Error::Unreachable(format!("{} did not answer in time", self.base))
        } else {
            Error::Unreachable(format!(
                "cannot reach the orchestrator at {} (--url, SAGA_URL): {}",
                self.base,
                root_cause(&e)
            ))
        }
    }
}

/// The innermost error: reqwest's own text says only "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

async fn json_of(r: reqwest::Response) -> Result<Value, Error> {
    if !r.status().is_success() {
        return Err(api_error(r).await);
    }
    let text = r.text().await.map_err(|e| Error::Stream(root_cause(&e)))?;
    if text.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|_| {
        Error::Stream("the orchestrator answered with something that is not JSON".into())
    })
}

/// The API's refusal: its status and its `error` text.
async fn api_error(r: reqwest::Response) -> Error {
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let message = body["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
    Error::Api {
        status: status.as_u16(),
        message,
        saga_status: body["status"].as_str().map(str::to_string),
    }
}
