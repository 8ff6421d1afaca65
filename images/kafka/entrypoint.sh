#!/bin/sh
# Entry point of the waitroom-kafka image: a single-node Apache Kafka in KRaft mode (broker and
# controller in one JVM). It writes server.properties from the environment at every start, formats
# the data folder the first time (and only then), and replaces itself with the JVM, so SIGTERM from
# `podman stop` or Kubernetes reaches Kafka directly (a controlled shutdown).
#
#   KAFKA_ADVERTISED_LISTENERS   what clients are told to connect to; default
#                                PLAINTEXT://$KAFKA_ADVERTISED_HOST:$KAFKA_ADVERTISED_PORT
#   KAFKA_ADVERTISED_HOST        default: the container's hostname
#   KAFKA_ADVERTISED_PORT        default: $KAFKA_PORT (publish the port on the same number)
#   KAFKA_PORT                   the PLAINTEXT listener's port, on every interface (9092)
#   KAFKA_CONTROLLER_PORT        the CONTROLLER listener's port, on loopback only (9093)
#   KAFKA_LISTENERS, KAFKA_LISTENER_SECURITY_PROTOCOL_MAP   replace the two listeners entirely
#   KAFKA_NODE_ID (1), KAFKA_CLUSTER_ID (random, used when formatting), KAFKA_LOG_LEVEL (WARN)
#   KAFKA_HEAP_OPTS (-Xmx512m -Xms128m), KAFKA_JVM_OPTS (added to the JVM's options)
#   KAFKA_CFG_<NAME>             any broker setting: KAFKA_CFG_LOG_RETENTION_HOURS=1 writes
#                                log.retention.hours=1 (last, so it wins over everything above)
#   KAFKA_DATA_DIR               the data folder (/var/lib/kafka, the image's volume)
#
# Command-line arguments, if any, replace the broker (e.g. `sh` to look around).
set -eu

if [ $# -gt 0 ]; then
  exec "$@"
fi

KAFKA_HOME=${KAFKA_HOME:-/opt/kafka}
data=${KAFKA_DATA_DIR:-/var/lib/kafka}
node_id=${KAFKA_NODE_ID:-1}
port=${KAFKA_PORT:-9092}
controller_port=${KAFKA_CONTROLLER_PORT:-9093}
advertised_host=${KAFKA_ADVERTISED_HOST:-$(cat /proc/sys/kernel/hostname)}
advertised_port=${KAFKA_ADVERTISED_PORT:-$port}
advertised=${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://$advertised_host:$advertised_port}
listeners=${KAFKA_LISTENERS:-PLAINTEXT://:$port,CONTROLLER://127.0.0.1:$controller_port}
protocols=${KAFKA_LISTENER_SECURITY_PROTOCOL_MAP:-PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT}
log_dir=$data/data
config=$data/server.properties

if ! mkdir -p "$log_dir" 2>/dev/null || ! [ -w "$log_dir" ]; then
  echo "kafka-entrypoint: $log_dir is not writable by uid $(id -u); a mounted folder must belong to it" \
    "(e.g. chown 10001:10001), or use a named volume" >&2
  exit 1
fi

{
  echo "# written by kafka-entrypoint at every start from the environment; edits are overwritten"
  echo "process.roles=broker,controller"
  echo "node.id=$node_id"
  echo "controller.quorum.voters=$node_id@127.0.0.1:$controller_port"
  echo "listeners=$listeners"
  echo "advertised.listeners=$advertised"
  echo "listener.security.protocol.map=$protocols"
  echo "controller.listener.names=CONTROLLER"
  echo "inter.broker.listener.name=PLAINTEXT"
  echo "log.dirs=$log_dir"
  echo "num.partitions=1"
  # Topics are created on purpose (waitroom creates its own): a typo must fail, not make a topic.
  echo "auto.create.topics.enable=false"
  # One node: internal topics cannot have more replicas than that.
  echo "offsets.topic.replication.factor=1"
  echo "transaction.state.log.replication.factor=1"
  echo "transaction.state.log.min.isr=1"
  echo "share.coordinator.state.topic.replication.factor=1"
  echo "share.coordinator.state.topic.min.isr=1"
  # 10 instead of 50 partitions: creating the internal topics dominates start-up on small machines.
  echo "offsets.topic.num.partitions=10"
  echo "transaction.state.log.num.partitions=10"
  echo "group.initial.rebalance.delay.ms=0"
  # The sequencers' session timeout is 3 s (failover in under 5 s, docs/adr/0007); Kafka's default
  # floor of 6 s would refuse it (KAFKA_CFG_GROUP_MIN_SESSION_TIMEOUT_MS sets another).
  echo "group.min.session.timeout.ms=1000"
  # KAFKA_CFG_LOG_RETENTION_HOURS=1 -> log.retention.hours=1
  env | awk '/^KAFKA_CFG_[A-Za-z0-9_]+=/ {
    i = index($0, "="); name = tolower(substr($0, 11, i - 11)); gsub("_", ".", name)
    print name "=" substr($0, i + 1)
  }'
} >"$config"

java_opts="-XX:+ExitOnOutOfMemoryError -XX:-UsePerfData -Djava.awt.headless=true"
java_opts="$java_opts -Dlog4j.configuration=file:$KAFKA_HOME/config/log4j.properties"
java_opts="$java_opts -Dwaitroom.kafka.loglevel=${KAFKA_LOG_LEVEL:-WARN}"
classpath="$KAFKA_HOME/libs/*"

if [ ! -f "$log_dir/meta.properties" ]; then
  cluster_id=${KAFKA_CLUSTER_ID:-}
  # A Kafka Uuid: 16 random bytes, base64url without padding, never starting with '-'.
  while [ -z "$cluster_id" ] || [ "${cluster_id#-}" != "$cluster_id" ]; do
    cluster_id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
  done
  echo "kafka-entrypoint: formatting $log_dir for cluster $cluster_id (first start)"
  # shellcheck disable=SC2086 # the option strings are meant to split
  java $java_opts -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Dwaitroom.kafka.loglevel=WARN -cp "$classpath" \
    kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$config"
fi

echo "kafka-entrypoint: Kafka $KAFKA_VERSION node $node_id, listeners $listeners, advertised $advertised"
# shellcheck disable=SC2086
exec java ${KAFKA_HEAP_OPTS:--Xmx512m -Xms128m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 $java_opts \
  ${KAFKA_JVM_OPTS:-} -cp "$classpath" kafka.Kafka "$config"
