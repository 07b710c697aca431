#!/usr/bin/env bash
#
# Install, start, check and stop the real servers the test suite needs.
# Everything binds to 127.0.0.1 and keeps its state under <project>/.services/.
#
#   scripts/services.sh up     [redis] [postgres] [cassandra]   (no names = all)
#   scripts/services.sh down   [redis] [postgres] [cassandra]
#   scripts/services.sh status [redis] [postgres] [cassandra]   (exit 1 unless all up)
#   scripts/services.sh env                                     (export lines for the tests)
#
# Usual use:   scripts/services.sh up && eval "$(scripts/services.sh env)"
#
# `up` is idempotent: a server that already answers on its port is reused as is.
# Missing binaries are installed with apt-get (redis-server, postgresql-15, maven,
# openjdk-17-jre-headless); Cassandra itself (org.apache.cassandra:cassandra-all and
# its runtime dependencies) is downloaded once with Maven into .services/cassandra/lib.
#
# Defaults can be overridden through the environment (e.g. to try a fresh start next
# to the shared servers):
#   MESSENGER_SERVICES_DIR              state directory         (<project>/.services)
#   MESSENGER_REDIS_PORT                                        (56379)
#   MESSENGER_PG_PORT                                           (55432)
#   MESSENGER_PG_BINDIR                 PostgreSQL binaries     (/usr/lib/postgresql/15/bin)
#   MESSENGER_PG_SOCKDIR                unix socket directory   (/tmp)
#   MESSENGER_CASSANDRA_PORT            CQL native port         (59042)
#   MESSENGER_CASSANDRA_STORAGE_PORT    inter-node port         (57000)
#   MESSENGER_CASSANDRA_JMX_PORT        local JMX (nodetool)    (57199)
#   MESSENGER_CASSANDRA_VERSION                                 (5.0.9)
#   MESSENGER_CASSANDRA_HEAP            -Xms/-Xmx               (1G)
#   MESSENGER_CASSANDRA_JAVA            java binary (11 or 17)  (auto: a Java 17 first)
#   MESSENGER_PYTHON                    python with cassandra-driver, for the CQL check
#                                                               (<project>/.venv/bin/python)
#   MESSENGER_{REDIS,PG,CASSANDRA}_TIMEOUT   seconds to wait    (10 / 30 / 180)

set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
TEMPLATES=$SCRIPT_DIR/services

SERVICES_DIR=$(realpath -m -- "${MESSENGER_SERVICES_DIR:-$ROOT/.services}")

HOST=127.0.0.1
ALL_SERVICES=(redis postgres cassandra)

REDIS_PORT=${MESSENGER_REDIS_PORT:-56379}
REDIS_DIR=$SERVICES_DIR/redis
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_TIMEOUT=${MESSENGER_REDIS_TIMEOUT:-10}

PG_PORT=${MESSENGER_PG_PORT:-55432}
PG_BINDIR=${MESSENGER_PG_BINDIR:-/usr/lib/postgresql/15/bin}
PG_PACKAGE=postgresql-15
PG_SOCKDIR=${MESSENGER_PG_SOCKDIR:-/tmp}
PG_DIR=$SERVICES_DIR/postgres
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/pg.log
PG_OS_USER=postgres
PG_TIMEOUT=${MESSENGER_PG_TIMEOUT:-30}
PG_APP_USER=messenger
PG_APP_PASSWORD=messenger
PG_DATABASES=(messenger messenger_test)

CASSANDRA_PORT=${MESSENGER_CASSANDRA_PORT:-59042}
CASSANDRA_STORAGE_PORT=${MESSENGER_CASSANDRA_STORAGE_PORT:-57000}
CASSANDRA_JMX_PORT=${MESSENGER_CASSANDRA_JMX_PORT:-57199}
CASSANDRA_VERSION=${MESSENGER_CASSANDRA_VERSION:-5.0.9}
CASSANDRA_HEAP=${MESSENGER_CASSANDRA_HEAP:-1G}
CASSANDRA_TIMEOUT=${MESSENGER_CASSANDRA_TIMEOUT:-180}
C_DIR=$SERVICES_DIR/cassandra
C_LIB=$C_DIR/lib
C_CONF=$C_DIR/conf
C_LOGS=$C_DIR/logs
C_PIDFILE=$C_DIR/cassandra.pid
C_STDOUT=$C_LOGS/stdout.log
C_SYSLOG=$C_LOGS/system.log
MAVEN_DEPENDENCY_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

PYTHON=${MESSENGER_PYTHON:-$ROOT/.venv/bin/python}

# --------------------------------------------------------------------------- helpers

say() { printf '%s\n' "$*"; }
warn() { printf 'services.sh: %s\n' "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

# Microseconds since the epoch (bash 5 EPOCHREALTIME; the separator is locale dependent).
now_us() { printf '%s' "${EPOCHREALTIME//[.,]/}"; }
# Seconds elapsed since a now_us timestamp, one decimal.
elapsed_since() {
    local ms=$((($(now_us) - $1) / 1000))
    printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100))
}

# Print one status line: service, state, detail...
line() {
    local name=$1 state=$2
    shift 2
    printf '%-10s %-18s %s\n' "$name" "$state" "$*"
}

tail_log() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        printf -- '----- last lines of %s -----\n' "$f" >&2
        tail -n 40 -- "$f" >&2 || true
    done
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# PID of the process listening on a local TCP port (empty if unknown).
listener_pid() {
    command -v ss >/dev/null 2>&1 || return 0
    ss -Hltnp "sport = :$1" 2>/dev/null | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n 1
}

pid_alive() { [[ -n ${1:-} ]] && kill -0 "$1" 2>/dev/null; }

# spawn_detached PIDFILE OUTFILE CMD...: run CMD in the background in a new session
# (it survives the caller's terminal/job control), stdout+stderr to OUTFILE, and write
# its exact PID to PIDFILE (the inner shell writes $$ and then exec's the command;
# exec-only wrappers such as setpriv keep that PID).
spawn_detached() {
    local pidfile=$1 out=$2
    shift 2
    rm -f -- "$pidfile"
    # shellcheck disable=SC2016 # $$ and $@ are for the inner shell
    (
        exec 7>&- 8>&- 9>&- # do not let the server inherit the service locks
        exec setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" \
            >"$out" 2>&1 </dev/null
    ) &
    local _
    for _ in {1..50}; do
        [[ -s $pidfile ]] && return 0
        sleep 0.1
    done
    return 1
}

pidfile_pid() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    pid_alive "$pid" || return 1
    printf '%s' "$pid"
}

# Serialise concurrent `up`/`down` runs for one service (no-op without flock).
lock_service() {
    local name=$1 fd
    command -v flock >/dev/null 2>&1 || return 0
    mkdir -p -- "$SERVICES_DIR/.locks"
    case $name in
        redis) fd=7 ;; postgres) fd=8 ;; cassandra) fd=9 ;;
    esac
    eval "exec $fd>\"\$SERVICES_DIR/.locks/\$name.lock\""
    flock -w 600 "$fd" || die "could not lock $name (another services.sh still running?)"
}

apt_install() {
    local -a sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install $*"
        sudo=(sudo)
    fi
    local log=$SERVICES_DIR/apt.log
    # --no-upgrade: never upgrade a package that is already installed (replacing the
    # binaries under a running server breaks it, e.g. postgres then fails to load
    # its own newer plpgsql.so).
    local -a apt=(env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=300)
    warn "installing $* with apt-get (log: $log)"
    if ! "${sudo[@]}" "${apt[@]}" install --no-upgrade --no-install-recommends "$@" >"$log" 2>&1; then
        warn "apt-get install failed; running apt-get update and retrying"
        if ! { "${sudo[@]}" "${apt[@]}" update && "${sudo[@]}" "${apt[@]}" install --no-upgrade --no-install-recommends "$@"; } >>"$log" 2>&1; then
            tail_log "$log"
            die "apt-get install $* failed"
        fi
    fi
}

# sed replacement-safe version of a string.
sed_escape() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//&/\\&}
    s=${s//|/\\|}
    printf '%s' "$s"
}

# ------------------------------------------------------------------------------ redis

redis_ping() {
    (
        exec 3<>"/dev/tcp/$HOST/$REDIS_PORT" || exit 1
        printf 'PING\r\n' >&3
        reply=''
        IFS= read -r -t 2 reply <&3 || true
        [[ $reply == +PONG* ]]
    ) 2>/dev/null
}

redis_up() {
    local t0 deadline
    t0=$(now_us)
    if redis_ping; then
        line redis "up (reused)" "$HOST:$REDIS_PORT  $(elapsed_since "$t0")"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server
        # Debian's package may start its own redis on 6379; ours is separate.
    fi
    mkdir -p -- "$REDIS_DIR"
    if ! spawn_detached "$REDIS_DIR/redis.pid" "$REDIS_DIR/stdout.log" \
        "$(command -v redis-server)" --bind "$HOST" --port "$REDIS_PORT" --protected-mode yes \
        --dir "$REDIS_DIR" --save '' --appendonly no --daemonize no --logfile "$REDIS_LOG"; then
        line redis FAILED "redis-server did not start"
        tail_log "$REDIS_DIR/stdout.log" "$REDIS_LOG"
        return 1
    fi
    deadline=$((SECONDS + REDIS_TIMEOUT))
    until redis_ping; do
        if ! pidfile_pid "$REDIS_DIR/redis.pid" >/dev/null; then
            line redis FAILED "redis-server exited during start-up"
            tail_log "$REDIS_DIR/stdout.log" "$REDIS_LOG"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            line redis FAILED "no PONG on $HOST:$REDIS_PORT after ${REDIS_TIMEOUT}s"
            tail_log "$REDIS_LOG"
            return 1
        fi
        sleep 0.2
    done
    line redis "up (started)" "$HOST:$REDIS_PORT  $(elapsed_since "$t0")"
}

redis_down() {
    local t0 deadline
    t0=$(now_us)
    if ! redis_ping; then
        line redis down "$HOST:$REDIS_PORT (was not running)"
        return 0
    fi
    (
        exec 3<>"/dev/tcp/$HOST/$REDIS_PORT" || exit 1
        printf 'SHUTDOWN NOSAVE\r\n' >&3
        IFS= read -r -t 5 _ <&3 || true
    ) 2>/dev/null || true
    deadline=$((SECONDS + 10))
    while port_open "$REDIS_PORT"; do
        if ((SECONDS >= deadline)); then
            line redis FAILED "still answering on $HOST:$REDIS_PORT"
            return 1
        fi
        sleep 0.2
    done
    line redis "down (stopped)" "$HOST:$REDIS_PORT  $(elapsed_since "$t0")"
}

redis_status() {
    if redis_ping; then
        line redis up "$HOST:$REDIS_PORT  pid $(listener_pid "$REDIS_PORT")"
    else
        line redis down "$HOST:$REDIS_PORT"
        return 1
    fi
}

# --------------------------------------------------------------------------- postgres

pg_bin() {
    if [[ -x $PG_BINDIR/$1 ]]; then
        printf '%s' "$PG_BINDIR/$1"
    else
        command -v "$1" 2>/dev/null || true
    fi
}

# 0 = accepting connections, 1 = starting up / rejecting, 2 = nothing there.
pg_state() {
    local isready rc=0
    isready=$(pg_bin pg_isready)
    if [[ -z $isready ]]; then
        port_open "$PG_PORT" && return 0
        return 2
    fi
    "$isready" -q -h "$HOST" -p "$PG_PORT" -t 3 || rc=$?
    case $rc in
        0) return 0 ;;
        1) return 1 ;;
        *) return 2 ;;
    esac
}

pg_ready() { pg_state; }

# Run a command as the PostgreSQL OS user (postgres refuses to run as root).
as_pg() {
    if ((EUID == 0)); then
        runuser -u "$PG_OS_USER" -- "$@"
    else
        "$@"
    fi
}

pg_psql() {
    local psql
    psql=$(pg_bin psql)
    [[ -n $psql ]] || die "psql not found"
    PGCONNECT_TIMEOUT=5 "$psql" -X -q -v ON_ERROR_STOP=1 -h "$HOST" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# Idempotently create the application role and databases.
pg_provision() {
    local db sql
    sql="DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$PG_APP_USER') THEN
    CREATE ROLE $PG_APP_USER LOGIN PASSWORD '$PG_APP_PASSWORD';
  END IF;
END \$\$;
"
    for db in "${PG_DATABASES[@]}"; do
        sql+="SELECT 'CREATE DATABASE $db OWNER $PG_APP_USER' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '$db')
\\gexec
"
    done
    printf '%s' "$sql" | pg_psql -f - >"$PG_DIR/provision.log" 2>&1
}

pg_install_if_missing() {
    [[ -x $PG_BINDIR/postgres && -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl ]] && return 0
    apt_install "$PG_PACKAGE"
    [[ -x $PG_BINDIR/postgres ]] || die "$PG_BINDIR/postgres still missing after installing $PG_PACKAGE"
}

pg_up() {
    local t0 state=0 how=reused deadline
    t0=$(now_us)
    pg_state || state=$?
    if ((state == 2)); then
        how=started
        pg_install_if_missing
        if ((EUID == 0)); then
            id -u "$PG_OS_USER" >/dev/null 2>&1 ||
                useradd --system --home-dir /var/lib/postgresql --shell /bin/bash "$PG_OS_USER"
        fi
        mkdir -p -- "$PG_DIR"
        if ((EUID == 0)); then chown "$PG_OS_USER": "$PG_DIR"; fi
        as_pg test -w "$PG_DIR" ||
            die "user $PG_OS_USER cannot write $PG_DIR (every parent directory must be searchable by it)"
        if [[ ! -s $PG_DATA/PG_VERSION ]]; then
            how="initialised+started"
            if ! as_pg "$PG_BINDIR/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 \
                >"$PG_DIR/initdb.log" 2>&1; then
                line postgres FAILED "initdb failed"
                tail_log "$PG_DIR/initdb.log"
                return 1
            fi
        fi
        # Disposable test data: trade crash safety for speed.
        if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t "$PG_TIMEOUT" \
            -o "-h $HOST -p $PG_PORT -k $PG_SOCKDIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
            start >"$PG_DIR/pg_ctl.log" 2>&1 7>&- 8>&- 9>&-; then
            line postgres FAILED "pg_ctl start failed"
            tail_log "$PG_DIR/pg_ctl.log" "$PG_LOG"
            return 1
        fi
    fi
    deadline=$((SECONDS + PG_TIMEOUT))
    until pg_ready; do
        if ((SECONDS >= deadline)); then
            line postgres FAILED "not accepting connections on $HOST:$PG_PORT after ${PG_TIMEOUT}s"
            tail_log "$PG_LOG"
            return 1
        fi
        sleep 0.3
    done
    mkdir -p -- "$PG_DIR"
    if ! pg_provision; then
        line postgres FAILED "could not create role/databases (needs superuser postgres with trust auth on $HOST)"
        tail_log "$PG_DIR/provision.log" "$PG_LOG"
        return 1
    fi
    line postgres "up ($how)" "$HOST:$PG_PORT  $(elapsed_since "$t0")"
}

pg_down() {
    local t0 state=0
    t0=$(now_us)
    pg_state || state=$?
    if ((state == 2)); then
        line postgres down "$HOST:$PG_PORT (was not running)"
        return 0
    fi
    if [[ ! -f $PG_DATA/postmaster.pid ]]; then
        line postgres FAILED "$HOST:$PG_PORT answers but is not running from $PG_DATA; not stopping it"
        return 1
    fi
    if ! as_pg "$PG_BINDIR/pg_ctl" -D "$PG_DATA" -m fast -w -t 60 stop >"$PG_DIR/pg_ctl.log" 2>&1; then
        line postgres FAILED "pg_ctl stop failed"
        tail_log "$PG_DIR/pg_ctl.log" "$PG_LOG"
        return 1
    fi
    line postgres "down (stopped)" "$HOST:$PG_PORT  $(elapsed_since "$t0")"
}

pg_status() {
    local state=0
    pg_state || state=$?
    case $state in
        0) line postgres up "$HOST:$PG_PORT  pid $(listener_pid "$PG_PORT")" ;;
        1) line postgres starting "$HOST:$PG_PORT" ;;
        *) line postgres down "$HOST:$PG_PORT" ;;
    esac
    ((state == 0))
}

# -------------------------------------------------------------------------- cassandra

# Java major version of a java binary (e.g. 17), empty if it does not run.
java_major() {
    "$1" -version 2>&1 | sed -n 's/.* version "\([0-9]*\).*/\1/p' | head -n 1
}

# Cassandra 5.0 supports Java 11 and 17 only; prefer 17.
find_java() {
    local -a candidates=()
    local c want
    [[ -n ${MESSENGER_CASSANDRA_JAVA:-} ]] && candidates+=("$MESSENGER_CASSANDRA_JAVA")
    [[ -n ${JAVA_HOME:-} ]] && candidates+=("$JAVA_HOME/bin/java")
    c=$(command -v java 2>/dev/null || true)
    [[ -n $c ]] && candidates+=("$c")
    for c in /usr/lib/jvm/*/bin/java; do
        [[ -x $c ]] && candidates+=("$c")
    done
    for want in 17 11; do
        for c in "${candidates[@]}"; do
            [[ -x $c && $(java_major "$c") == "$want" ]] && { printf '%s' "$c"; return 0; }
        done
    done
    return 1
}

cassandra_download() {
    [[ -f $C_LIB/.complete && $(<"$C_LIB/.complete") == "$CASSANDRA_VERSION" ]] && return 0
    local t0 partial=$C_DIR/lib.partial n
    t0=$(now_us)
    command -v mvn >/dev/null 2>&1 || apt_install maven
    mkdir -p -- "$C_DIR"
    sed "s|@CASSANDRA_VERSION@|$(sed_escape "$CASSANDRA_VERSION")|g" \
        "$TEMPLATES/cassandra-pom.xml.in" >"$C_DIR/pom.xml"
    rm -rf -- "$partial"
    if ! mvn -B -q -f "$C_DIR/pom.xml" "$MAVEN_DEPENDENCY_PLUGIN:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$partial" >"$C_DIR/download.log" 2>&1 ||
        [[ ! -f $partial/cassandra-all-$CASSANDRA_VERSION.jar ]]; then
        line cassandra FAILED "maven download of cassandra-all $CASSANDRA_VERSION failed"
        tail_log "$C_DIR/download.log"
        return 1
    fi
    rm -rf -- "$C_LIB"
    mv -- "$partial" "$C_LIB"
    printf '%s\n' "$CASSANDRA_VERSION" >"$C_LIB/.complete"
    n=$(find "$C_LIB" -name '*.jar' | wc -l)
    line cassandra downloaded "cassandra-all $CASSANDRA_VERSION + deps ($n jars, $(du -sh "$C_LIB" | cut -f1)) in $(elapsed_since "$t0")"
}

cassandra_write_config() {
    mkdir -p -- "$C_CONF" "$C_LOGS" "$C_DIR"/{data,commitlog,saved_caches,hints,cdc_raw,triggers}
    sed -e "s|@DIR@|$(sed_escape "$C_DIR")|g" \
        -e "s|@NATIVE_PORT@|$CASSANDRA_PORT|g" \
        -e "s|@STORAGE_PORT@|$CASSANDRA_STORAGE_PORT|g" \
        "$TEMPLATES/cassandra.yaml.in" >"$C_CONF/cassandra.yaml"
    cp -- "$TEMPLATES/cassandra-logback.xml" "$C_CONF/logback.xml"
}

# PID of our Cassandra JVM if it is alive (pidfile checked against the command line).
cassandra_pid() {
    local pid
    [[ -f $C_PIDFILE ]] || return 1
    pid=$(<"$C_PIDFILE")
    pid_alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "CassandraDaemon" || return 1
    printf '%s' "$pid"
}

cassandra_have_driver() {
    [[ -x $PYTHON ]] && "$PYTHON" -c 'import cassandra.cluster' >/dev/null 2>&1
}

# Does CQL answer?  Best: a real query through cassandra-driver; fallback: a native
# protocol OPTIONS/SUPPORTED handshake with plain python3; last resort: TCP connect.
cassandra_cql_ok() {
    port_open "$CASSANDRA_PORT" || return 1
    if [[ ${HAVE_DRIVER:-} == yes ]]; then
        "$PYTHON" -W ignore - "$HOST" "$CASSANDRA_PORT" <<'PY' >/dev/null 2>&1
import sys
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import RoundRobinPolicy
profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=5)
cluster = Cluster([sys.argv[1]], port=int(sys.argv[2]), connect_timeout=3,
                  control_connection_timeout=3, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
try:
    session = cluster.connect()
    row = session.execute("SELECT release_version FROM system.local").one()
    print(row.release_version)
finally:
    cluster.shutdown()
PY
    elif command -v python3 >/dev/null 2>&1; then
        python3 - "$HOST" "$CASSANDRA_PORT" <<'PY' >/dev/null 2>&1
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
s.sendall(bytes([0x04, 0, 0, 0, 0x05, 0, 0, 0, 0]))  # v4 OPTIONS, stream 0, empty body
hdr = b""
while len(hdr) < 9:
    chunk = s.recv(9 - len(hdr))
    if not chunk:
        break
    hdr += chunk
sys.exit(0 if len(hdr) == 9 and hdr[0] == 0x84 and hdr[4] == 0x06 else 1)  # SUPPORTED
PY
    else
        return 0
    fi
}

cassandra_release_version() {
    [[ ${HAVE_DRIVER:-} == yes ]] || return 0
    "$PYTHON" -W ignore - "$HOST" "$CASSANDRA_PORT" <<'PY' 2>/dev/null || true
import sys
from cassandra.cluster import Cluster, ExecutionProfile, EXEC_PROFILE_DEFAULT
from cassandra.policies import RoundRobinPolicy
profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=5)
cluster = Cluster([sys.argv[1]], port=int(sys.argv[2]), connect_timeout=3,
                  execution_profiles={EXEC_PROFILE_DEFAULT: profile})
try:
    print(cluster.connect().execute("SELECT release_version FROM system.local").one().release_version)
finally:
    cluster.shutdown()
PY
}

cassandra_launch() {
    local java jamm
    java=$(find_java) || {
        apt_install openjdk-17-jre-headless
        java=$(find_java) || die "no Java 17 (or 11) found for Cassandra"
    }
    cassandra_write_config
    jamm=$(find "$C_LIB" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)
    [[ -n $jamm ]] || die "jamm jar missing from $C_LIB (delete $C_LIB to re-download)"

    local -a opts=(
        # jvm-server.options (general)
        -ea -da:net.openhft...
        -XX:+UseThreadPriorities
        -XX:+HeapDumpOnOutOfMemoryError "-XX:HeapDumpPath=$C_DIR"
        -XX:+ExitOnOutOfMemoryError "-XX:ErrorFile=$C_LOGS/hs_err_%p.log"
        -Xss256k -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
        -Djava.net.preferIPv4Stack=true
        "-Xms$CASSANDRA_HEAP" "-Xmx$CASSANDRA_HEAP"
        # jvm17-server.options: G1
        -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1
        -XX:G1HeapRegionSize=16m -XX:G1RSetUpdatingPauseTimePercent=5
        -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
        # jvm17-server.options: JPMS (required on JDK 17)
        -Djdk.attach.allowAttachSelf=true
        --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
        --add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
        --add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
        --add-exports java.sql/java.sql=ALL-UNNAMED
        --add-exports java.base/java.lang.ref=ALL-UNNAMED
        --add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
        --add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
        --add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
        --add-opens java.base/java.lang.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.loader=ALL-UNNAMED
        --add-opens java.base/jdk.internal.ref=ALL-UNNAMED
        --add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
        --add-opens java.base/jdk.internal.math=ALL-UNNAMED
        --add-opens java.base/jdk.internal.module=ALL-UNNAMED
        --add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
        --add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
        --add-opens java.base/sun.nio.ch=ALL-UNNAMED
        --add-opens java.base/java.io=ALL-UNNAMED
        --add-opens java.base/java.lang.reflect=ALL-UNNAMED
        --add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
        --add-opens java.base/java.lang=ALL-UNNAMED
        --add-opens java.base/java.util=ALL-UNNAMED
        # jvm17-server.options: netty
        -Dio.netty.tryReflectionSetAccessible=true
        -Dio.netty.allocator.useCacheForAllThreads=true
        -Dio.netty.allocator.maxOrder=11
        # cassandra-env.sh
        "-javaagent:$jamm"
        "-Dcassandra.jmx.local.port=$CASSANDRA_JMX_PORT"
        # this setup
        "-Dcassandra.config=file://$C_CONF/cassandra.yaml"
        "-Dlogback.configurationFile=file://$C_CONF/logback.xml"
        "-Dcassandra.logdir=$C_LOGS"
        "-Dcassandra.storagedir=$C_DIR"
        "-Dcassandra.triggers_dir=$C_DIR/triggers"
        -Dcassandra-foreground=yes
        -Dcassandra.skip_wait_for_gossip_to_settle=0
        -Dcassandra.superuser_setup_delay_ms=0
        -cp "$C_LIB/*"
        org.apache.cassandra.service.CassandraDaemon
    )
    local -a nolock=()
    # Keep Cassandra from mlockall()-ing its whole address space, which pins the full
    # heap (and more) in RAM and slows start-up: a small RLIMIT_MEMLOCK, and as root
    # (CAP_IPC_LOCK ignores that limit) drop the capability with setpriv.
    if ((EUID == 0)) && command -v setpriv >/dev/null 2>&1; then
        nolock=(setpriv --bounding-set -ipc_lock --)
    fi
    (
        cd -- "$C_DIR"
        ulimit -n 100000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
        ulimit -l 64 2>/dev/null || true
        spawn_detached "$C_PIDFILE" "$C_STDOUT" "${nolock[@]}" "$java" "${opts[@]}"
    ) || die "cassandra did not start (no pid file)"
}

# Phase 1 of `up`: download and launch (returns quickly), so the others can start
# while the JVM boots.  Sets C_HOW and C_T0 for cassandra_wait.
cassandra_start() {
    C_T0=$(now_us)
    C_HOW=reused
    HAVE_DRIVER=no
    cassandra_have_driver && HAVE_DRIVER=yes
    if port_open "$CASSANDRA_PORT"; then
        return 0 # answering (or booting, having opened the port); reuse
    fi
    if cassandra_pid >/dev/null; then
        C_HOW="reused, was starting"
        return 0
    fi
    cassandra_download || return 1
    C_T0=$(now_us)
    C_HOW=started
    cassandra_launch
}

cassandra_wait() {
    local deadline pid rss
    deadline=$((SECONDS + CASSANDRA_TIMEOUT))
    until cassandra_cql_ok; do
        if [[ $C_HOW != reused ]] && ! cassandra_pid >/dev/null; then
            line cassandra FAILED "JVM exited during start-up"
            tail_log "$C_STDOUT" "$C_SYSLOG"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            line cassandra FAILED "CQL not answering on $HOST:$CASSANDRA_PORT after ${CASSANDRA_TIMEOUT}s"
            tail_log "$C_STDOUT" "$C_SYSLOG"
            return 1
        fi
        sleep 0.5
    done
    pid=$(cassandra_pid || listener_pid "$CASSANDRA_PORT" || true)
    rss=''
    [[ -n $pid ]] && rss=$(ps -o rss= -p "$pid" 2>/dev/null | awk '{printf "  rss %d MiB", $1/1024}')
    line cassandra "up ($C_HOW)" "$HOST:$CASSANDRA_PORT  $(elapsed_since "$C_T0")${rss}"
}

cassandra_down() {
    local t0 pid deadline
    t0=$(now_us)
    pid=$(cassandra_pid || true)
    if [[ -z $pid ]] && port_open "$CASSANDRA_PORT"; then
        pid=$(listener_pid "$CASSANDRA_PORT")
        if [[ -z $pid ]] || ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q CassandraDaemon; then
            line cassandra FAILED "$HOST:$CASSANDRA_PORT answers but its process is unknown; not stopping it"
            return 1
        fi
    fi
    if [[ -z $pid ]]; then
        line cassandra down "$HOST:$CASSANDRA_PORT (was not running)"
        return 0
    fi
    # SIGTERM runs Cassandra's shutdown hook (drain: flush memtables, close commit log).
    kill -TERM "$pid"
    deadline=$((SECONDS + 90))
    while pid_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            warn "cassandra (pid $pid) ignored SIGTERM for 90s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.5
    done
    rm -f -- "$C_PIDFILE"
    line cassandra "down (stopped)" "$HOST:$CASSANDRA_PORT  $(elapsed_since "$t0")"
}

cassandra_status() {
    local pid version
    HAVE_DRIVER=no
    cassandra_have_driver && HAVE_DRIVER=yes
    if cassandra_cql_ok; then
        pid=$(cassandra_pid || listener_pid "$CASSANDRA_PORT" || true)
        version=$(cassandra_release_version)
        line cassandra up "$HOST:$CASSANDRA_PORT  pid ${pid:-?}${version:+  release $version}"
    elif pid=$(cassandra_pid); then
        line cassandra starting "$HOST:$CASSANDRA_PORT  pid $pid"
        return 1
    else
        line cassandra down "$HOST:$CASSANDRA_PORT"
        return 1
    fi
}

# ------------------------------------------------------------------------------- main

usage() {
    sed -n '3,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

# Validate service names; set SELECTED to the selection in canonical order.
select_services() {
    local n s ok
    SELECTED=()
    for n in "$@"; do
        ok=no
        for s in "${ALL_SERVICES[@]}"; do [[ $n == "$s" ]] && ok=yes; done
        [[ $ok == yes ]] || die "unknown service '$n' (expected: ${ALL_SERVICES[*]})"
    done
    for s in "${ALL_SERVICES[@]}"; do
        if (($# == 0)) || wants "$s" "$@"; then
            SELECTED+=("$s")
        fi
    done
}

wants() {
    local s=$1
    shift
    local x
    for x in "$@"; do [[ $x == "$s" ]] && return 0; done
    return 1
}

cmd_up() {
    local rc=0 c_started=no
    select_services "$@"
    local -a svc=("${SELECTED[@]}")
    # Cassandra boots slowly: launch it first, bring up the others meanwhile.
    if wants cassandra "${svc[@]}"; then
        lock_service cassandra
        if cassandra_start; then c_started=yes; else rc=1; fi
    fi
    if wants redis "${svc[@]}"; then
        lock_service redis
        redis_up || rc=1
    fi
    if wants postgres "${svc[@]}"; then
        lock_service postgres
        pg_up || rc=1
    fi
    if [[ $c_started == yes ]]; then
        cassandra_wait || rc=1
    fi
    return "$rc"
}

cmd_down() {
    local s rc=0
    select_services "$@"
    local -a svc=("${SELECTED[@]}")
    for s in "${svc[@]}"; do
        lock_service "$s"
        case $s in
            redis) redis_down || rc=1 ;;
            postgres) pg_down || rc=1 ;;
            cassandra) cassandra_down || rc=1 ;;
        esac
    done
    return "$rc"
}

cmd_status() {
    local s rc=0
    select_services "$@"
    local -a svc=("${SELECTED[@]}")
    for s in "${svc[@]}"; do
        case $s in
            redis) redis_status || rc=1 ;;
            postgres) pg_status || rc=1 ;;
            cassandra) cassandra_status || rc=1 ;;
        esac
    done
    return "$rc"
}

cmd_env() {
    printf 'export MESSENGER_TEST_PG_DSN=postgresql://%s:%s@%s:%s/messenger_test\n' \
        "$PG_APP_USER" "$PG_APP_PASSWORD" "$HOST" "$PG_PORT"
    printf 'export MESSENGER_TEST_REDIS_URL=redis://%s:%s/0\n' "$HOST" "$REDIS_PORT"
    printf 'export MESSENGER_TEST_CASSANDRA=%s:%s\n' "$HOST" "$CASSANDRA_PORT"
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        up)
            mkdir -p -- "$SERVICES_DIR"
            cmd_up "$@"
            ;;
        down) cmd_down "$@" ;;
        status) cmd_status "$@" ;;
        env) (($# == 0)) || die "env takes no arguments"; cmd_env ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
