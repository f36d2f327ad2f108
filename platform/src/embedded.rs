//! The embedded Kafka: librdkafka's mock cluster.
//!
//! It speaks the real Kafka wire protocol on loopback TCP, so every client in the system uses the
//! same code it would use against Apache Kafka; only the broker is different. It keeps everything
//! in memory and drops old data (~100k messages per partition): it is for development and tests,
//! never for production.
//!
//! `rdkafka::mocking::MockCluster` is `!Send` and cannot set the group rebalance delay, so the
//! cluster is hosted here by a client created with `test.mock.num.brokers`, and driven through the
//! raw handle. librdkafka's mock API posts every call to the cluster's own thread, so the handle
//! may be used from any thread.

use std::ffi::{CStr, CString};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::producer::BaseProducer;

use crate::kafka::KafkaSettings;
use crate::{Error, Result, Topics};

/// A running mock cluster; it stops when this is dropped.
pub struct EmbeddedKafka {
    cluster: *mut rd::rd_kafka_mock_cluster_t,
    bootstrap: String,
    /// The relay from a known address to the broker, when it has one (see [`Self::start_at`]).
    _relay: Option<Relay>,
    /// Owns the cluster: librdkafka destroys the mock cluster with the client that created it.
    _host: BaseProducer,
}

// SAFETY: the mock cluster's API is thread-safe (every call is an op posted to the cluster's
// thread), and the pointer stays valid while `_host` lives, which is as long as `self`.
unsafe impl Send for EmbeddedKafka {}
unsafe impl Sync for EmbeddedKafka {}

impl EmbeddedKafka {
    /// Starts a cluster of `brokers` brokers on random loopback ports.
    pub fn start(brokers: u32) -> Result<Self> {
        let host: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .create()
            .map_err(Error::kafka("starting the embedded kafka"))?;
        use rdkafka::producer::Producer;
        // SAFETY: the native pointer is valid while `host` lives.
        let cluster = unsafe { rd::rd_kafka_handle_mock_cluster(host.client().native_ptr()) };
        if cluster.is_null() {
            return Err(Error::Embedded(
                "librdkafka did not create a mock cluster".into(),
            ));
        }
        // SAFETY: `cluster` is valid; the returned string is owned by the cluster.
        let bootstrap = unsafe { CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(cluster)) }
            .to_string_lossy()
            .into_owned();
        // The mock waits 3 s before the first join of every group by default; a consumer that
        // starts should start now.
        // SAFETY: `cluster` is valid.
        unsafe { rd::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0) };
        Ok(EmbeddedKafka {
            cluster,
            bootstrap,
            _relay: None,
            _host: host,
        })
    }

    /// A one-broker cluster that other programs reach at `listener`'s address (kcat, a Kafka
    /// UI): the mock broker binds a random port of its own, so a relay forwards each
    /// connection from the address to it, and the broker advertises the address in its metadata
    /// so that every client stays on it.
    pub fn start_at(listener: TcpListener) -> Result<Self> {
        let mut kafka = Self::start(1)?;
        let io_error = |e: io::Error| Error::Embedded(format!("the embedded kafka's address: {e}"));
        let addr = listener.local_addr().map_err(io_error)?;
        let broker = kafka
            .bootstrap
            .to_socket_addrs()
            .map_err(io_error)?
            .next()
            .ok_or_else(|| Error::Embedded(format!("no address in {:?}", kafka.bootstrap)))?;
        let host = CString::new(addr.ip().to_string()).expect("an IP address has no NUL");
        // SAFETY: `cluster` is valid; the host string is copied by librdkafka.
        unsafe {
            rd::rd_kafka_mock_broker_set_host_port(
                kafka.cluster,
                1,
                host.as_ptr(),
                i32::from(addr.port()),
            )
        };
        kafka._relay = Some(Relay::start(listener, broker).map_err(io_error)?);
        kafka.bootstrap = addr.to_string();
        Ok(kafka)
    }

    /// `host:port,...` of the brokers, for any client, in this process or another.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Client settings tuned for the mock.
    pub fn settings(&self) -> KafkaSettings {
        KafkaSettings::embedded(self.bootstrap.clone())
    }

    /// Creates every topic of `topics.json` (the Admin API times out on the mock). The mock has
    /// as many replicas as brokers at most, so the replication factor is capped to that.
    pub fn create_topics(&self, topics: &Topics) -> Result<()> {
        for t in topics.all() {
            let name = CString::new(t.name.as_str())
                .map_err(|_| Error::Embedded(format!("topic name {:?} contains NUL", t.name)))?;
            // SAFETY: `cluster` is valid and `name` is a NUL-terminated string.
            let err = unsafe {
                rd::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), t.partitions, 1)
            };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                && err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS
            {
                return Err(Error::Embedded(format!(
                    "creating topic {}: error {err:?}",
                    t.name
                )));
            }
        }
        Ok(())
    }

    /// Takes broker `id` (1-based) down: clients see connection failures until [`Self::broker_up`].
    pub fn broker_down(&self, id: i32) -> Result<()> {
        // SAFETY: `cluster` is valid.
        let err = unsafe { rd::rd_kafka_mock_broker_set_down(self.cluster, id) };
        check(err, "broker down")
    }

    /// Makes the cluster answer every metadata request for `topic` with `error` (for instance
    /// `RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED`: an ACL that denies it), or clears it with
    /// `RD_KAFKA_RESP_ERR_NO_ERROR`.
    pub fn topic_error(&self, topic: &str, error: rd::rd_kafka_resp_err_t) -> Result<()> {
        let name = CString::new(topic)
            .map_err(|_| Error::Embedded(format!("topic name {topic:?} contains NUL")))?;
        // SAFETY: `cluster` is valid and `name` outlives the call.
        unsafe { rd::rd_kafka_mock_topic_set_error(self.cluster, name.as_ptr(), error) };
        Ok(())
    }

    /// Brings broker `id` back.
    pub fn broker_up(&self, id: i32) -> Result<()> {
        // SAFETY: `cluster` is valid.
        let err = unsafe { rd::rd_kafka_mock_broker_set_up(self.cluster, id) };
        check(err, "broker up")
    }
}

fn check(err: rd::rd_kafka_resp_err_t, what: &str) -> Result<()> {
    if err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(Error::Embedded(format!("{what}: error {err:?}")))
    }
}

/// Forwards every connection made to a listener to the broker, both ways, until dropped.
struct Relay {
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(listener: TcpListener, broker: SocketAddr) -> io::Result<Relay> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("embedded-kafka-relay".into())
            .spawn(move || {
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            if let Err(e) = pipe(client, broker) {
                                tracing::debug!(error = %e, "embedded kafka relay: a connection failed");
                            }
                        }
                        // Nothing to accept: look again shortly (and for the stop flag).
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "embedded kafka relay: accept failed");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(Relay { stop })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `client` to the broker and back, each way on a thread of its own; when either side
/// closes, both are shut down (the broker closes its side when the cluster stops).
fn pipe(client: TcpStream, broker: SocketAddr) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let upstream = TcpStream::connect(broker)?;
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    for (mut from, mut to) in [
        (client.try_clone()?, upstream.try_clone()?),
        (upstream, client),
    ] {
        std::thread::spawn(move || {
            let _ = io::copy(&mut from, &mut to);
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        });
    }
    Ok(())
}
