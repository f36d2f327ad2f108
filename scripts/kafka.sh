#!/usr/bin/env bash
# A real Apache Kafka broker on this machine, for the tests and for people: no Docker needed.
#
#   scripts/kafka.sh start     fetch (first time), generate certificates, format, start, wait
#   scripts/kafka.sh stop      stop the broker (its data stays; `start` again resumes on it)
#   scripts/kafka.sh status    is it answering?
#   scripts/kafka.sh env       the settings a client needs, as shell exports
#   scripts/kafka.sh wipe      stop and delete its data and certificates
#
# The broker is Apache Kafka $KAFKA_VERSION (the same version docker-compose.yml runs), fetched
# from Maven Central with Maven into a cache folder ($KAFKA_CACHE), so later starts work offline.
# One process is broker and KRaft controller at once, with a bounded heap, and four listeners on
# loopback:
#
#   PLAINTEXT  127.0.0.1:$KAFKA_PLAIN_PORT   no security
#   SASL_SSL   127.0.0.1:$KAFKA_SASL_PORT    TLS + SCRAM-SHA-512 (user $KAFKA_USER)
#   SSL        127.0.0.1:$KAFKA_MTLS_PORT    TLS with client certificates (mTLS)
#   CONTROLLER 127.0.0.1:$KAFKA_CONTROLLER_PORT (KRaft, not for clients)
#
# A CA, the broker's certificate and a client certificate are made by the first start of a data
# folder ($KAFKA_STATE/tls; `wipe` removes them); client settings for librdkafka (KAFKA_CONFIG lines) are written beside
# them: client-sasl.properties and client-mtls.properties. Topics are never created
# automatically: clients create what topics.json declares.
set -euo pipefail

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="${LOG4J_VERSION:-2.24.3}"
SLF4J_VERSION="${SLF4J_VERSION:-2.0.17}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
KAFKA_CACHE="${KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/saga-kafka/$KAFKA_VERSION}"
KAFKA_STATE="${KAFKA_STATE:-$ROOT/target/kafka}"
KAFKA_PLAIN_PORT="${KAFKA_PLAIN_PORT:-19092}"
KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-19093}"
KAFKA_MTLS_PORT="${KAFKA_MTLS_PORT:-19094}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-19095}"
KAFKA_USER="${KAFKA_USER:-saga}"
KAFKA_PASSWORD="${KAFKA_PASSWORD:-saga-test-password}"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
# The passwords of the generated key stores: test material, made fresh at each start.
STORE_PASSWORD="kafka-test-store"

LIBS="$KAFKA_CACHE/libs"
TLS="$KAFKA_STATE/tls"
DATA="$KAFKA_STATE/data"
PIDFILE="$KAFKA_STATE/kafka.pid"
LOG="$KAFKA_STATE/kafka.log"

say() { echo "kafka.sh: $*" >&2; }
die() { echo "kafka.sh: error: $*" >&2; exit 1; }

fetch() {
  if [ -f "$LIBS/.complete" ]; then return; fi
  command -v mvn >/dev/null || die "Maven (mvn) is needed the first time, to fetch Kafka $KAFKA_VERSION"
  command -v java >/dev/null || die "a Java runtime (17+) is needed"
  say "fetching Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_CACHE (once)"
  mkdir -p "$KAFKA_CACHE"
  cat > "$KAFKA_CACHE/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.saga</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$LIBS"
  (cd "$KAFKA_CACHE" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$LIBS") || die "Maven could not fetch Kafka $KAFKA_VERSION"
  touch "$LIBS/.complete"
}

# A CA, the broker's certificate (127.0.0.1 and localhost) and a client certificate, all signed
# by the CA; PKCS12 stores for the broker, PEM files for librdkafka clients.
certificates() {
  rm -rf "$TLS"
  mkdir -p "$TLS"
  (
    cd "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=saga-test-ca" \
      -keyout ca.key -out ca.pem 2>/dev/null
    for who in broker client; do
      openssl req -newkey rsa:2048 -nodes -subj "/CN=saga-$who" \
        -keyout "$who.key" -out "$who.csr" 2>/dev/null
      printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$who.ext"
      openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$who.ext" -out "$who.pem" 2>/dev/null
    done
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout "pass:$STORE_PASSWORD" -out broker.p12
    keytool -importcert -noprompt -alias ca -file ca.pem -storetype PKCS12 \
      -keystore truststore.p12 -storepass "$STORE_PASSWORD" >/dev/null 2>&1
    rm -f ./*.csr ./*.ext ./*.srl
  )
  cat > "$KAFKA_STATE/client-sasl.properties" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.username=$KAFKA_USER
sasl.password=$KAFKA_PASSWORD
ssl.ca.location=$TLS/ca.pem
EOF
  cat > "$KAFKA_STATE/client-mtls.properties" <<EOF
security.protocol=SSL
ssl.ca.location=$TLS/ca.pem
ssl.certificate.location=$TLS/client.pem
ssl.key.location=$TLS/client.key
EOF
}

server_properties() {
  cat > "$KAFKA_STATE/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PLAIN_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PLAIN_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA

# TLS: the broker's certificate on both TLS listeners; client certificates required on SSL.
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS/broker.p12
ssl.keystore.password=$STORE_PASSWORD
ssl.key.password=$STORE_PASSWORD
ssl.truststore.type=PKCS12
ssl.truststore.location=$TLS/truststore.p12
ssl.truststore.password=$STORE_PASSWORD
listener.name.ssl.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none

# SASL: SCRAM-SHA-512 on SASL_SSL; the user is created when the storage is formatted.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;

# One broker, as a test and development cluster: internal topics with one replica, no delay
# before the first consumer group rebalance, and nothing created behind a client's back.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.partitions=1
default.replication.factor=1
EOF
  cat > "$KAFKA_STATE/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $KAFKA_STATE/server.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = info
logger.kafkaorg.name = org.apache.kafka
logger.kafkaorg.level = warn
EOF
}

java_opts() {
  JAVA_OPTS=("-Xmx$KAFKA_HEAP" "-Xms128m" -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$KAFKA_STATE/log4j2.properties" -cp "$LIBS/*")
}

java_cmd() {
  java_opts
  java "${JAVA_OPTS[@]}" "$@"
}

running() {
  [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

answering() {
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PLAIN_PORT") 2>/dev/null \
    && grep -q "Kafka Server started" "$KAFKA_STATE/server.log" 2>/dev/null
}

print_env() {
  cat <<EOF
# Apache Kafka $KAFKA_VERSION on this machine (scripts/kafka.sh):
export KAFKA_PLAINTEXT_BROKERS=127.0.0.1:$KAFKA_PLAIN_PORT
export KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT   # KAFKA_CONFIG from $KAFKA_STATE/client-sasl.properties
export KAFKA_MTLS_BROKERS=127.0.0.1:$KAFKA_MTLS_PORT   # KAFKA_CONFIG from $KAFKA_STATE/client-mtls.properties
export KAFKA_SASL_CONFIG_FILE=$KAFKA_STATE/client-sasl.properties
export KAFKA_MTLS_CONFIG_FILE=$KAFKA_STATE/client-mtls.properties
EOF
}

start() {
  if running && answering; then
    say "already running (pid $(cat "$PIDFILE"))"
    print_env
    return
  fi
  for port in "$KAFKA_PLAIN_PORT" "$KAFKA_SASL_PORT" "$KAFKA_MTLS_PORT" "$KAFKA_CONTROLLER_PORT"; do
    # A listener, not a connection: connecting to a free port in the ephemeral range can
    # connect a socket to itself.
    if command -v ss >/dev/null && [ -n "$(ss -Hltn "sport = :$port")" ]; then
      die "port $port is taken (another broker? stop it, or set KAFKA_PLAIN_PORT, KAFKA_SASL_PORT, KAFKA_MTLS_PORT, KAFKA_CONTROLLER_PORT)"
    fi
  done
  fetch
  mkdir -p "$KAFKA_STATE"
  # Made once per data folder: a restart keeps them, so running clients still trust the broker.
  [ -f "$TLS/broker.p12" ] || certificates
  server_properties
  if [ ! -f "$DATA/meta.properties" ]; then
    say "formatting KRaft storage in $DATA"
    local id
    id="$(java_cmd kafka.tools.StorageTool random-uuid)"
    java_cmd kafka.tools.StorageTool format -t "$id" -c "$KAFKA_STATE/server.properties" \
      --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$KAFKA_PASSWORD]" >/dev/null
  fi
  : > "$KAFKA_STATE/server.log"
  say "starting Apache Kafka $KAFKA_VERSION (heap $KAFKA_HEAP); log: $KAFKA_STATE/server.log"
  # The JVM itself in the background (not a subshell around it), so that its pid is the one
  # `stop` signals.
  java_opts
  java "${JAVA_OPTS[@]}" kafka.Kafka "$KAFKA_STATE/server.properties" > "$LOG" 2>&1 < /dev/null &
  echo $! > "$PIDFILE"
  for _ in $(seq 1 120); do
    if answering; then
      say "ready in ${SECONDS}s"
      print_env
      return
    fi
    running || { tail -n 30 "$LOG" "$KAFKA_STATE/server.log" >&2; die "the broker exited; see $LOG"; }
    sleep 0.5
  done
  die "the broker did not answer within 60 s; see $KAFKA_STATE/server.log"
}

stop() {
  if running; then
    local pid
    pid="$(cat "$PIDFILE")"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    say "stopped"
  fi
  rm -f "$PIDFILE"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status)
    if running && answering; then echo "Apache Kafka $KAFKA_VERSION answering on 127.0.0.1:$KAFKA_PLAIN_PORT"; else echo "not running"; exit 1; fi
    ;;
  env) print_env ;;
  wipe) stop; rm -rf "$KAFKA_STATE" ;;
  *) echo "usage: $0 start|stop|status|env|wipe" >&2; exit 2 ;;
esac
