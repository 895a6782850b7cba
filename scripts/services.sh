#!/usr/bin/env bash
# Make sure the Redis and PostgreSQL that the integration tests talk to accept connections.
#
# Reads the same variables as the tests:
#   FEEDHANDLER_REDIS_URL  (default redis://127.0.0.1:6379/15)
#   FEEDHANDLER_PG_DSN     (default postgresql://postgres@127.0.0.1:5432/feedhandler_test)
#   SERVICES_TIMEOUT       seconds to wait for each server (default 60)
#
# For each server on a loopback address: listening -> fine; installed but stopped -> start it;
# not installed -> apt-get install it when running as root, else stop with what to install.
# A server on another host is only waited for. Then the test database is created if missing.
set -euo pipefail

REDIS_URL=${FEEDHANDLER_REDIS_URL:-redis://127.0.0.1:6379/15}
PG_DSN=${FEEDHANDLER_PG_DSN:-postgresql://postgres@127.0.0.1:5432/feedhandler_test}
TIMEOUT=${SERVICES_TIMEOUT:-60}

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

is_loopback() {
    case $1 in
        127.* | localhost | ::1) return 0 ;;
        *) return 1 ;;
    esac
}

# True when something accepts TCP connections on host:port.
listening() {
    local host=$1 port=$2
    timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

APT_UPDATED=0
apt_install() {
    if [ $APT_UPDATED -eq 0 ]; then
        say "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- parse the URLs --------------------------------------------------------------------------------

# redis://[user:pass@]host[:port][/db]
if [[ $REDIS_URL =~ ^rediss?://([^@/]*@)?(\[[^]]*\]|[^:/]*)(:([0-9]+))?(/.*)?$ ]]; then
    REDIS_HOST=${BASH_REMATCH[2]:-127.0.0.1}
    REDIS_PORT=${BASH_REMATCH[4]:-6379}
else
    die "cannot parse FEEDHANDLER_REDIS_URL='$REDIS_URL' (expected redis://host:port/db)"
fi
REDIS_HOST=${REDIS_HOST#[}
REDIS_HOST=${REDIS_HOST%]}

# postgresql://[user[:pass]@]host[:port]/dbname[?params]
if [[ $PG_DSN =~ ^postgres(ql)?://(([^@/:]*)(:[^@/]*)?@)?(\[[^]]*\]|[^:/?]*)(:([0-9]+))?(/([^?]*))?(\?.*)?$ ]]; then
    PG_USER=${BASH_REMATCH[3]:-postgres}
    PG_HOST=${BASH_REMATCH[5]:-127.0.0.1}
    PG_PORT=${BASH_REMATCH[7]:-5432}
    PG_DB=${BASH_REMATCH[9]:-}
else
    die "cannot parse FEEDHANDLER_PG_DSN='$PG_DSN' (expected postgresql://user@host:port/dbname)"
fi
PG_HOST=${PG_HOST#[}
PG_HOST=${PG_HOST%]}
[ -n "$PG_DB" ] || die "FEEDHANDLER_PG_DSN='$PG_DSN' names no database"
[[ $PG_DB =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "database name '$PG_DB' must be a plain identifier"

# --- Redis -----------------------------------------------------------------------------------------

start_redis() {
    local dir log
    if is_root && [ -d /var/lib/redis ]; then dir=/var/lib/redis; else dir=${TMPDIR:-/tmp}/feedhandler-redis-$(id -u); fi
    mkdir -p "$dir"
    if is_root && [ -d /var/log/redis ]; then log=/var/log/redis/feedhandler.log; else log=$dir/redis.log; fi
    say "starting redis-server on $REDIS_HOST:$REDIS_PORT (log: $log)"
    # Same settings as the machine's own Redis: loopback only, nothing kept on disk.
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$log" \
        || die "redis-server did not start; see $log"
}

wait_redis() {
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        if command -v redis-cli >/dev/null; then
            [ "$(redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" ping 2>/dev/null || true)" = PONG ] && return 0
        elif listening "$REDIS_HOST" "$REDIS_PORT"; then
            return 0
        fi
        [ $SECONDS -lt $deadline ] || die "Redis at $REDIS_HOST:$REDIS_PORT did not answer PING within ${TIMEOUT}s"
        sleep 0.5
    done
}

ensure_redis() {
    if listening "$REDIS_HOST" "$REDIS_PORT"; then
        wait_redis
        say "Redis is up on $REDIS_HOST:$REDIS_PORT"
        return
    fi
    if ! is_loopback "$REDIS_HOST"; then
        say "waiting for Redis on $REDIS_HOST:$REDIS_PORT (not a loopback address: not starting one)"
        wait_redis
        return
    fi
    if ! command -v redis-server >/dev/null; then
        if is_root && command -v apt-get >/dev/null; then
            apt_install redis-server
        else
            die "Redis is not installed. Install it (Debian/Ubuntu: sudo apt-get install redis-server) and re-run, or set FEEDHANDLER_REDIS_URL to a running server."
        fi
        # The package may have started its own server.
        if listening "$REDIS_HOST" "$REDIS_PORT"; then wait_redis; say "Redis is up"; return; fi
    fi
    start_redis
    wait_redis
    say "Redis is up on $REDIS_HOST:$REDIS_PORT"
}

# --- PostgreSQL ------------------------------------------------------------------------------------

pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

# Let the test user in over TCP loopback without a password: only on a server this script installed.
pg_trust_loopback() {
    local ver=$1 hba
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    [ -f "$hba" ] || return 0
    say "allowing $PG_USER over loopback without password in $hba"
    {
        echo "# added by feedhandler scripts/services.sh for the test servers"
        echo "host all $PG_USER 127.0.0.1/32 trust"
        echo "host all $PG_USER ::1/128 trust"
        cat "$hba"
    } >"$hba.new"
    chown --reference="$hba" "$hba.new"
    chmod --reference="$hba" "$hba.new"
    mv "$hba.new" "$hba"
}

start_postgres() {
    local ver
    ver=$(pg_version)
    [ -n "$ver" ] || die "PostgreSQL is installed but /etc/postgresql has no version directory"
    if [ ! -d "/etc/postgresql/$ver/main" ]; then
        is_root || die "PostgreSQL $ver has no 'main' cluster: create it with sudo pg_createcluster $ver main"
        say "creating cluster $ver/main"
        pg_createcluster "$ver" main >/dev/null
    fi
    say "starting PostgreSQL $ver/main"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start \
        || die "PostgreSQL did not start; see /var/log/postgresql/postgresql-$ver-main.log"
}

wait_postgres() {
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        if command -v pg_isready >/dev/null; then
            pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2 && return 0
        elif listening "$PG_HOST" "$PG_PORT"; then
            return 0
        fi
        [ $SECONDS -lt $deadline ] || die "PostgreSQL at $PG_HOST:$PG_PORT did not accept connections within ${TIMEOUT}s"
        sleep 0.5
    done
}

ensure_postgres() {
    if listening "$PG_HOST" "$PG_PORT"; then
        wait_postgres
        say "PostgreSQL is up on $PG_HOST:$PG_PORT"
        return
    fi
    if ! is_loopback "$PG_HOST"; then
        say "waiting for PostgreSQL on $PG_HOST:$PG_PORT (not a loopback address: not starting one)"
        wait_postgres
        return
    fi
    if ! command -v pg_ctlcluster >/dev/null || [ -z "$(pg_version)" ]; then
        if is_root && command -v apt-get >/dev/null; then
            apt_install postgresql
            pg_trust_loopback "$(pg_version)"
            # The package may have started the cluster already: make it read pg_hba.conf again.
            if listening "$PG_HOST" "$PG_PORT"; then
                pg_ctlcluster --skip-systemctl-redirect "$(pg_version)" main reload || true
            fi
        else
            die "PostgreSQL is not installed. Install it (Debian/Ubuntu: sudo apt-get install postgresql) and re-run, or set FEEDHANDLER_PG_DSN to a running server."
        fi
    fi
    listening "$PG_HOST" "$PG_PORT" || start_postgres
    wait_postgres
    say "PostgreSQL is up on $PG_HOST:$PG_PORT"
}

# Run SQL as an administrator: first over TCP as the DSN's user (trust auth on loopback here), then,
# as root on this machine, as the postgres OS user over the local socket (peer auth).
psql_admin() {
    local sql=$1
    if PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -tAc "$sql" 2>/dev/null; then
        return 0
    fi
    if is_root && is_loopback "$PG_HOST" && id postgres >/dev/null 2>&1; then
        runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$PG_PORT" -d postgres -tAc "$sql"
        return
    fi
    return 1
}

ensure_database() {
    command -v psql >/dev/null || die "psql is missing: install postgresql-client (Debian/Ubuntu: sudo apt-get install postgresql-client)"
    local exists
    exists=$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'") \
        || die "cannot run SQL on PostgreSQL at $PG_HOST:$PG_PORT as '$PG_USER' (psql -h $PG_HOST -p $PG_PORT -U $PG_USER postgres). Allow that user over loopback in pg_hba.conf (trust) or fix FEEDHANDLER_PG_DSN."
    if [ "$exists" != 1 ]; then
        say "creating database $PG_DB"
        # Another run may create it at the same moment: accept "already exists".
        psql_admin "CREATE DATABASE \"$PG_DB\"" >/dev/null 2>&1 \
            || [ "$(psql_admin "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" = 1 ] \
            || die "could not create database $PG_DB"
    fi
    # Connect exactly as the tests will.
    PGCONNECT_TIMEOUT=5 psql -X -q "$PG_DSN" -tAc 'SELECT 1' >/dev/null \
        || die "the tests cannot connect with FEEDHANDLER_PG_DSN='$PG_DSN' (see the psql error above)"
    say "database $PG_DB is ready"
}

ensure_redis
ensure_postgres
ensure_database
