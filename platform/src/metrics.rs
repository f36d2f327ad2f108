//! Prometheus metrics of the whole system, in the OpenMetrics text format.
//!
//! One [`Metrics`] per process holds every metric family, registered once: the all-in-one
//! `cargo run` puts the orchestrator and the four services in one process, and each family (say
//! `dead_letters_total`) must appear once in a scrape, with a `component` label telling them
//! apart. The registry is owned, not global, so the end-to-end tests can run many systems in one
//! test process and still count each one's sagas exactly.
//!
//! Names follow Prometheus conventions: base units in the name (`_seconds`), counters end in
//! `_total` (the client library appends it), histograms have explicit buckets.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::db::Db;

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SagaLabels {
    pub saga_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    pub saga_type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    pub saga_type: String,
    pub step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepOutcomeLabels {
    pub saga_type: String,
    pub step: String,
    /// `forward` or `compensation`.
    pub kind: String,
    /// `completed` or `failed`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompensationFailureLabels {
    pub saga_type: String,
    pub step: String,
    /// `refused` (the participant said no) or `timed_out` (no answer in time).
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    pub component: String,
    /// A small fixed set: `unreadable`, `unknown_saga`, `rejected`, `failed`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub component: String,
    /// `done` or `dead_lettered`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LagLabels {
    pub group: String,
    pub topic: String,
    pub partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    /// The route template (`/sagas/{id}`), or `unmatched`: never the raw path, so a scan of
    /// random URLs cannot create unbounded series.
    pub route: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub component: String,
    /// `writer` (transactions; one connection on SQLite) or `reader` (reads of the API, a pool
    /// of its own so they cannot starve the writers).
    pub pool: String,
    /// `idle` or `in_use`.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolMaxLabels {
    pub component: String,
    pub pool: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn saga_buckets() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
        3600.0,
    ])
}

fn step_buckets() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0,
    ])
}

fn http_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric family of the process. Cheap to clone (handles share the same values).
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

pub struct Families {
    registry: Registry,
    // The orchestrator: sagas and steps.
    pub sagas_started: Family<SagaLabels, Counter>,
    pub sagas_ended: Family<EndLabels, Counter>,
    pub saga_duration: HistogramFamily<EndLabels>,
    pub step_duration: HistogramFamily<StepOutcomeLabels>,
    pub command_resends: Family<StepLabels, Counter>,
    pub step_give_ups: Family<StepLabels, Counter>,
    pub compensations: Family<StepOutcomeLabels, Counter>,
    pub compensation_failures: Family<CompensationFailureLabels, Counter>,
    pub outbox_unsent: Gauge,
    /// Sagas not yet ended (STARTED, COMPENSATING, CANCELLING), read at scrape time.
    pub sagas_in_flight: Gauge,
    /// Sagas set aside for an operator (parked), read at scrape time.
    pub sagas_parked: Gauge,
    /// Age of the oldest saga not yet ended (0 when none), read at scrape time.
    pub oldest_running_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Dead letters kept in the orchestrator's database, waiting for the topic.
    pub dead_letters_stored: Gauge,
    pub outbox_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub inbox_duplicates: Counter,
    // Every Kafka consumer.
    pub messages_handled: Family<HandledLabels, Counter>,
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    pub consumer_lag: Family<LagLabels, Gauge>,
    pub assigned_partitions: Family<GroupLabels, Gauge>,
    // The HTTP API.
    pub http_duration: HistogramFamily<HttpLabels>,
    // Databases.
    pub pool_connections: Family<PoolLabels, Gauge>,
    pub pool_max: Family<PoolMaxLabels, Gauge>,
    pools: Mutex<Vec<(String, Db)>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl std::ops::Deref for Metrics {
    type Target = Families;
    fn deref(&self) -> &Families {
        &self.0
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let f = Families {
            sagas_started: Family::default(),
            sagas_ended: Family::default(),
            saga_duration: Family::new_with_constructor(saga_buckets),
            step_duration: Family::new_with_constructor(step_buckets),
            command_resends: Family::default(),
            step_give_ups: Family::default(),
            compensations: Family::default(),
            compensation_failures: Family::default(),
            outbox_unsent: Gauge::default(),
            sagas_in_flight: Gauge::default(),
            sagas_parked: Gauge::default(),
            oldest_running_age: Gauge::default(),
            dead_letters_stored: Gauge::default(),
            outbox_oldest_age: Gauge::default(),
            inbox_duplicates: Counter::default(),
            messages_handled: Family::default(),
            dead_letters: Family::default(),
            consumer_lag: Family::default(),
            assigned_partitions: Family::default(),
            http_duration: Family::new_with_constructor(http_buckets),
            pool_connections: Family::default(),
            pool_max: Family::default(),
            pools: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        r.register(
            "saga_started",
            "Sagas started (stored with their first command), by saga type",
            f.sagas_started.clone(),
        );
        r.register(
            "saga_ended",
            "Sagas that reached a final status (COMPLETED, COMPENSATED, CANCELLED, FAILED); a FAILED saga retried ends again",
            f.sagas_ended.clone(),
        );
        r.register_with_unit(
            "saga_duration",
            "Time from a saga's start to its final status",
            Unit::Seconds,
            f.saga_duration.clone(),
        );
        r.register_with_unit(
            "saga_step_duration",
            "Time from a step's (or compensation's) first command to the reply that settled it, or to giving up",
            Unit::Seconds,
            f.step_duration.clone(),
        );
        r.register(
            "saga_command_resends",
            "Commands sent again because their reply was overdue (or a compensation was refused)",
            f.command_resends.clone(),
        );
        r.register(
            "saga_step_give_ups",
            "Forward steps given up for lack of a reply (they are compensated as if they ran)",
            f.step_give_ups.clone(),
        );
        r.register(
            "saga_compensations",
            "Compensations settled: completed, or failed (the saga is FAILED)",
            f.compensations.clone(),
        );
        r.register(
            "saga_compensation_attempt_failures",
            "Compensation attempts that were refused or got no answer in time (each is retried)",
            f.compensation_failures.clone(),
        );
        r.register(
            "saga_in_flight",
            "Sagas that have not ended yet (STARTED, COMPENSATING, CANCELLING)",
            f.sagas_in_flight.clone(),
        );
        r.register(
            "saga_parked",
            "Sagas parked for an operator (a definition version not loaded, a timer failing for good): POST /sagas/{id}/retry",
            f.sagas_parked.clone(),
        );
        r.register_with_unit(
            "saga_oldest_running_age",
            "Age of the oldest saga that has not ended (0 when none)",
            Unit::Seconds,
            f.oldest_running_age.clone(),
        );
        r.register(
            "dead_letters_stored",
            "Dead letters kept in the orchestrator's database because the dead-letter topic would not take them",
            f.dead_letters_stored.clone(),
        );
        r.register(
            "saga_outbox_unsent_messages",
            "Messages written to the outbox and not yet published to Kafka",
            f.outbox_unsent.clone(),
        );
        r.register_with_unit(
            "saga_outbox_oldest_unsent_age",
            "Age of the oldest unpublished outbox message (0 when none)",
            Unit::Seconds,
            f.outbox_oldest_age.clone(),
        );
        r.register(
            "saga_inbox_duplicates",
            "Replies received again and ignored because the inbox had their message id",
            f.inbox_duplicates.clone(),
        );
        r.register(
            "messages_handled",
            "Kafka messages a component finished with, by outcome",
            f.messages_handled.clone(),
        );
        r.register(
            "dead_letters",
            "Messages sent to the dead-letter topic, by component and reason",
            f.dead_letters.clone(),
        );
        r.register(
            "kafka_consumer_lag_messages",
            "Messages on a partition after the consumer group's committed offset (librdkafka statistics)",
            f.consumer_lag.clone(),
        );
        r.register(
            "kafka_consumer_assigned_partitions",
            "Partitions assigned to this process's consumer of a group",
            f.assigned_partitions.clone(),
        );
        r.register_with_unit(
            "http_server_request_duration",
            "HTTP requests by method, route and status, with their latency",
            Unit::Seconds,
            f.http_duration.clone(),
        );
        r.register(
            "db_pool_connections",
            "Database connections by component, pool and state",
            f.pool_connections.clone(),
        );
        r.register(
            "db_pool_max_connections",
            "The most connections a pool opens",
            f.pool_max.clone(),
        );
        Metrics(Arc::new(Families { registry: r, ..f }))
    }

    /// Reports `db`'s pools as `component`'s at every scrape.
    pub fn watch_pool(&self, component: &str, db: &Db) {
        if let Ok(mut pools) = self.pools.lock() {
            pools.retain(|(c, _)| c != component);
            pools.push((component.to_string(), db.clone()));
        }
    }

    /// The OpenMetrics text of every family.
    pub fn render(&self) -> String {
        self.refresh_pools();
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; say so rather than serve half a page.
            out.clear();
            let _ = writeln!(out, "# encoding failed\n# EOF");
        }
        out
    }

    fn refresh_pools(&self) {
        let Ok(pools) = self.pools.lock() else { return };
        for (component, db) in pools.iter() {
            let named = [("writer", &db.writer), ("reader", &db.reader)];
            for (pool, p) in named {
                let idle = p.num_idle() as i64;
                let size = i64::from(p.size());
                let label = |state: &str| PoolLabels {
                    component: component.clone(),
                    pool: pool.to_string(),
                    state: state.to_string(),
                };
                self.pool_connections
                    .get_or_create(&label("idle"))
                    .set(idle);
                self.pool_connections
                    .get_or_create(&label("in_use"))
                    .set((size - idle).max(0));
                self.pool_max
                    .get_or_create(&PoolMaxLabels {
                        component: component.clone(),
                        pool: pool.to_string(),
                    })
                    .set(i64::from(p.options().get_max_connections()));
            }
        }
    }

    /// Records one finished HTTP request. The method label comes from a closed set (the
    /// standard methods, else `_OTHER`, as OpenTelemetry's conventions say): a client choosing
    /// the method must not choose how many series `/metrics` has.
    pub fn http_request(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
        ];
        let method = KNOWN
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("_OTHER");
        self.http_duration
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route: route.to_string(),
                status: status.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_conventional_names_and_buckets() {
        let m = Metrics::new();
        m.sagas_started
            .get_or_create(&SagaLabels {
                saga_type: "create_order".into(),
            })
            .inc();
        m.http_request("GET", "/sagas/{id}", 200, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("saga_started_total{saga_type=\"create_order\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE http_server_request_duration_seconds histogram"));
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{le=\"0.005\",method=\"GET\",route=\"/sagas/{id}\",status=\"200\"} 1"
        ), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn made_up_http_methods_share_one_series() {
        let m = Metrics::new();
        for i in 0..500 {
            m.http_request(
                &format!("BREW{i}"),
                "unmatched",
                405,
                Duration::from_millis(1),
            );
        }
        m.http_request("DELETE", "unmatched", 405, Duration::from_millis(1));
        let text = m.render();
        let methods: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
            .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(methods, ["DELETE", "_OTHER"].into(), "{text}");
    }
}
