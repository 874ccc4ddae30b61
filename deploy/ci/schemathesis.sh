#!/usr/bin/env bash
# Schemathesis against a live Steward: `steward serve` (profile dev, SQLite in a temporary
# folder) with the built-in stand-ins, a tenant onboarded through the API, then Schemathesis
# generating requests from GET /openapi.json and checking that no answer is a 5xx, that every
# status is documented and that every JSON answer holds to its schema. Bounded by a fixed
# number of examples per operation and a time limit per pass. Everything listens on 127.0.0.1,
# and Steward's own outbound calls to anything but loopback go to a closed loopback port (the
# proxy variables below), so a generated connector URL reaches nothing outside this machine.
#
# Environment: STEWARD_BIN (default target/debug/steward, built if missing),
# SCHEMATHESIS_MAX_EXAMPLES (default 20), SCHEMATHESIS_MAX_TIME (seconds for all three passes,
# default 100), SCHEMATHESIS_SEED (default 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

version=4.32.5
venv=$root/target/schemathesis-venv
bin=${STEWARD_BIN:-$root/target/debug/steward}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-20}
max_time=${SCHEMATHESIS_MAX_TIME:-100}
seed=${SCHEMATHESIS_SEED:-1}
ops_token=schemathesis-ops-token-0123456789abcdef
tenant=us-fuzz

if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==$version"
fi
"$venv/bin/schemathesis" --version
if [ ! -x "$bin" ]; then
    cargo build --locked -p steward-runtime --bin steward
fi

mkdir -p "$root/target"
work=$(mktemp -d -p "$root/target")
pids=()
cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "--- steward log (last 40 lines)"
        tail -n 40 "$work/steward.log" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT

json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The stand-ins, on free loopback ports; their first line of output names their URLs.
STEWARD_LOG=warn "$bin" standins --servicenow 127.0.0.1:0 --slack 127.0.0.1:0 --llm 127.0.0.1:0 \
    >"$work/standins.out" 2>"$work/standins.log" &
pids+=($!)
for _ in $(seq 100); do
    [ -s "$work/standins.out" ] && break
    sleep 0.1
done
urls=$(head -n 1 "$work/standins.out")
servicenow=$(json '["servicenow"]' <<<"$urls")
slack=$(json '["slack_api"]' <<<"$urls")
llm=$(json '["llm"]' <<<"$urls")

port=$(free_port)
base=http://127.0.0.1:$port
printf '%s' "$ops_token" >"$work/ops_token"
cat >"$work/steward.toml" <<EOF
profile = "dev"
listen = "127.0.0.1:$port"
database = "$work/steward.db"
ops_token = { file = "ops_token" }

# The rate limits would answer most generated requests with 429 before any handler ran.
[http]
rate_limit = false
EOF

no_proxy_hosts=127.0.0.1,localhost
env STEWARD_LOG=warn \
    HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9 ALL_PROXY=http://127.0.0.1:9 \
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 all_proxy=http://127.0.0.1:9 \
    NO_PROXY=$no_proxy_hosts no_proxy=$no_proxy_hosts \
    "$bin" serve --config "$work/steward.toml" 2>"$work/steward.log" &
pids+=($!)
for _ in $(seq 150); do
    curl -sf --noproxy '*' "$base/readyz" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -sf --noproxy '*' "$base/readyz" >/dev/null

call() { # method path token [body]
    curl -sS --noproxy '*' --fail-with-body -X "$1" "$base$2" \
        -H "authorization: Bearer $3" -H 'content-type: application/json' ${4:+--data "$4"}
}

# Onboard a tenant through the API and point it at the stand-ins.
admin=$(call POST /v1/tenants "$ops_token" "{\"id\": \"$tenant\", \"name\": \"Fuzz\"}" |
    json '["admin_token"]["value"]')
call PUT /v1/tenant/connectors/servicenow "$admin" "{\"instance_url\": \"$servicenow\",
    \"grant\": \"password\", \"client_id\": \"2c1f6b9e4d8a4f0e9b7c3a5d6e8f1a2b\",
    \"username\": \"steward.integration\", \"client_secret\": \"Qm7#demo-client-secret-4f8a\",
    \"password\": \"demo-Integration-P4ss!\"}" >/dev/null
call PUT /v1/tenant/connectors/slack "$admin" "{\"api_base\": \"$slack\",
    \"approval_channel\": \"C0DEMOAPPR1\", \"approvers\": [\"U0DEMOANA01\"],
    \"bot_token\": \"xoxb-1234567890-9876543210987-StewardDemoBotToken42\",
    \"signing_secret\": \"5f3a9c1e7b2d4f6a8c0e1b3d5f7a9c2e\"}" >/dev/null
call PUT /v1/tenant/connectors/llm "$admin" "{\"provider\": \"openai\", \"model\": \"gpt-4o-mini\",
    \"base_url\": \"$llm\", \"api_key\": \"sk-proj-steward-demo-0000000000000000000000000000\"}" \
    >/dev/null
call POST /v1/tenant/sources "$admin" \
    '{"name": "servicenow", "sys_id_pointers": ["/sys_id"], "number_pointers": ["/number"]}' >/dev/null
# One real run, so listings and lookups have something to show.
number=$(curl -sS --noproxy '*' -X POST "$servicenow/_standin/incidents" \
    -d '{"short_description": "Disk full on db-7"}' | json '["number"]')
call POST /v1/runs "$admin" "{\"incident\": {\"number\": \"$number\"}}" >/dev/null
echo "steward at $base with tenant $tenant; schemathesis: $max_examples examples per operation," \
    "${max_time}s in all, seed $seed"

# The signed intake paths name the onboarded tenant, so generated deliveries and callbacks reach
# signature verification instead of stopping at an unknown tenant.
cat >"$work/schemathesis.toml" <<EOF
[[operations]]
include-operation-id = "receive"
parameters = { "path.tenant" = "$tenant", "path.source" = "servicenow" }

[[operations]]
include-operation-id = "interaction"
parameters = { "path.tenant" = "$tenant" }
EOF

# One worker: Schemathesis's workers are threads, and Hypothesis parses source with `ast` while
# describing strategies; on Python 3.11 two threads doing that at once can fail with "AST
# constructor recursion depth mismatch", an error of the interpreter, not of Steward.
run_schemathesis() { # token, seconds, then filters
    local token=$1 seconds=$2
    shift 2
    # From the work folder, which takes Schemathesis's own cache and is removed afterwards.
    (cd "$work" && "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$base/openapi.json" \
        --checks not_a_server_error,status_code_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$max_examples" --max-time "$seconds" --seed "$seed" \
        --workers 1 --request-timeout 10 --generation-database none --no-color \
        --header "Authorization: Bearer $token" "$@")
}

# Schemathesis learns ids from answers (GET /v1/tenant/tokens lists the admin token itself), so
# revoking tokens runs in a pass of its own after the rest of the tenant's API; the operator's
# pass comes last, as offboarding ends the tenant.
failed=0
echo "::: the tenant's API, with its admin token"
run_schemathesis "$admin" $((max_time / 2)) --exclude-tag ops --exclude-tag platform \
    --exclude-operation-id revoke_token || failed=1
echo "::: revoking tokens, with the admin token"
run_schemathesis "$admin" $((max_time / 10 + 1)) --include-operation-id revoke_token || failed=1
echo "::: the operator's API, with the operator token"
run_schemathesis "$ops_token" $((max_time * 2 / 5)) --include-tag ops --include-tag platform ||
    failed=1
exit "$failed"
