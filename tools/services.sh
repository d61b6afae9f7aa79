#!/usr/bin/env bash
# Local services for development, tests and CI (see DESIGN.md, "Local services").
#
#   bash tools/services.sh up     start (or re-verify) Kafka + S3 on loopback, write .services.env
#   bash tools/services.sh down   stop both; harmless when nothing runs
#
# Kafka: a real single-node Apache Kafka broker in KRaft mode (combined broker + controller).
# S3:    s3proxy with its filesystem backend, and MinIO (single drive) as a second real S3 server
#        the store tests also run against; its binary comes from `make tools`.
# Jars are fetched once with Maven into $AKISNAP_CACHE (default ~/.cache/akisnap); all run-time
# state (configs, data, logs, pids) lives in <repo>/.services/.
set -euo pipefail

KAFKA_VERSION=4.4.0
LOG4J_VERSION=2.26.1
SLF4J_VERSION=2.0.17
S3PROXY_VERSION=4.1.0

TOPICS=(akidb.snapshot.requests akidb.snapshot.results akidb.snapshot.requests.dlq)
PARTITIONS=4
S3_BUCKET=akisnap-test
S3_ACCESS_KEY=akisnap-test
S3_SECRET_KEY=akisnap-test-secret
S3_REGION=us-east-1
MINIO_KMS_KEY_ID=akisnap-test-key
MINIO_KMS_KEY="$MINIO_KMS_KEY_ID:MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
READY_TIMEOUT=${AKISNAP_SERVICES_TIMEOUT:-90}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE=$ROOT/tools/services
STATE=$ROOT/.services
ENV_FILE=$ROOT/.services.env
CACHE=${AKISNAP_CACHE:-$HOME/.cache/akisnap}
M2=$CACHE/m2
KAFKA_HOME=$CACHE/kafka-$KAFKA_VERSION
S3PROXY_HOME=$CACHE/s3proxy-$S3PROXY_VERSION
PY=$ROOT/.venv/bin/python
MINIO=$CACHE/bin/minio

START=$(date +%s.%N)

log() { printf '[services] %s\n' "$*" >&2; }
die() {
  printf '[services] ERROR: %s\n' "$*" >&2
  exit 1
}
elapsed() { awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1fs", e - s }'; }

# Print the last lines of a log file, framed, to stderr.
show_tail() {
  local file=$1
  if [[ -f $file ]]; then
    printf '[services] ---- last 60 lines of %s ----\n' "$file" >&2
    tail -n 60 "$file" >&2 || true
    printf '[services] ---- end of %s ----\n' "$file" >&2
  else
    printf '[services] (no log at %s)\n' "$file" >&2
  fi
}

# ---------------------------------------------------------------------------------------------
# Processes: a service's pid file holds the pid of a java process whose command line names its
# config under $STATE, so a recycled pid is never mistaken for ours.

service_pid() { # NAME -> prints the pid if our process runs, else nothing (status 1)
  local name=$1 pidfile=$STATE/$1/pid pid
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  # zombies are gone for our purposes
  [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$STATE/$name/" || return 1
  printf '%s\n' "$pid"
}

stop_services() {
  local name pid pids=() names=()
  for name in kafka s3proxy minio; do
    if pid=$(service_pid "$name"); then
      log "stopping $name (pid $pid)"
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
      names+=("$name")
    fi
  done
  local i waited=0
  while ((waited < 100)); do # 10 s for a clean shutdown
    local alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
        alive=1
      fi
    done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  for i in "${!pids[@]}"; do
    pid=${pids[$i]}
    if kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; then
      log "${names[$i]} (pid $pid) still running after TERM; sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for name in kafka s3proxy minio; do
    rm -f "$STATE/$name/pid"
  done
}

# Start a command detached (own session, stdin closed, output to LOG) and record its pid.
launch() { # NAME LOG CMD...
  local name=$1 logfile=$2
  shift 2
  : >"$logfile"
  rm -f "$STATE/$name/pid"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$STATE/$name/pid" "$@" \
    </dev/null >>"$logfile" 2>&1 &
  local i
  for i in $(seq 50); do
    [[ -s $STATE/$name/pid ]] && return 0
    sleep 0.1
  done
  die "$name: no pid file after launching"
}

# Five distinct free loopback ports (held open together while choosing).
free_ports() {
  "$PY" - <<'EOF'
import socket

socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
EOF
}

port_free() { # PORT -> status 0 if nothing listens on 127.0.0.1:PORT
  "$PY" -c 'import socket, sys
s = socket.socket()
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

# ---------------------------------------------------------------------------------------------
# Fetching jars (only when the cache lacks them).

find_java() {
  if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
  else
    JAVA=$(command -v java) || die "java not found (Java 17 or newer is needed)"
  fi
  local v
  v=$("$JAVA" -XshowSettings:properties -version 2>&1 | awk -F' = ' '/java.specification.version/ {print $2}')
  [[ $v =~ ^[0-9]+$ ]] || die "could not tell the version of $JAVA"
  ((v >= 17)) || die "$JAVA is Java $v; Kafka $KAFKA_VERSION and s3proxy $S3PROXY_VERSION need 17+"
}

maven_fetch() { # POM DEST_DIR DESCRIPTION -Dprop=value...
  local pom=$1 dest=$2 what=$3
  shift 3
  [[ -f $dest/.complete ]] && return 0
  command -v mvn >/dev/null || die "mvn not found: Maven is needed once to fetch $what"
  log "fetching $what with Maven into $dest (first run only)"
  local tmp=$dest.tmp.$$
  rm -rf "$tmp"
  mkdir -p "$tmp" "$M2"
  local mlog
  mlog=$CACHE/maven-$(basename "$dest").log
  if ! mvn -B -q -f "$pom" -Dmaven.repo.local="$M2" "$@" \
    dependency:copy-dependencies -DoutputDirectory="$tmp/libs" -DincludeScope=runtime \
    >"$mlog" 2>&1; then
    show_tail "$mlog"
    rm -rf "$tmp"
    die "Maven could not fetch $what (full output: $mlog)"
  fi
  [[ -n $(ls "$tmp/libs"/*.jar 2>/dev/null) ]] || {
    show_tail "$mlog"
    die "Maven fetched no jars for $what"
  }
  touch "$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
}

fetch_all() {
  mkdir -p "$CACHE"
  maven_fetch "$HERE/kafka-pom.xml" "$KAFKA_HOME" "Kafka $KAFKA_VERSION" \
    -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
    -Dslf4j.version="$SLF4J_VERSION"
  [[ -f $KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar ]] ||
    die "$KAFKA_HOME/libs lacks kafka_2.13-$KAFKA_VERSION.jar; remove $KAFKA_HOME and retry"
  maven_fetch "$HERE/s3proxy-pom.xml" "$S3PROXY_HOME" "s3proxy $S3PROXY_VERSION" \
    -Ds3proxy.version="$S3PROXY_VERSION"
  S3PROXY_JAR=$S3PROXY_HOME/libs/s3proxy-$S3PROXY_VERSION-jar-with-dependencies.jar
  [[ -f $S3PROXY_JAR ]] || die "$S3PROXY_JAR is missing; remove $S3PROXY_HOME and retry"
}

# ---------------------------------------------------------------------------------------------
# Starting.

start_s3proxy() { # PORT
  local port=$1 dir=$STATE/s3proxy
  mkdir -p "$dir/data"
  port_free "$port" || die "s3proxy: port $port on 127.0.0.1 is taken"
  cat >"$dir/s3proxy.conf" <<EOF
s3proxy.endpoint=http://127.0.0.1:$port
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity=$S3_ACCESS_KEY
s3proxy.credential=$S3_SECRET_KEY
jclouds.provider=filesystem
jclouds.filesystem.basedir=$dir/data
EOF
  log "starting s3proxy $S3PROXY_VERSION on 127.0.0.1:$port"
  launch s3proxy "$dir/s3proxy.log" "$JAVA" -Xms64m -Xmx256m -Djava.awt.headless=true \
    -jar "$S3PROXY_JAR" --properties "$dir/s3proxy.conf"
}

start_minio() { # PORT CONSOLE_PORT
  local port=$1 cport=$2 dir=$STATE/minio
  [[ -x $MINIO ]] || die "minio: $MINIO not found: run 'make tools' first"
  port_free "$port" || die "minio: port $port on 127.0.0.1 is taken"
  port_free "$cport" || die "minio: port $cport on 127.0.0.1 is taken"
  mkdir -p "$dir/data"
  log "starting MinIO on 127.0.0.1:$port"
  # A static KMS key, so server-side encryption (SSE-S3, SSE-KMS with this key id) works as
  # on a real deployment; a throwaway test key, nothing secret.
  launch minio "$dir/minio.log" env MINIO_ROOT_USER="$S3_ACCESS_KEY" \
    MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" MINIO_BROWSER=off MINIO_UPDATE=off \
    MINIO_KMS_SECRET_KEY="$MINIO_KMS_KEY" \
    "$MINIO" server "$dir/data" --address "127.0.0.1:$port" --console-address "127.0.0.1:$cport" \
    --quiet
}

start_kafka() { # BROKER_PORT CONTROLLER_PORT
  local port=$1 cport=$2 dir=$STATE/kafka
  port_free "$port" || die "kafka: port $port on 127.0.0.1 is taken"
  port_free "$cport" || die "kafka: port $cport on 127.0.0.1 is taken"
  # A fresh log dir each start: the KRaft metadata records the listener ports chosen here.
  rm -rf "$dir/data"
  mkdir -p "$dir/data"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=$PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=4
log.retention.hours=24
EOF
  local jvm=(-Xms128m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -cp "$KAFKA_HOME/libs/*")
  local cluster_id
  cluster_id=$("$PY" -c 'import base64, uuid
ids = (base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=") for _ in iter(int, 1))
print(next(i for i in ids if not i.startswith("-")))')  # a leading "-" reads as an option
  # C1 only: the formatter is short-lived, and this saves about a second of JIT work.
  if ! "$JAVA" -XX:TieredStopAtLevel=1 "${jvm[@]}" kafka.tools.StorageTool format --standalone \
    --cluster-id "$cluster_id" --config "$dir/server.properties" >"$dir/format.log" 2>&1; then
    show_tail "$dir/format.log"
    die "kafka: formatting the storage dir failed"
  fi
  log "starting Kafka $KAFKA_VERSION (KRaft) on 127.0.0.1:$port, controller 127.0.0.1:$cport"
  launch kafka "$dir/kafka.log" "$JAVA" "${jvm[@]}" kafka.Kafka "$dir/server.properties"
}

# ---------------------------------------------------------------------------------------------

up() {
  [[ -x $PY ]] || die "$PY not found: run 'make install' first"
  mkdir -p "$STATE/kafka" "$STATE/s3proxy" "$STATE/minio"

  # Ports of services already running are remembered in $STATE/ports.
  local kafka_port="" controller_port="" s3_port="" minio_port="" minio_console_port=""
  if [[ -f $STATE/ports ]]; then
    # shellcheck disable=SC1091
    source "$STATE/ports"
  fi
  local kpid="" spid="" mpid=""
  kpid=$(service_pid kafka) || kpid=""
  spid=$(service_pid s3proxy) || spid=""
  mpid=$(service_pid minio) || mpid=""
  [[ -n $kpid && -n $kafka_port && -n $controller_port ]] || kpid=""
  [[ -n $spid && -n $s3_port ]] || spid=""
  [[ -n $mpid && -n $minio_port ]] || mpid=""
  # MinIO is started when `make tools` built it (make test does); without it the demo and
  # everything but the MinIO store tests still work, and those fail, naming the fix.
  local with_minio=0
  [[ -x $MINIO ]] && with_minio=1
  ((with_minio)) || mpid=none

  if [[ -z $kpid || -z $spid || -z $mpid ]]; then
    find_java
    fetch_all
    local fresh
    read -r -a fresh <<<"$(free_ports)"
    if [[ -z $spid ]]; then
      s3_port=${AKISNAP_S3_PORT:-${fresh[0]}}
      start_s3proxy "$s3_port"
      spid=$(<"$STATE/s3proxy/pid")
    else
      log "s3proxy already running (pid $spid) on 127.0.0.1:$s3_port"
    fi
    if [[ -z $kpid ]]; then
      kafka_port=${AKISNAP_KAFKA_PORT:-${fresh[1]}}
      controller_port=${AKISNAP_KAFKA_CONTROLLER_PORT:-${fresh[2]}}
      start_kafka "$kafka_port" "$controller_port"
      kpid=$(<"$STATE/kafka/pid")
    else
      log "Kafka already running (pid $kpid) on 127.0.0.1:$kafka_port"
    fi
    if ((!with_minio)); then
      log "MinIO not started: $MINIO is not built (make tools)"
    elif [[ -z $mpid ]]; then
      minio_port=${AKISNAP_MINIO_PORT:-${fresh[3]}}
      minio_console_port=${fresh[4]}
      start_minio "$minio_port" "$minio_console_port"
      mpid=$(<"$STATE/minio/pid")
    else
      log "MinIO already running (pid $mpid) on 127.0.0.1:$minio_port"
    fi
    printf 'kafka_port=%s\ncontroller_port=%s\ns3_port=%s\nminio_port=%s\nminio_console_port=%s\n' \
      "$kafka_port" "$controller_port" "$s3_port" "$minio_port" "$minio_console_port" \
      >"$STATE/ports"
  else
    log "already running: Kafka (pid $kpid) on 127.0.0.1:$kafka_port," \
      "s3proxy (pid $spid) on 127.0.0.1:$s3_port, MinIO (pid $mpid) on 127.0.0.1:$minio_port;" \
      "re-verifying"
  fi

  # Both checks in parallel; each gives up early if its server process dies.
  "$PY" "$HERE/ready.py" s3 "http://127.0.0.1:$s3_port" --pid "$spid" \
    --timeout "$READY_TIMEOUT" --bucket "$S3_BUCKET" --access-key "$S3_ACCESS_KEY" \
    --secret-key "$S3_SECRET_KEY" --region "$S3_REGION" &
  local s3_check=$!
  local minio_check=""
  if ((with_minio)); then
    "$PY" "$HERE/ready.py" s3 "http://127.0.0.1:$minio_port" --pid "$mpid" \
      --timeout "$READY_TIMEOUT" --bucket "$S3_BUCKET" --access-key "$S3_ACCESS_KEY" \
      --secret-key "$S3_SECRET_KEY" --region "$S3_REGION" &
    minio_check=$!
  fi
  local kafka_ok=1 s3_ok=1 minio_ok=1
  "$PY" "$HERE/ready.py" kafka "127.0.0.1:$kafka_port" --pid "$kpid" \
    --timeout "$READY_TIMEOUT" --partitions "$PARTITIONS" "${TOPICS[@]}" || kafka_ok=0
  wait "$s3_check" || s3_ok=0
  [[ -z $minio_check ]] || wait "$minio_check" || minio_ok=0
  if ((!s3_ok)); then
    show_tail "$STATE/s3proxy/s3proxy.log"
  fi
  if ((!minio_ok)); then
    show_tail "$STATE/minio/minio.log"
  fi
  if ((!kafka_ok)); then
    show_tail "$STATE/kafka/kafka.log"
  fi
  if ((!s3_ok || !kafka_ok || !minio_ok)); then
    rm -f "$ENV_FILE" "$STATE/ports"
    stop_services
    local failed=()
    ((kafka_ok)) || failed+=(Kafka)
    ((s3_ok)) || failed+=(s3proxy)
    ((minio_ok)) || failed+=(MinIO)
    die "${failed[*]} did not come up (see above); stopped all, logs are in $STATE"
  fi

  local tmp=$ENV_FILE.tmp.$$
  cat >"$tmp" <<EOF
AKISNAP_KAFKA_BOOTSTRAP=127.0.0.1:$kafka_port
AKISNAP_S3_ENDPOINT=http://127.0.0.1:$s3_port
AKISNAP_S3_ACCESS_KEY=$S3_ACCESS_KEY
AKISNAP_S3_SECRET_KEY=$S3_SECRET_KEY
AKISNAP_S3_BUCKET=$S3_BUCKET
AKISNAP_S3_REGION=$S3_REGION
EOF
  if ((with_minio)); then
    echo "AKISNAP_MINIO_ENDPOINT=http://127.0.0.1:$minio_port" >>"$tmp"
    echo "AKISNAP_MINIO_KMS_KEY_ID=$MINIO_KMS_KEY_ID" >>"$tmp"
  fi
  mv "$tmp" "$ENV_FILE"
  log "Kafka $KAFKA_VERSION at 127.0.0.1:$kafka_port (topics: ${TOPICS[*]}, $PARTITIONS partitions each)"
  log "s3proxy $S3PROXY_VERSION at http://127.0.0.1:$s3_port (bucket $S3_BUCKET)"
  if ((with_minio)); then
    log "MinIO at http://127.0.0.1:$minio_port (bucket $S3_BUCKET, same keys)"
  fi
  log "wrote $ENV_FILE; logs in $STATE; up in $(elapsed)"
}

down() {
  if [[ -d $STATE ]]; then
    stop_services
  fi
  rm -f "$ENV_FILE" "$STATE/ports"
  log "services down in $(elapsed)"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *)
    echo "usage: bash tools/services.sh up|down" >&2
    exit 2
    ;;
esac
