//! One trace per saga: W3C trace context (`traceparent`, `tracestate`) carried in the Kafka
//! headers of every command, reply and lifecycle event, and in the HTTP request that starts a saga.
//!
//! Each component that handles a message opens a span that continues the message's trace, and
//! stamps the messages it sends with that span's context: the HTTP request → the orchestrator's
//! first command → the service that handles it → its reply → the orchestrator's next command ...
//! all share one trace id, and each message names the span that sent it as its parent.
//!
//! Span ids come from OpenTelemetry when the OTLP exporter is on (see [`crate::telemetry`]), so the
//! exported spans and the ids in the headers agree. When it is off (the default) there is no
//! OpenTelemetry at all: the ids are drawn here, which costs two random numbers per span, and the
//! headers still let any downstream tool follow a saga.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header names (the same in HTTP and in Kafka record headers).
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Set once the OpenTelemetry layer is installed: spans then get their ids from it.
static OTEL: AtomicBool = AtomicBool::new(false);

pub(crate) fn set_otel_enabled() {
    OTEL.store(true, Ordering::Relaxed);
}

/// Whether spans are exported with OpenTelemetry.
pub fn otel_enabled() -> bool {
    OTEL.load(Ordering::Relaxed)
}

/// A `traceparent`: which trace, and which span in it sent the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`. Anything else (all-zero ids, version `ff`, wrong
    /// lengths, upper case) is not a trace context, as the W3C spec says.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let lower_hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" || !lower_hex(trace, 32) {
            return None;
        }
        if !lower_hex(span, 16) || !lower_hex(flags, 2) {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    pub fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

/// What travels with a message: its `traceparent` and the vendor `tracestate` that goes with it.
/// Empty when a message was written before tracing existed, or came from a client that sent none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

/// `tracestate` values longer than this are dropped, not forwarded (the spec allows 512 bytes of
/// list members; a client must not make every message of a saga carry kilobytes).
const MAX_TRACESTATE: usize = 512;

impl TraceContext {
    /// From header values as received; a malformed `traceparent` is ignored (and its
    /// `tracestate` with it), so a bad client starts a fresh trace rather than breaking one.
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Self {
        let valid = traceparent
            .map(str::trim)
            .and_then(|t| Some((t, TraceParent::parse(t)?)));
        match valid {
            Some((raw, p)) => TraceContext {
                // A version-00 value that parsed is canonical already: keep it as received.
                traceparent: Some(if raw.starts_with("00-") {
                    raw.to_string()
                } else {
                    p.header()
                }),
                tracestate: tracestate
                    .map(str::trim)
                    .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
                    .map(str::to_string),
            },
            None => TraceContext::default(),
        }
    }

    /// The trace context of a Kafka message's headers.
    pub fn from_kafka<H: Headers>(headers: Option<&H>) -> Self {
        let Some(headers) = headers else {
            return TraceContext::default();
        };
        let mut parent = None;
        let mut state = None;
        for h in headers.iter() {
            let value = h.value.and_then(|v| std::str::from_utf8(v).ok());
            // Kafka allows a key twice; the first one counts (as extractors elsewhere do).
            if h.key == TRACEPARENT && parent.is_none() {
                parent = value;
            } else if h.key == TRACESTATE && state.is_none() {
                state = value;
            }
        }
        TraceContext::from_headers(parent, state)
    }

    pub fn parent(&self) -> Option<TraceParent> {
        self.traceparent.as_deref().and_then(TraceParent::parse)
    }

    pub fn is_empty(&self) -> bool {
        self.traceparent.is_none()
    }

    /// The trace id in hex, for logs and the API.
    pub fn trace_id(&self) -> Option<String> {
        // Only valid values are ever stored: the id is characters 3..35 of `00-<id>-...`.
        self.traceparent
            .as_deref()
            .and_then(|t| t.get(3..35))
            .map(str::to_string)
    }

    /// `headers` with this context added (none if empty).
    pub fn add_to(&self, mut headers: OwnedHeaders) -> OwnedHeaders {
        if let Some(tp) = &self.traceparent {
            headers = headers.insert(Header {
                key: TRACEPARENT,
                value: Some(tp.as_str()),
            });
            if let Some(ts) = &self.tracestate {
                headers = headers.insert(Header {
                    key: TRACESTATE,
                    value: Some(ts.as_str()),
                });
            }
        }
        headers
    }

    /// Kafka headers carrying just this context, or `None` when there is nothing to carry.
    pub fn kafka_headers(&self) -> Option<OwnedHeaders> {
        (!self.is_empty()).then(|| self.add_to(OwnedHeaders::new_with_capacity(2)))
    }
}

/// Makes `span` continue the trace of `parent` (a message's or a request's context, or a saga's
/// stored one) and returns the context of `span` itself: what the messages sent within it carry.
/// With no parent, `span` starts a new trace. `span` should declare an empty `trace_id` field,
/// which is filled in so that every log line inside it names the trace.
///
/// Call it right after creating the span (OpenTelemetry fixes a span's parent on first use).
pub fn continue_trace(span: &tracing::Span, parent: &TraceContext) -> TraceContext {
    let remote = parent.parent();
    let own = if otel_enabled() {
        otel_context(span, remote, parent.tracestate.as_deref())
    } else {
        None
    };
    let own = own.unwrap_or_else(|| TraceParent {
        trace_id: remote
            .map(|p| p.trace_id)
            .unwrap_or_else(|| fastrand::u128(1..)),
        span_id: fastrand::u64(1..),
        sampled: remote.is_none_or(|p| p.sampled),
    });
    span.record("trace_id", own.trace_id_hex().as_str());
    TraceContext {
        traceparent: Some(own.header()),
        tracestate: parent.tracestate.clone(),
    }
}

/// The OpenTelemetry span context of `span` after parenting it on `remote`; `None` if the span is
/// not recorded by OpenTelemetry (filtered out), so the caller draws ids itself.
fn otel_context(
    span: &tracing::Span,
    remote: Option<TraceParent>,
    tracestate: Option<&str>,
) -> Option<TraceParent> {
    if let Some(p) = remote {
        let state = tracestate
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let flags = if p.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let cx = SpanContext::new(
            TraceId::from_bytes(p.trace_id.to_be_bytes()),
            SpanId::from_bytes(p.span_id.to_be_bytes()),
            flags,
            true,
            state,
        );
        let parent = opentelemetry::Context::new().with_remote_span_context(cx);
        if let Err(e) = span.set_parent(parent) {
            tracing::trace!(error = %e, "span parent not set");
        }
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if !sc.is_valid() {
        return None;
    }
    Some(TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        sampled: sc.is_sampled(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::Headers;

    #[test]
    fn traceparent_round_trips_and_garbage_is_refused() {
        let s = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(s).unwrap();
        assert_eq!(p.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(p.span_id, 0x00f067aa0ba902b7);
        assert!(p.sampled);
        assert_eq!(p.header(), s);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceParent::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever"
        )
        .is_some());
    }

    #[test]
    fn a_span_continues_its_parents_trace_with_a_span_id_of_its_own() {
        let parent = TraceContext::from_headers(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("vendor=x"),
        );
        let span = tracing::info_span!("t", trace_id = tracing::field::Empty);
        let own = continue_trace(&span, &parent);
        let (p, o) = (parent.parent().unwrap(), own.parent().unwrap());
        assert_eq!(o.trace_id, p.trace_id);
        assert_ne!(o.span_id, p.span_id);
        assert_eq!(own.tracestate.as_deref(), Some("vendor=x"));
        // No parent: a new trace.
        let root = continue_trace(&span, &TraceContext::default());
        assert_ne!(root.parent().unwrap().trace_id, p.trace_id);
    }

    #[test]
    fn the_context_travels_in_kafka_headers() {
        let cx = TraceContext::from_headers(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            Some("a=1"),
        );
        let headers = cx.kafka_headers().unwrap();
        assert_eq!(headers.count(), 2);
        assert_eq!(TraceContext::from_kafka(Some(&headers)), cx);
        assert!(TraceContext::default().kafka_headers().is_none());
        // A malformed traceparent takes its tracestate with it.
        assert_eq!(
            TraceContext::from_headers(Some("garbage"), Some("a=1")),
            TraceContext::default()
        );
    }
}
