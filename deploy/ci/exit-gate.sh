#!/usr/bin/env bash
# The exit gate's local harness (CI): a test CA and leaf certificates made with openssl, one
# HTTPS stand-in set (ServiceNow, Slack, LLM) per deployment, and four deployments, each
# `steward serve` over TLS with its own master key: staging-us and staging-eu on their own
# SQLite files; production-us and production-eu on PostgreSQL, as production runs, each on a
# database of its own in one private cluster (initdb in the harness's temporary folder, a free
# loopback port, trust on loopback only; never the machine's shared server), with the roles of
# persistence/sql/postgres_roles.sql and the backup role of docs/operations/backup.md, and an
# empty scratch database per region for the restore drill. Then deploy/exit-gate/run.sh
# against staging (both regions) and against production (both regions).
#
#   bash deploy/ci/exit-gate.sh                       # runs the release gate once, then both
#   bash deploy/ci/exit-gate.sh --gate-log FILE       # takes the gate's result from its log
#   bash deploy/ci/exit-gate.sh --skip-gate           # staging only, loudly not a release result
#
# The release gate runs at most once: with --gate-log its log is judged for both
# environments; without, the harness runs it first (outside the watchdog's time) and both
# environments judge that log.
# Every process started is stopped by pid on exit, failure included, and the PostgreSQL
# cluster with pg_ctl stop; the whole harness is bounded by a watchdog (EXIT_GATE_TIMEOUT,
# default 600 s).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD

gate_args=()
skip_gate=0
case "${1:-}" in
"") ;;
--gate-log)
    [ -n "${2:-}" ] || { echo "--gate-log FILE" >&2; exit 2; }
    gate_args=(--gate-log "$(cd "$(dirname "$2")" && pwd)/$(basename "$2")")
    [ -n "${3:-}" ] && [ "$3" = --gate-status ] && gate_args+=(--gate-status "${4:-}")
    ;;
--skip-gate) skip_gate=1 ;;
*) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

steward="${STEWARD_BIN:-$repo/target/debug/steward}"
[ -x "$steward" ] || { echo "build first: cargo build -p steward-runtime --bin steward" >&2; exit 2; }
for tool in openssl jq python3 curl promtool timeout; do
    command -v "$tool" >/dev/null || { echo "exit-gate harness: $tool is required" >&2; exit 2; }
done

# The PostgreSQL server tools (initdb, pg_ctl, psql, pg_dump, pg_restore of one major
# version), for the production deployments: the newest /usr/lib/postgresql/N/bin, else the
# folder initdb on the PATH resolves to.
pg_bin=""
if [ "$skip_gate" -eq 0 ]; then
    for d in $(ls -d /usr/lib/postgresql/[0-9]*/bin 2>/dev/null | sort -t/ -k4 -n); do
        [ -x "$d/initdb" ] && pg_bin=$d
    done
    if [ -z "$pg_bin" ] && command -v initdb >/dev/null; then
        pg_bin=$(dirname "$(readlink -f "$(command -v initdb)")")
    fi
    for tool in initdb pg_ctl psql pg_dump pg_restore; do
        [ -n "$pg_bin" ] && [ -x "$pg_bin/$tool" ] || {
            echo "exit-gate harness: the production deployments run on PostgreSQL: $tool is required (Debian: postgresql)" >&2
            exit 2
        }
    done
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 && command -v runuser >/dev/null || {
            echo "exit-gate harness: as root, the PostgreSQL server runs as the postgres OS user (runuser -u postgres)" >&2
            exit 2
        }
    fi
fi
# Nothing of the caller's own PostgreSQL settings reaches a client (PGHOST, PGPASSWORD, ...).
for var in $(compgen -e | grep '^PG'); do unset "$var"; done

work=$(mktemp -d)
pids=()
watchdog=""
pg_dir=""
started=$(date +%s)

# A PostgreSQL server tool, bounded in time, run in the cluster's folder as the postgres OS
# user when the harness runs as root (initdb and postgres refuse root).
pg_as() {
    local as=()
    [ "$(id -u)" -eq 0 ] && as=(runuser -u postgres --)
    (cd "$pg_dir" && timeout 60 "${as[@]}" "$@")
}

# Stops the private cluster: pg_ctl stop (fast: sessions are ended), then the postmaster by
# its pid if it is still there.
pg_stop() {
    [ -n "$pg_dir" ] && [ -f "$pg_dir/data/postmaster.pid" ] || return 0
    local postmaster
    postmaster=$(head -n 1 "$pg_dir/data/postmaster.pid")
    pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast -w -t 20 stop >>"$pg_dir/pg_ctl.log" 2>&1 ||
        echo "exit-gate harness: pg_ctl stop failed; stopping the postmaster ($postmaster) by pid" >&2
    if [ -n "$postmaster" ] && kill -0 "$postmaster" 2>/dev/null; then
        kill -9 "$postmaster" 2>/dev/null
    fi
}

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    for pid in "${pids[@]}"; do
        # A process that ignores SIGTERM for 5 s is killed.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    pg_stop
    [ -n "$watchdog" ] && kill "$watchdog" 2>/dev/null && wait "$watchdog" 2>/dev/null
    if [ "$code" -ne 0 ]; then
        echo "exit-gate harness FAILED (exit $code); server logs:"
        for log in "$work"/*/serve.log "$work"/*/standins.log "$work"/pg/postgres.log "$work"/pg/pg_ctl.log; do
            [ -f "$log" ] || continue
            echo "--- $log (last 15 lines)"
            tail -n 15 "$log"
        done
    fi
    rm -rf "$work"
    echo "exit-gate harness took $(($(date +%s) - started))s"
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

record="$repo/target/exit-gate/ci"
rm -rf "$record"
mkdir -p "$record"

# The release gate, once, before anything is started and outside the watchdog's time (it
# takes minutes and installs its tools on first use); both environments judge its log.
if [ "$skip_gate" -eq 1 ]; then
    gate_args=(--skip-gate)
elif [ "${#gate_args[@]}" -eq 0 ]; then
    echo "::: the release gate (bash deploy/security/gate.sh), log in $record/gate.log"
    timeout "${GATE_TIMEOUT:-3600}" bash deploy/security/gate.sh >"$record/gate.log" 2>&1
    echo "$?" >"$record/gate.status"
    tail -n 12 "$record/gate.log"
    gate_args=(--gate-log "$record/gate.log" --gate-status "$(cat "$record/gate.status")")
fi

# The watchdog ends the harness (and, through the trap, every process) when it runs too long.
harness_pid=$$
(
    # Stopped by the cleanup, it stops its sleep too: nothing is left behind.
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "${EXIT_GATE_TIMEOUT:-600}" &
    sleeper=$!
    wait "$sleeper"
    echo "exit-gate harness: timed out after ${EXIT_GATE_TIMEOUT:-600}s" >&2
    kill -TERM "$harness_pid"
) &
watchdog=$!

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the test CA and its leaves ---------------------------------------------------------

ca="$work/ca"
mkdir -p "$ca"
chmod 700 "$ca"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=Steward exit gate test CA" -keyout "$ca/ca.key" -out "$ca/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null || { echo "openssl could not make the test CA" >&2; exit 1; }
printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1,DNS:localhost' >"$ca/leaf.ext"

# leaf DIR NAME: DIR/tls.pem and DIR/tls.key, issued by the test CA for 127.0.0.1.
leaf() {
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
        -keyout "$1/tls.key" -out "$1/tls.csr" 2>/dev/null &&
        openssl x509 -req -in "$1/tls.csr" -CA "$ca/ca.pem" -CAkey "$ca/ca.key" \
            -CAcreateserial -days 30 -extfile "$ca/leaf.ext" -out "$1/tls.pem" 2>/dev/null &&
        chmod 600 "$1/tls.key" || { echo "openssl could not issue a leaf for $2" >&2; exit 1; }
}

wait_ready() {
    local url=$1 pid=$2 log=$3
    for _ in $(seq 300); do
        curl -s --max-time 2 --cacert "$ca/ca.pem" -o /dev/null "$url/readyz" && return 0
        kill -0 "$pid" 2>/dev/null || { echo "the server of $url exited:" >&2; tail -n 20 "$log" >&2; exit 1; }
        sleep 0.1
    done
    echo "$url did not become ready in 30 s" >&2
    exit 1
}

# --- the private PostgreSQL cluster of the production deployments -------------------------

pg_port=""
psql_admin() {
    "$pg_bin/psql" -h "$pg_dir" -p "$pg_port" -U postgres -X -q -v ON_ERROR_STOP=1 -d postgres "$@"
}

# One cluster in $work/pg, listening on 127.0.0.1 and its own socket folder only, trust on
# both (no other address is listened on or admitted); the roles of postgres_roles.sql and the
# backup role of docs/operations/backup.md.
pg_cluster() {
    pg_dir="$work/pg"
    mkdir -p "$pg_dir"
    if [ "$(id -u)" -eq 0 ]; then
        # The postgres OS user may pass through the harness's folder (not list it) to its own.
        chmod 711 "$work"
        chown postgres "$pg_dir"
    fi
    chmod 700 "$pg_dir"
    pg_port=$(free_port)
    pg_as "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 --no-sync --auth=trust \
        >"$pg_dir/initdb.log" 2>&1 || { echo "initdb failed:" >&2; tail "$pg_dir/initdb.log" >&2; exit 1; }
    printf '%s\n' '# The exit gate harness: trust, on the socket folder and loopback only.' \
        'local all all trust' 'host all all 127.0.0.1/32 trust' |
        pg_as tee "$pg_dir/data/pg_hba.conf" >/dev/null
    pg_as "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/postgres.log" -w -t 30 \
        -o "-c listen_addresses=127.0.0.1 -p $pg_port -c unix_socket_directories=$pg_dir -c fsync=off" \
        start >"$pg_dir/pg_ctl.log" 2>&1 ||
        { echo "pg_ctl start failed:" >&2; tail "$pg_dir/pg_ctl.log" "$pg_dir/postgres.log" >&2; exit 1; }
    psql_admin -f "$repo/persistence/sql/postgres_roles.sql" &&
        psql_admin -c 'CREATE ROLE steward_backup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE BYPASSRLS' \
            -c 'GRANT pg_read_all_data TO steward_backup' ||
        { echo "the PostgreSQL roles could not be made" >&2; exit 1; }
    echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') at 127.0.0.1:$pg_port" \
        "(postmaster $(head -n 1 "$pg_dir/data/postmaster.pid"))"
}

# pg_databases DIR NAME: the deployment's database and the drill's empty scratch database,
# both owned by steward_owner, and their URLs as secret files in DIR (no passwords: trust).
pg_databases() {
    local dir=$1 name=$2
    psql_admin -c "CREATE DATABASE $name OWNER steward_owner" \
        -c "CREATE DATABASE ${name}_drill OWNER steward_owner" ||
        { echo "the databases of $name could not be made" >&2; exit 1; }
    url() { echo "postgres://$1@127.0.0.1:$pg_port/$2"; }
    (
        umask 077
        url steward_service "$name" >"$dir/postgres_url"
        url steward_owner "$name" >"$dir/postgres_owner_url"
        url steward_backup "$name" >"$dir/postgres_backup_url"
        url steward_owner "${name}_drill" >"$dir/drill_owner_url"
        url steward_backup "${name}_drill" >"$dir/drill_backup_url"
    )
}

# --- one deployment: its stand-ins and its steward serve ----------------------------------

# deployment ENV REGION: everything under $work/ENV-REGION; the URL in $work/ENV-REGION/url.
deployment() {
    local env=$1 region=$2 dir="$work/$1-$2"
    mkdir -p "$dir/setup"
    chmod 700 "$dir"

    # The stand-ins of this deployment alone, over HTTPS; the Slack stand-in trusts the test CA
    # when it delivers a click to Steward.
    mkdir -p "$dir/standins"
    leaf "$dir/standins" "stand-ins $env-$region"
    "$steward" standins --servicenow 127.0.0.1:0 --slack 127.0.0.1:0 --llm 127.0.0.1:0 \
        --tls-cert "$dir/standins/tls.pem" --tls-key "$dir/standins/tls.key" \
        --ca-file "$ca/ca.pem" >"$dir/setup/standins.out" 2>"$dir/standins.log" &
    pids+=($!)
    local line=""
    for _ in $(seq 100); do
        line=$(head -n 1 "$dir/setup/standins.out" 2>/dev/null)
        [ -n "$line" ] && break
        sleep 0.1
    done
    [ -n "$line" ] || { echo "the stand-ins of $env-$region did not start" >&2; tail "$dir/standins.log" >&2; exit 1; }
    echo "$line" >"$dir/setup/standins.json"
    local sn slack llm
    sn=$(jq -r .servicenow <<<"$line")
    slack=$(jq -r .slack_api <<<"$line")
    llm=$(jq -r .llm <<<"$line")

    # The tenant's connector bodies, pointing at these stand-ins with their demo credentials.
    jq -n --arg u "$sn" '{instance_url: $u, grant: "password",
        client_id: "2c1f6b9e4d8a4f0e9b7c3a5d6e8f1a2b", username: "steward.integration",
        client_secret: "Qm7#demo-client-secret-4f8a", password: "demo-Integration-P4ss!"}' \
        >"$dir/setup/servicenow.json"
    jq -n --arg u "$slack" '{api_base: $u, approval_channel: "C0DEMOAPPR1",
        approvers: ["U0DEMOANA01"],
        bot_token: "xoxb-1234567890-9876543210987-StewardDemoBotToken42",
        signing_secret: "5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e"}' >"$dir/setup/slack.json"
    jq -n --arg u "$llm" '{provider: "openai", base_url: $u, model: "gpt-4o-mini",
        api_key: "sk-proj-steward-demo-0000000000000000000000000000"}' >"$dir/setup/llm.json"

    # steward serve: the environment's profile, TLS with a leaf of the test CA, a master key of
    # its own, the test CA trusted outbound, and loopback listed explicitly as the region's
    # only egress hosts (no profile but dev allows loopback by default).
    leaf "$dir" "steward $env-$region"
    (umask 077 && openssl rand -hex 32 >"$dir/master.key" && openssl rand -hex 24 >"$dir/ops_token")
    local port
    port=$(free_port)
    # Staging on its own SQLite file; production on its PostgreSQL database: the service
    # pool as steward_service, migrations as steward_owner, `steward backup` as
    # steward_backup; and the drill's config, naming the empty scratch database.
    local store="database = \"$dir/steward.db\"" backup=""
    if [ "$env" = production ]; then
        pg_databases "$dir" "steward_${env}_$region"
        store='postgres_url = { file = "postgres_url" }
postgres_migrate_url = { file = "postgres_owner_url" }'
        backup="
[backup]
postgres_url = { file = \"postgres_backup_url\" }
pg_bin_dir = \"$pg_bin\""
        cat >"$dir/drill.toml" <<EOF
# The restore drill of $env-$region: an empty scratch database that serves nothing.
postgres_migrate_url = { file = "drill_owner_url" }

[backup]
postgres_url = { file = "drill_backup_url" }
pg_bin_dir = "$pg_bin"
EOF
    fi
    cat >"$dir/steward.toml" <<EOF
profile = "$env"
region = "$region"
listen = "127.0.0.1:$port"
$store
master_key = { file = "master.key" }
ops_token = { file = "ops_token" }

[tls]
cert_file = "tls.pem"
key_file = "tls.key"

[http]
outbound_ca_file = "$ca/ca.pem"

[metrics]
enabled = true

[egress.$region]
llm = ["127.0.0.1"]
servicenow = ["127.0.0.1"]
slack = ["127.0.0.1"]
$backup
EOF
    (cd "$dir" && exec "$steward" serve --config "$dir/steward.toml") >/dev/null 2>"$dir/serve.log" &
    local pid=$!
    pids+=("$pid")
    echo "https://127.0.0.1:$port" >"$dir/url"
    wait_ready "https://127.0.0.1:$port" "$pid" "$dir/serve.log"
    local on="SQLite $dir/steward.db"
    [ "$env" = production ] && on="PostgreSQL steward_${env}_$region (drill: steward_${env}_${region}_drill)"
    echo "$env-$region: steward at https://127.0.0.1:$port on $on, stand-ins $sn $slack $llm"
}

environments=(staging production)
[ "$skip_gate" -eq 1 ] && environments=(staging)
[ "$skip_gate" -eq 0 ] && pg_cluster
for env in "${environments[@]}"; do
    deployment "$env" us
    deployment "$env" eu
done

# --- the exit gate, once per environment --------------------------------------------------

for env in "${environments[@]}"; do
    args=(--env "$env" --ca-file "$ca/ca.pem" --out "$record/$env" --test-identity
        --sign-off 'item=ops.oncall,who=ci@example.com,role=exit gate harness')
    for region in us eu; do
        dir="$work/$env-$region"
        args+=(--config "$dir/steward.toml" --url "$(cat "$dir/url")" --setup "$dir/setup")
        [ -f "$dir/drill.toml" ] && args+=(--drill-config "$region=$dir/drill.toml")
    done
    # In the background, so that the watchdog's signal is handled at once (a trap waits for a
    # foreground command); stopped by pid like the servers.
    STEWARD_BIN="$steward" bash deploy/exit-gate/run.sh "${args[@]}" "${gate_args[@]}" &
    gate_pid=$!
    pids+=("$gate_pid")
    wait "$gate_pid" || exit 1
done
echo "exit-gate harness passed: ${environments[*]}"
