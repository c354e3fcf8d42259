#!/usr/bin/env bash
# ensure-postgres.sh — make sure a Postgres that shardflow's tests and local
# stack can use answers on 127.0.0.1:5432 (`make postgres` runs this).
#
#   - If SHARDFLOW_DATABASE_URL or SHARDFLOW_TEST_DATABASE_URL is set, the
#     database is yours: only wait (60 s at most) until it answers.
#   - Otherwise, if 127.0.0.1:5432 answers, use it; else start the Debian
#     cluster, installing the postgresql package with apt-get first if there
#     is none; wait until it answers; then make sure user postgres can log in
#     over TCP without a password and that the database "test" exists.
#
# Every step prints one line. Safe to run again: it changes only what is missing.
set -euo pipefail

HOST=127.0.0.1
# Overridable only to test this script against a throwaway cluster.
PORT=${ENSURE_PG_PORT:-5432}
CLUSTER=${ENSURE_PG_CLUSTER:-main}
WAIT_SECONDS=60

say() { printf 'postgres: %s\n' "$*"; }
die() { printf 'postgres: ERROR: %s\n' "$*" >&2; exit 1; }

# as_root runs a command as root (directly, or with sudo when not root).
as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root to run: $* (re-run as root, or install and start Postgres yourself)"
	fi
}

# as_postgres runs a command as the postgres OS user (peer auth on the local socket).
as_postgres() {
	# From / so that psql does not complain about an unreadable working directory.
	if [ "$(id -un)" = postgres ]; then
		(cd / && "$@")
	elif command -v runuser >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
		(cd / && runuser -u postgres -- "$@")
	else
		(cd / && as_root su postgres -s /bin/sh -c "$(printf '%q ' "$@")")
	fi
}

# answers HOST PORT: true if something accepts TCP connections there.
answers() {
	local host=$1 port=$2
	if command -v pg_isready >/dev/null 2>&1; then
		# 0: accepting connections (also when the probe's user would be refused).
		pg_isready -q -h "$host" -p "$port" -t 2
	else
		timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
	fi
}

# wait_for HOST PORT WHAT: wait until HOST:PORT answers, at most WAIT_SECONDS.
wait_for() {
	local host=$1 port=$2 what=$3 i
	say "waiting up to ${WAIT_SECONDS}s for $what at $host:$port"
	for ((i = 0; i < WAIT_SECONDS * 2; i++)); do
		if answers "$host" "$port"; then
			say "$what at $host:$port answers"
			return 0
		fi
		sleep 0.5
	done
	die "$what at $host:$port did not answer within ${WAIT_SECONDS}s"
}

# host_port_of URL: print "host port" of a postgres:// URL or key=value DSN.
host_port_of() {
	local dsn=$1 host=127.0.0.1 port=5432 rest hp
	if [[ $dsn =~ ^postgres(ql)?:// ]]; then
		rest=${dsn#*://}
		rest=${rest%%[/?]*}     # authority
		hp=${rest##*@}          # drop user:password@
		if [[ $hp =~ ^\[([^]]*)\](:([0-9]+))?$ ]]; then
			host=${BASH_REMATCH[1]}
			port=${BASH_REMATCH[3]:-5432}
		elif [[ $hp =~ ^([^:,]*)(:([0-9]+))?$ ]]; then
			host=${BASH_REMATCH[1]:-127.0.0.1}
			port=${BASH_REMATCH[3]:-5432}
		else
			die "cannot read host and port from the database URL (several hosts?)"
		fi
	else
		[[ $dsn =~ (^|[[:space:]])host=([^[:space:]]+) ]] && host=${BASH_REMATCH[2]}
		[[ $dsn =~ (^|[[:space:]])port=([0-9]+) ]] && port=${BASH_REMATCH[2]}
	fi
	printf '%s %s\n' "$host" "$port"
}

# --- A database of your own: only wait for it. -------------------------------
if [ -n "${SHARDFLOW_DATABASE_URL:-}${SHARDFLOW_TEST_DATABASE_URL:-}" ]; then
	for var in SHARDFLOW_DATABASE_URL SHARDFLOW_TEST_DATABASE_URL; do
		[ -n "${!var:-}" ] || continue
		hp=$(host_port_of "${!var}")
		read -r h p <<<"$hp"
		say "$var is set: using that database, changing nothing"
		wait_for "$h" "$p" "the database of $var"
	done
	exit 0
fi

# --- The local Postgres on 127.0.0.1:5432. -----------------------------------
# cluster_version prints the newest Postgres version that has cluster $CLUSTER.
cluster_version() {
	local d
	for d in $(ls -d /etc/postgresql/*/"$CLUSTER" 2>/dev/null | sort -V -r); do
		d=${d%/*}
		printf '%s\n' "${d##*/}"
		return 0
	done
}

if answers "$HOST" "$PORT"; then
	say "a server answers at $HOST:$PORT: not starting one"
else
	if [ -z "$(cluster_version)" ]; then
		command -v apt-get >/dev/null 2>&1 ||
			die "no Postgres at $HOST:$PORT and no apt-get to install one: install and start Postgres 15+ yourself, or set SHARDFLOW_DATABASE_URL"
		say "no Postgres installed: installing Debian's postgresql package (apt-get update && apt-get install -y postgresql)"
		as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
		as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null
		[ -n "$(cluster_version)" ] || die "postgresql installed but no cluster $CLUSTER under /etc/postgresql"
	fi
	v=$(cluster_version)
	if answers "$HOST" "$PORT"; then
		say "the package's install started cluster $v/$CLUSTER"
	else
		say "starting the Debian cluster $v/$CLUSTER (pg_ctlcluster --skip-systemctl-redirect $v $CLUSTER start)"
		as_root pg_ctlcluster --skip-systemctl-redirect "$v" "$CLUSTER" start ||
			say "pg_ctlcluster reported a failure (already running?); waiting for the server anyway"
	fi
fi
wait_for "$HOST" "$PORT" "Postgres"

# psql is needed from here on (a server may answer without client tools installed).
if ! command -v psql >/dev/null 2>&1; then
	command -v apt-get >/dev/null 2>&1 || die "psql not found and no apt-get to install it"
	say "psql not found: installing Debian's postgresql-client package"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-client >/dev/null
fi

# PGPASSWORD and friends could make the check pass here and fail in the tests.
unset PGPASSWORD PGPASSFILE PGSERVICE PGUSER PGDATABASE PGHOST PGPORT
tcp_psql() { psql -w -X -q -h "$HOST" -p "$PORT" -U postgres "$@"; }

if tcp_psql -d postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
	say "user postgres logs in over TCP without a password"
else
	# A fresh Debian cluster asks TCP clients for a password (scram-sha-256).
	# Trust loopback connections instead; this is a development database.
	say "user postgres cannot log in over TCP without a password: trusting loopback connections"
	hba=$(as_postgres psql -X -p "$PORT" -tAc 'SHOW hba_file') ||
		die "cannot ask the server for its pg_hba.conf as OS user postgres"
	as_root cp "$hba" "$hba.shardflow.bak"
	as_root sh -c "{ printf '%s\n' '# added by shardflow scripts/ensure-postgres.sh: trust loopback (development only)' 'host all all 127.0.0.1/32 trust' 'host all all ::1/128 trust'; cat '$hba.shardflow.bak'; } > '$hba'"
	say "changed $hba: added 'host all all 127.0.0.1/32 trust' and 'host all all ::1/128 trust' at the top (backup: $hba.shardflow.bak)"
	as_postgres psql -X -p "$PORT" -q -tAc 'SELECT pg_reload_conf()' >/dev/null
	say "reloaded the server configuration"
	tcp_psql -d postgres -tAc 'SELECT 1' >/dev/null ||
		die "user postgres still cannot log in over TCP at $HOST:$PORT; see $hba"
fi

if [ "$(tcp_psql -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'test'")" = 1 ]; then
	say "database test exists"
else
	say "creating database test"
	tcp_psql -d postgres -c 'CREATE DATABASE test' >/dev/null
fi
say "ready: postgres://postgres@$HOST:$PORT/postgres (tests use database test)"
