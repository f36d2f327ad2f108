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

/// A histogram family whose buckets come from a function.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// Every metric family of the process. Cheap to clone (handles share the same values).
#[derive(Clone)]
pub struct Metrics(Arc<Families>);

pub struct Families {
    /// Locked only to register a component's families (once per process) and to render.
    registry: Mutex<Registry>,
    /// Each component's own families (see [`Metrics::component`]), once per process.
    components: Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>,
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
            messages_handled: Family::default(),
            dead_letters: Family::default(),
            consumer_lag: Family::default(),
            assigned_partitions: Family::default(),
            http_duration: Family::new_with_constructor(http_buckets),
            pool_connections: Family::default(),
            pool_max: Family::default(),
            pools: Mutex::new(Vec::new()),
            registry: Mutex::new(Registry::default()),
            components: Mutex::new(Vec::new()),
        };
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
        Metrics(Arc::new(Families {
            registry: Mutex::new(r),
            ..f
        }))
    }

    /// The families of one component, registered the first time it asks (by `register`) and
    /// shared after: a component restarted in the same process (the all-in-one `cargo run`, a
    /// test) counts on in the same series, and no family appears twice in a scrape. Keeps the
    /// families a component alone knows (the orchestrator's sagas and steps) in that component.
    pub fn component<T: Send + Sync + 'static>(
        &self,
        register: impl FnOnce(&mut Registry) -> T,
    ) -> Arc<T> {
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = components
            .iter()
            .find_map(|c| c.clone().downcast::<T>().ok())
        {
            return found;
        }
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let families = Arc::new(register(&mut registry));
        components.push(families.clone());
        families
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
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
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
        let register = |r: &mut Registry| {
            let started: Family<GroupLabels, Counter> = Family::default();
            r.register("saga_started", "Sagas started", started.clone());
            started
        };
        let started = m.component(register);
        started
            .get_or_create(&GroupLabels {
                group: "create_order".into(),
            })
            .inc();
        // Asked again (a component restarted in the process): the same family, once.
        m.component(register)
            .get_or_create(&GroupLabels {
                group: "create_order".into(),
            })
            .inc();
        m.http_request("GET", "/sagas/{id}", 200, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("saga_started_total{group=\"create_order\"} 2"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE saga_started counter").count(),
            1,
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
