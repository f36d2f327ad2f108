//! Logging and trace export, set up the same way by every binary.
//!
//! - Logs go to **stderr**, filtered by `RUST_LOG` (default `info`, with librdkafka's and sqlx's
//!   chatter kept down): stdout is left to what a program produces, such as the notification
//!   service's message lines, so the two never mix.
//! - `LOG_FORMAT=json` writes one JSON object per log line (with the fields of the enclosing
//!   spans: `saga_id`, `trace_id`, ...), for log pipelines; `text` (the default) is for people.
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns on
//!   OpenTelemetry: spans are exported over OTLP/HTTP (`OTEL_EXPORTER_OTLP_PROTOCOL`
//!   `http/protobuf`, the default, or `http/json`) in batches from a thread of their own. Unset,
//!   no OpenTelemetry code runs at all.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::{Error, Result};

/// The log filter when `RUST_LOG` is not set.
pub const DEFAULT_FILTER: &str = "info,rdkafka=warn,sqlx=warn";

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    /// `LOG_FORMAT` (`text` when unset).
    pub fn from_env() -> Result<Self> {
        match std::env::var("LOG_FORMAT").as_deref().map(str::trim) {
            Err(_) | Ok("") | Ok("text") => Ok(LogFormat::Text),
            Ok("json") => Ok(LogFormat::Json),
            Ok(other) => Err(Error::Config(format!(
                "LOG_FORMAT={other:?} is not a log format; use text or json"
            ))),
        }
    }
}

/// Keeps the trace exporter alive; dropping it exports the spans still buffered.
#[must_use = "dropping the guard stops trace export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("trace export shutdown: {e}");
            }
        }
    }
}

/// Installs the process's logging (and trace export, if configured). `service` names this
/// process in exported traces unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(service: &str) -> Result<Telemetry> {
    init_with(service, DEFAULT_FILTER)
}

/// [`init`] with another filter for when `RUST_LOG` is not set.
pub fn init_with(service: &str, default_filter: &str) -> Result<Telemetry> {
    let format = LogFormat::from_env()?;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let provider = otlp_provider(service)?;
    let installed = match &provider {
        // No OpenTelemetry: RUST_LOG filters globally, so whatever it leaves out (an info span
        // when it says warn) is never even built.
        None => tracing_subscriber::registry()
            .with(filter)
            .with(log_layer(format))
            .try_init()
            .is_ok(),
        // With it, each layer has its own filter: spans are exported whatever RUST_LOG keeps
        // out of the logs, but only this system's own (not every HTTP client or driver span).
        Some(p) => {
            let ours = Targets::new()
                .with_target("orchestrator", LevelFilter::INFO)
                .with_target("services", LevelFilter::INFO)
                .with_target("platform", LevelFilter::INFO)
                .with_target("saga_system", LevelFilter::INFO);
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("saga-orchestrator"))
                .with_filter(ours);
            let ok = tracing_subscriber::registry()
                .with(log_layer(format).with_filter(filter))
                .with(otel)
                .try_init()
                .is_ok();
            if ok {
                crate::trace::set_otel_enabled();
                tracing::info!("exporting traces over OTLP");
            }
            ok
        }
    };
    if !installed {
        // A second init in one process (tests): the first subscriber stays.
        tracing::debug!("logging was already set up");
    }
    Ok(Telemetry { provider })
}

/// What every binary's `--help` adds: the settings read from the environment only.
pub const ENV_HELP: &str = "Also read from the environment:
  LOG_FORMAT                          text (default) or json: one JSON object per log line
  RUST_LOG                            which logs: e.g. info (default), debug, warn,sqlx=error
  NO_COLOR                            no colours in text logs (never used when stderr is not a terminal)
  OTEL_EXPORTER_OTLP_ENDPOINT         export traces over OTLP/HTTP to this collector (off when unset)
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the same, for traces only
  OTEL_EXPORTER_OTLP_PROTOCOL         http/protobuf (default) or http/json
  OTEL_EXPORTER_OTLP_HEADERS          key=value,... sent with every export (e.g. an API key)
  OTEL_SERVICE_NAME                   the service name traces carry";

/// Log lines on stderr, as text or JSON.
fn log_layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    match format {
        // Colours only for a person at a terminal: escape codes in a redirected log or a
        // collector are noise.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    }
}

/// The OTLP trace pipeline, if an endpoint is configured.
fn otlp_provider(service: &str) -> Result<Option<SdkTracerProvider>> {
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()));
    if !configured {
        return Ok(None);
    }
    let protocol = match std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
        .as_deref()
        .map(str::trim)
    {
        Err(_) | Ok("") | Ok("http/protobuf") => Protocol::HttpBinary,
        Ok("http/json") => Protocol::HttpJson,
        Ok(other) => {
            return Err(Error::Config(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported; use http/protobuf or http/json"
            )))
        }
    };
    // The exporter reads the endpoint (adding /v1/traces), headers and timeout from the
    // standard OTEL_EXPORTER_OTLP_* variables itself.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()
        .map_err(|e| Error::Config(format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}")))?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service.to_string());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(name).build())
        .build();
    Ok(Some(provider))
}
