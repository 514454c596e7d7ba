#!/usr/bin/env bash
# Local dev/test stack for Caracal, without Docker: PostgreSQL, Redis, OPA and
# an S3 emulator (moto), all bound to 127.0.0.1 only. Idempotent: installs only
# what is missing and starts only what is not running.
#
#   infra/stack.sh [up]   install/start everything, print exports, write .stack.env
#   infra/stack.sh stop   stop redis, opa, moto and the postgres cluster
#
# Needs root (apt, pg_ctlcluster, runuser). No environment variables required.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LOG_DIR=/var/log/caracal
RUN_DIR=/var/run/caracal
REDIS_DIR=/var/lib/caracal/redis

PG_PORT=5432
REDIS_PORT=6379
OPA_PORT=8181
OPA_VERSION=v1.22.3
MOTO_PORT=5050
READY_TIMEOUT=60          # seconds to wait for a service to become ready
BUILD_WAIT_TIMEOUT=1800   # seconds to wait for an OPA build already in progress

# --- environment that must not be assumed --------------------------------------
if [ -z "${HOME:-}" ]; then
  HOME="$(getent passwd "$(id -un)" | cut -d: -f6)"
  export HOME
fi
export DEBIAN_FRONTEND=noninteractive
for d in /usr/local/go/bin "$HOME/go/bin" "$HOME/.pyenv/shims" "$HOME/.pyenv/bin" \
         /usr/local/sbin /usr/local/bin /usr/sbin /usr/bin /sbin /bin; do
  case ":${PATH:-}:" in *":$d:"*) ;; *) [ -d "$d" ] && PATH="${PATH:+$PATH:}$d" ;; esac
done
export PATH

# --- helpers -------------------------------------------------------------------
die() { echo "stack.sh: ERROR: $*" >&2; exit 1; }

fail_with_log() { # message, logfile
  echo "stack.sh: ERROR: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    echo "----- last lines of $2 -----" >&2
    tail -n 30 "$2" >&2 || true
    echo "-----" >&2
  fi
  exit 1
}

# wait_until <timeout-seconds> <command...>: poll every 0.5 s
wait_until() {
  local timeout=$1; shift
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

as_postgres() { (cd / && runuser -u postgres -- "$@"); }

APT_UPDATED=0
APT_LOG="$LOG_DIR/apt.log"
apt_busy() { pgrep -x 'apt-get|apt|dpkg|unattended-upgr' >/dev/null 2>&1; }
apt_install() {
  # another apt/dpkg may be running (e.g. a manual install): wait for it first
  if apt_busy; then
    echo "  (waiting for another apt/dpkg process to finish...)"
    wait_until 600 bash -c '! pgrep -x "apt-get|apt|dpkg|unattended-upgr"' \
      || die "another apt/dpkg process is still running after 600 s"
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    apt-get -o DPkg::Lock::Timeout=300 -q update >>"$APT_LOG" 2>&1 \
      || fail_with_log "apt-get update failed" "$APT_LOG"
    APT_UPDATED=1
  fi
  apt-get -o DPkg::Lock::Timeout=300 -q -y install "$@" >>"$APT_LOG" 2>&1 \
    || fail_with_log "apt-get install $* failed" "$APT_LOG"
}

http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true; }
opa_healthy() { [ "$(http_code "http://127.0.0.1:$OPA_PORT/health")" = 200 ]; }
moto_answers() { local c; c="$(http_code "http://127.0.0.1:$MOTO_PORT/")"; [ -n "$c" ] && [ "$c" != 000 ]; }
redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
pg_ready() { pg_isready -q -h 127.0.0.1 -p "$PG_PORT"; }

pg_version() {
  # highest installed PostgreSQL major version, empty if none
  ls /usr/lib/postgresql 2>/dev/null | grep -E '^[0-9]+$' | sort -n | tail -n 1 || true
}

pg_installed() {
  local v
  command -v pg_ctlcluster >/dev/null 2>&1 || return 1
  v="$(pg_version)"
  [ -n "$v" ] && [ -x "/usr/lib/postgresql/$v/bin/postgres" ]
}

# kill the process recorded in a pid file if its command line still matches
stop_pidfile() { # name pidfile cmdline-pattern
  local name=$1 pidfile=$2 pattern=$3 pid="" pids
  if [ -f "$pidfile" ]; then
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    rm -f "$pidfile"
  fi
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null \
     && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "$pattern"; then
    pids="$pid"
  else
    # no (valid) pid file: fall back to the exact command line we start it with
    pids="$(pgrep -f -- "$pattern" || true)"
  fi
  if [ -z "$pids" ]; then
    echo "$name: not running"
    return 0
  fi
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  local p
  for p in $pids; do
    if ! wait_until 15 bash -c "! kill -0 $p"; then
      kill -9 "$p" 2>/dev/null || true
    fi
  done
  echo "$name: stopped (pid $(echo $pids))"
}

OPA_PATTERN="opa run --server --addr 127\\.0\\.0\\.1:$OPA_PORT( |\$)"
MOTO_PATTERN="moto_server -H 127\\.0\\.0\\.1 -p $MOTO_PORT( |\$)"

# --- components ----------------------------------------------------------------
ensure_postgres() {
  local did=() v conf_dir conf want changed=0
  if ! pg_installed; then
    apt_install postgresql
    pg_installed || fail_with_log "postgresql installed but server binaries not found" "$APT_LOG"
    did+=("installed")
  fi
  v="$(pg_version)"

  if ! pg_lsclusters -h 2>/dev/null | awk -v v="$v" '$1==v && $2=="main"' | grep -q .; then
    pg_createcluster "$v" main --port "$PG_PORT" >>"$LOG_DIR/postgres-setup.log" 2>&1 \
      || fail_with_log "pg_createcluster $v main failed" "$LOG_DIR/postgres-setup.log"
    did+=("created cluster $v/main")
  fi

  # loopback only, fixed port (conf.d is included by Debian's postgresql.conf)
  conf_dir="/etc/postgresql/$v/main/conf.d"
  conf="$conf_dir/caracal.conf"
  want="# managed by caracal infra/stack.sh
listen_addresses = '127.0.0.1'
port = $PG_PORT"
  mkdir -p "$conf_dir"
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    printf '%s\n' "$want" >"$conf"
    chown postgres:postgres "$conf" 2>/dev/null || true
    changed=1
  fi

  local status
  status="$(pg_lsclusters -h 2>/dev/null | awk -v v="$v" '$1==v && $2=="main" {print $4}')"
  if [ "$status" = online ] && [ "$changed" = 1 ]; then
    pg_ctlcluster "$v" main restart >>"$LOG_DIR/postgres-setup.log" 2>&1 \
      || fail_with_log "pg_ctlcluster $v main restart failed" "/var/log/postgresql/postgresql-$v-main.log"
    did+=("restarted (config changed)")
  elif pg_ready; then
    did+=("already running")
  else
    if [ "$status" != online ]; then
      pg_ctlcluster "$v" main start >>"$LOG_DIR/postgres-setup.log" 2>&1 \
        || fail_with_log "pg_ctlcluster $v main start failed" "/var/log/postgresql/postgresql-$v-main.log"
    fi
    did+=("started $v/main")
  fi
  wait_until "$READY_TIMEOUT" pg_ready \
    || fail_with_log "postgres not accepting connections on 127.0.0.1:$PG_PORT after ${READY_TIMEOUT}s" \
         "/var/log/postgresql/postgresql-$v-main.log"

  # role + database (idempotent); ALTER enforces attributes/password every run
  if [ "$(as_postgres psql -p "$PG_PORT" -XtAc "SELECT 1 FROM pg_roles WHERE rolname='caracal'")" = 1 ]; then
    as_postgres psql -p "$PG_PORT" -Xq -v ON_ERROR_STOP=1 \
      -c "ALTER ROLE caracal WITH LOGIN CREATEDB PASSWORD 'caracal'" >/dev/null
  else
    as_postgres psql -p "$PG_PORT" -Xq -v ON_ERROR_STOP=1 \
      -c "CREATE ROLE caracal WITH LOGIN CREATEDB PASSWORD 'caracal'" >/dev/null
    did+=("created role caracal")
  fi
  if [ "$(as_postgres psql -p "$PG_PORT" -XtAc "SELECT 1 FROM pg_database WHERE datname='caracal'")" != 1 ]; then
    as_postgres createdb -p "$PG_PORT" -O caracal caracal
    did+=("created database caracal")
  fi
  local IFS=,
  echo "postgres: ${did[*]}" | sed 's/,/, /g'
}

ensure_redis() {
  local did=()
  if redis_ping; then
    # someone else's (or our earlier) instance: enforce the settings we rely on
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set maxmemory-policy noeviction >/dev/null \
      || die "redis: CONFIG SET maxmemory-policy failed"
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set appendonly yes >/dev/null \
      || die "redis: CONFIG SET appendonly failed"
    echo "redis: already running (enforced maxmemory-policy=noeviction, appendonly=yes)"
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    apt_install redis-server
    did+=("installed")
    # with a working init system Debian's package may have started its own instance
    if redis_ping; then
      redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set maxmemory-policy noeviction >/dev/null
      redis-cli -h 127.0.0.1 -p "$REDIS_PORT" config set appendonly yes >/dev/null
      echo "redis: installed; Debian's instance is running (enforced noeviction, appendonly)"
      return 0
    fi
  fi
  mkdir -p "$REDIS_DIR"
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
    --maxmemory-policy noeviction --appendonly yes \
    --dir "$REDIS_DIR" --daemonize yes --logfile "$LOG_DIR/redis.log" \
    --pidfile "$RUN_DIR/redis.pid" --protected-mode yes \
    || fail_with_log "redis-server failed to start" "$LOG_DIR/redis.log"
  wait_until "$READY_TIMEOUT" redis_ping \
    || fail_with_log "redis not answering PING on 127.0.0.1:$REDIS_PORT after ${READY_TIMEOUT}s" "$LOG_DIR/redis.log"
  did+=("started")
  local IFS=,
  echo "redis: ${did[*]}" | sed 's/,/, /g'
}

find_opa() {
  local gobin
  if command -v opa >/dev/null 2>&1; then command -v opa; return 0; fi
  if command -v go >/dev/null 2>&1; then
    gobin="$(go env GOBIN 2>/dev/null || true)"
    [ -n "$gobin" ] || gobin="$(go env GOPATH 2>/dev/null | cut -d: -f1)/bin"
    if [ -x "$gobin/opa" ]; then echo "$gobin/opa"; return 0; fi
  fi
  [ -x "$HOME/go/bin/opa" ] && { echo "$HOME/go/bin/opa"; return 0; }
  return 1
}

ensure_opa() {
  local did=() opa_bin build_log="$LOG_DIR/opa-build.log"
  if opa_healthy; then
    echo "opa: already running"
    return 0
  fi
  if ! opa_bin="$(find_opa)"; then
    if pgrep -f 'go install .*github.com/open-policy-agent/opa@' >/dev/null 2>&1; then
      echo "  (an OPA build is already in progress; waiting for it, up to ${BUILD_WAIT_TIMEOUT}s...)"
      wait_until "$BUILD_WAIT_TIMEOUT" bash -c "! pgrep -f 'go install .*github.com/open-policy-agent/opa@'" \
        || die "the OPA build already in progress did not finish within ${BUILD_WAIT_TIMEOUT}s"
      opa_bin="$(find_opa)" || die "the OPA build in progress finished but no opa binary was produced"
      did+=("waited for build")
    else
      command -v go >/dev/null 2>&1 \
        || die "opa is not installed and Go is not available (need Go >= 1.24 at /usr/local/go/bin/go)"
      echo "  (building OPA $OPA_VERSION with go install; this takes several minutes, log: $build_log)"
      CGO_ENABLED=0 go install "github.com/open-policy-agent/opa@$OPA_VERSION" >>"$build_log" 2>&1 \
        || fail_with_log "go install opa@$OPA_VERSION failed" "$build_log"
      opa_bin="$(find_opa)" || fail_with_log "go install finished but no opa binary found" "$build_log"
      did+=("built $OPA_VERSION")
    fi
  fi
  setsid nohup "$opa_bin" run --server --addr "127.0.0.1:$OPA_PORT" --log-level error \
    >"$LOG_DIR/opa.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/opa.pid"
  wait_until "$READY_TIMEOUT" opa_healthy \
    || fail_with_log "opa /health not 200 on 127.0.0.1:$OPA_PORT after ${READY_TIMEOUT}s" "$LOG_DIR/opa.log"
  did+=("started")
  local IFS=,
  echo "opa: ${did[*]}" | sed 's/,/, /g'
}

moto_runnable() { moto_server --help >/dev/null 2>&1; }

ensure_moto() {
  local did=() pip_log="$LOG_DIR/pip.log" moto_bin=moto_server
  if moto_answers; then
    echo "moto: already running"
    return 0
  fi
  if ! moto_runnable; then
    # `command -v` is not enough: pyenv shims exist even when the package is not
    # installed for the active interpreter
    command -v python3 >/dev/null 2>&1 || apt_install python3 python3-pip python3-venv
    if python3 -m pip install -q 'moto[server]' >>"$pip_log" 2>&1; then
      command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
      hash -r
    fi
    if ! moto_runnable; then
      # e.g. Debian's system python refuses pip installs (PEP 668): use a venv
      local venv=/opt/caracal/moto-venv
      if ! python3 -m venv "$venv" >>"$pip_log" 2>&1; then
        apt_install python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv" >>"$pip_log" 2>&1 || fail_with_log "could not create $venv" "$pip_log"
      fi
      "$venv/bin/pip" install -q 'moto[server]' >>"$pip_log" 2>&1 \
        || fail_with_log "pip install 'moto[server]' failed" "$pip_log"
      ln -sf "$venv/bin/moto_server" /usr/local/bin/moto_server
      hash -r
      moto_runnable || fail_with_log "moto_server still not runnable after install" "$pip_log"
    fi
    did+=("installed")
  fi
  setsid nohup "$moto_bin" -H 127.0.0.1 -p "$MOTO_PORT" >"$LOG_DIR/moto.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/moto.pid"
  wait_until "$READY_TIMEOUT" moto_answers \
    || fail_with_log "moto_server not answering on 127.0.0.1:$MOTO_PORT after ${READY_TIMEOUT}s" "$LOG_DIR/moto.log"
  did+=("started")
  local IFS=,
  echo "moto: ${did[*]}" | sed 's/,/, /g'
}

write_env() {
  local lines
  lines="DATABASE_URL=postgres://caracal:caracal@127.0.0.1:$PG_PORT/caracal
REDIS_URL=redis://127.0.0.1:$REDIS_PORT
OPA_URL=http://127.0.0.1:$OPA_PORT
S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT
AUDIT_EXPORT_S3_ENDPOINT=http://127.0.0.1:$MOTO_PORT"
  printf '%s\n' "$lines" >"$ROOT/.stack.env"
  echo
  printf '%s\n' "$lines" | sed 's/^/export /'
}

cmd_up() {
  ensure_postgres
  ensure_redis
  ensure_opa
  ensure_moto
  write_env
}

cmd_stop() {
  local v
  if redis_ping; then
    # plain SHUTDOWN (not NOSAVE): the AOF is fsynced and kept
    redis-cli -h 127.0.0.1 -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
    wait_until 30 bash -c "! redis-cli -h 127.0.0.1 -p $REDIS_PORT ping" \
      || die "redis did not shut down"
    rm -f "$RUN_DIR/redis.pid"
    echo "redis: stopped"
  else
    echo "redis: not running"
  fi
  stop_pidfile opa "$RUN_DIR/opa.pid" "$OPA_PATTERN"
  stop_pidfile moto "$RUN_DIR/moto.pid" "$MOTO_PATTERN"
  v="$(pg_version)"
  if [ -n "$v" ] && command -v pg_ctlcluster >/dev/null 2>&1 \
     && pg_lsclusters -h 2>/dev/null | awk -v v="$v" '$1==v && $2=="main" && $4=="online"' | grep -q .; then
    pg_ctlcluster "$v" main stop
    echo "postgres: stopped $v/main"
  else
    echo "postgres: not running"
  fi
}

# --- main ----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || die "must be run as root (apt-get, pg_ctlcluster, runuser)"
mkdir -p "$LOG_DIR" "$RUN_DIR"

case "${1:-up}" in
  up|start) cmd_up ;;
  stop|down) cmd_stop ;;
  *) echo "usage: $0 [up|stop]" >&2; exit 2 ;;
esac
