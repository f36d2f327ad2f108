//! Kafka clients configured the one way this system uses them.
//!
//! - Consumers are at-least-once: offsets are *stored* by [`run_consumer`] only after the handler
//!   has committed its effect, and auto-commit only ever commits stored offsets.
//! - Producers are idempotent with `acks=all`, so a retried send never duplicates or reorders.
//! - A message that cannot be handled goes to the dead-letter topic with headers saying where it
//!   came from and why, and the partition moves on.
//!
//! [`config`]: settings; [`admin`]: the cluster (probe, topics); [`consumer`]: the consume loop;
//! [`delayed`]: the consume loop of a retry topic.

mod admin;
mod config;
mod consumer;
mod delayed;

pub use crate::dead_letters::DeadLetters;
pub use admin::reachable;
pub use config::*;
pub use consumer::*;
pub use delayed::{due_ms, run_delayed, DUE_HEADER};

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use config::setting_to_check;

    use crate::Ops;

    #[test]
    fn overrides_parse_and_reject_garbage() {
        let o = parse_overrides(" a=1, b.c = x=y ,").unwrap();
        assert_eq!(
            o,
            vec![("a".into(), "1".into()), ("b.c".into(), "x=y".into())]
        );
        assert!(parse_overrides("novalue").is_err());
        assert!(parse_overrides("=v").is_err());
        assert!(parse_overrides("").unwrap().is_empty());
    }

    /// Consumers are static members when `INSTANCE_ID` names them (never by default: a
    /// `HOSTNAME` that changes on every rollout stalled each one for a session), with a session
    /// timeout chosen for a restart, not librdkafka's 45 s; `KAFKA_CONFIG` still overrides both;
    /// the mock keeps its own short settings.
    #[test]
    fn consumers_are_static_members_with_a_chosen_session_timeout() {
        let args = |id: Option<&str>| KafkaArgs {
            kafka_brokers: "b:9092".into(),
            kafka_config: String::new(),
            kafka_config_file: None,
            topics: Default::default(),
            group_prefix: String::new(),
            create_topics: false,
            kafka_startup_timeout: Duration::from_secs(1),
            instance_id: id.map(String::from),
        };
        let s = args(Some("orchestrator-0")).settings().unwrap();
        let c = s.consumer_config("saga-orchestrator");
        assert_eq!(c.get("group.instance.id"), Some("orchestrator-0"));
        assert_eq!(c.get("session.timeout.ms"), Some(SESSION_TIMEOUT_MS));
        assert_eq!(args(Some("  ")).settings().unwrap().instance_id, None);
        let unnamed = args(None).settings().unwrap();
        assert_eq!(unnamed.instance_id, None, "no name unless one is given");
        assert_eq!(unnamed.consumer_config("g").get("group.instance.id"), None);

        let mut overridden = s.clone();
        overridden.overrides = parse_overrides("session.timeout.ms=60000").unwrap();
        assert_eq!(
            overridden.consumer_config("g").get("session.timeout.ms"),
            Some("60000")
        );
        let embedded = KafkaSettings::embedded("127.0.0.1:1").consumer_config("g");
        assert_eq!(embedded.get("group.instance.id"), None);
        assert_eq!(embedded.get("session.timeout.ms"), Some("3000"));
    }

    /// A properties file holds what `KAFKA_CONFIG` cannot (a value with a comma); KAFKA_CONFIG
    /// still wins; a bad line is named by number, never shown.
    #[test]
    fn a_properties_file_gives_settings_that_kafka_config_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("client.properties");
        std::fs::write(
            &file,
            "# the cluster\nsecurity.protocol=SASL_SSL\n! also a comment\n\nssl.cipher.suites=A,B\nsasl.password=p=q\n",
        )
        .unwrap();
        let args = KafkaArgs {
            kafka_brokers: "b:9092".into(),
            kafka_config: "security.protocol=SSL".into(),
            kafka_config_file: Some(file.clone()),
            topics: Default::default(),
            group_prefix: String::new(),
            create_topics: false,
            kafka_startup_timeout: Duration::from_secs(1),
            instance_id: None,
        };
        let s = args.settings().unwrap();
        let get = |k: &str| {
            s.overrides
                .iter()
                .rev()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("ssl.cipher.suites"), Some("A,B"));
        assert_eq!(get("sasl.password"), Some("p=q"));
        assert_eq!(
            get("security.protocol"),
            Some("SSL"),
            "KAFKA_CONFIG applied last"
        );
        std::fs::write(&file, "sasl.password=secret\nnot a setting secret\n").unwrap();
        let err = args.settings().unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("KAFKA_CONFIG_FILE"),
            "{err}"
        );
        assert!(!err.contains("secret"), "{err}");
    }

    fn settings(config: &str) -> KafkaSettings {
        KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            overrides: parse_overrides(config).unwrap(),
            embedded: false,
            instance_id: None,
            group_prefix: String::new(),
        }
    }

    #[tokio::test]
    async fn tls_and_sasl_clients_can_be_created() {
        for config in [
            "security.protocol=SSL",
            "security.protocol=SASL_SSL,sasl.mechanism=PLAIN,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-256,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=SCRAM-SHA-512,sasl.username=u,sasl.password=p",
            "security.protocol=SASL_SSL,sasl.mechanism=OAUTHBEARER,sasl.oauthbearer.config=principal=u",
            "security.protocol=SASL_PLAINTEXT,sasl.mechanism=PLAIN,sasl.username=u,sasl.password=p",
        ] {
            let k = settings(config);
            if let Err(e) = k.producer() {
                panic!("{config}: {e}");
            }
            if let Err(e) = k.consumer("g", &["t"], &Ops::default()) {
                panic!("{config}: {e}");
            }
        }
    }

    #[test]
    fn security_mistakes_fail_at_creation_naming_the_setting() {
        let cases = [
            ("security.protocol=SASL_SSL,sasl.mechanism=FOO", "FOO"),
            (
                "security.protocol=SSL,ssl.ca.location=/nonexistent/ca.pem",
                "ssl.ca.location",
            ),
            ("security.protocol=TLS", "security.protocol"),
            ("sasl.mechanismz=PLAIN", "sasl.mechanismz"),
        ];
        for (config, named) in cases {
            let e = match settings(config).producer() {
                Ok(_) => panic!("{config} was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(named), "{config}: {e}");
            assert!(e.contains("KAFKA_CONFIG"), "{config}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    /// The Java client's `Utils.murmur2`, written from its definition, to check placement.
    fn java_murmur2(data: &[u8]) -> i32 {
        const M: u32 = 0x5bd1_e995;
        let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
        let chunks = data.chunks_exact(4);
        let tail = chunks.remainder();
        for c in chunks {
            let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            k = k.wrapping_mul(M);
            k ^= k >> 24;
            k = k.wrapping_mul(M);
            h = h.wrapping_mul(M) ^ k;
        }
        if !tail.is_empty() {
            for (i, b) in tail.iter().enumerate().rev() {
                h ^= u32::from(*b) << (8 * i);
            }
            h = h.wrapping_mul(M);
        }
        h ^= h >> 13;
        h = h.wrapping_mul(M);
        h ^= h >> 15;
        h as i32
    }

    /// A key lands on the partition the Java client gives it: `(murmur2(key) & 0x7fffffff) %
    /// partitions`, so a Java participant's reply for a saga shares the saga's partition.
    #[tokio::test]
    async fn a_key_lands_on_the_partition_the_java_client_gives_it() {
        // Kafka's own test vectors for its murmur2.
        assert_eq!(java_murmur2(b"21"), -973_932_308);
        assert_eq!(java_murmur2(b"foobar"), -790_332_482);
        assert_eq!(java_murmur2(b"a-little-bit-long-string"), -985_981_536);
        assert_eq!(java_murmur2(b"a-little-bit-longer-string"), -1_486_304_829);
        assert_eq!(java_murmur2(b"abc"), 479_470_107);

        let kafka = crate::embedded::EmbeddedKafka::start(1).unwrap();
        let topics = crate::Topics::load(None).unwrap();
        kafka.create_topics(&topics).unwrap();
        let topic = topics.role("order_commands").unwrap();
        let producer = kafka.settings().producer().unwrap();
        let mut used = std::collections::HashSet::new();
        for _ in 0..32 {
            let key = uuid::Uuid::new_v4().to_string();
            let partition = producer
                .send(
                    rdkafka::producer::FutureRecord::to(&topic.name)
                        .key(&key)
                        .payload("{}"),
                    Duration::from_secs(10),
                )
                .await
                .unwrap()
                .partition;
            let java = (java_murmur2(key.as_bytes()) & 0x7fff_ffff) % topic.partitions;
            assert_eq!(partition, java, "{key}");
            used.insert(partition);
        }
        assert!(used.len() > 1, "keys spread over partitions: {used:?}");
    }

    #[test]
    fn errors_from_the_cluster_point_at_the_setting_to_check() {
        assert!(
            setting_to_check("SASL authentication error: Authentication failed")
                .contains("sasl.password")
        );
        assert!(setting_to_check("SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified").contains("ssl.ca.location"));
        assert!(setting_to_check("Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate: SSL alert number 42").contains("ssl.key.location"));
        assert!(setting_to_check("SSL handshake failed: unexpected eof").contains("ssl.*"));
        assert!(
            setting_to_check("Connect to ipv4#127.0.0.1:1 failed: Connection refused")
                .contains("KAFKA_BROKERS")
        );
    }
}
