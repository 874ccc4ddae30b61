#!/usr/bin/env bash
# The exit gate: the whole launch demonstration against one environment, in one command.
#
#   bash deploy/exit-gate/run.sh --env staging|production \
#       --config us.toml --url https://steward-us.example.com --setup us-setup/ \
#       --config eu.toml --url https://steward-eu.example.com --setup eu-setup/ \
#       (--gate run | --gate-log gate.log [--gate-status 0] | --skip-gate) \
#       --sign-off 'item=ops.oncall,who=ana@example.com,role=SRE lead' \
#       [--drill-config us=us-drill.toml --drill-config eu=eu-drill.toml] \
#       [--ca-file ca.pem] [--signing-key checklist.key --public-key HEX] [--out DIR]
#
# Per deployment (one per region, in --config/--url/--setup order) it onboards a new tenant
# from nothing, runs the flagship scenario through both branches (approve: ServiceNow written
# exactly once; reject: not written), verifies the tenant's audit chain, exports and verifies
# its evidence, and runs a backup+restore drill (SQLite: to a scratch file; PostgreSQL: into
# the empty scratch database its region's --drill-config names); then it judges the release
# gate and makes the signed go/no-go checklist with the new tenants as smoke tenants. Every
# part prints its result and time; the first part that fails stops the gate, which exits 1
# naming it. docs/operations/exit-gate.md describes the setup folders and each part.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

env_name=""
configs=()
urls=()
setups=()
gate_mode=""
gate_log=""
gate_status=""
gate_max_age_hours=24
ca_file=""
ops_token_file=""
out=""
signing_key=""
public_key=""
restore_report=""
declare -A drill_configs=()
sign_offs=()
test_identity=0
alerts="$repo/deploy/prometheus/alerts.yml"
approval_timeout=900
step_timeout=120
steward="${STEWARD_BIN:-$repo/target/debug/steward}"

while [ $# -gt 0 ]; do
    case "$1" in
    --env) env_name=${2:-}; shift 2 ;;
    --config) configs+=("${2:-}"); shift 2 ;;
    --url) urls+=("${2:-}"); shift 2 ;;
    --setup) setups+=("${2:-}"); shift 2 ;;
    --gate)
        [ "${2:-}" = run ] || { echo "--gate takes only 'run'" >&2; exit 2; }
        gate_mode=run; shift 2 ;;
    --gate-log) gate_mode=log; gate_log=${2:-}; shift 2 ;;
    --gate-status) gate_status=${2:-}; shift 2 ;;
    --gate-max-age-hours) gate_max_age_hours=${2:-}; shift 2 ;;
    --skip-gate) gate_mode=skip; shift ;;
    --ca-file) ca_file=${2:-}; shift 2 ;;
    --ops-token-file) ops_token_file=${2:-}; shift 2 ;;
    --out) out=${2:-}; shift 2 ;;
    --signing-key) signing_key=${2:-}; shift 2 ;;
    --public-key) public_key=${2:-}; shift 2 ;;
    --restore-report) restore_report=${2:-}; shift 2 ;;
    --drill-config)
        case "${2:-}" in
        us=?* | eu=?*) drill_configs[${2%%=*}]=${2#*=} ;;
        *) echo "--drill-config takes REGION=FILE (us or eu)" >&2; exit 2 ;;
        esac
        shift 2 ;;
    --sign-off) sign_offs+=("${2:-}"); shift 2 ;;
    --test-identity) test_identity=1; shift ;;
    --alerts) alerts=${2:-}; shift 2 ;;
    --approval-timeout) approval_timeout=${2:-}; shift 2 ;;
    --steward) steward=${2:-}; shift 2 ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
    esac
done

die() {
    echo "exit gate: $*" >&2
    exit 2
}

case "$env_name" in staging | production) ;; *) die "--env must be staging or production" ;; esac
[ "${#configs[@]}" -gt 0 ] || die "give each deployment as --config FILE --url URL --setup DIR"
[ "${#configs[@]}" -eq "${#urls[@]}" ] && [ "${#configs[@]}" -eq "${#setups[@]}" ] ||
    die "--config, --url and --setup must be given the same number of times, in order"
[ -n "$gate_mode" ] || die "say how the release gate is judged: --gate run, --gate-log FILE or --skip-gate"
if [ "$gate_mode" = skip ] && [ "$env_name" = production ]; then
    die "--skip-gate is refused for production: a production exit gate needs the release gate"
fi
[ "${#sign_offs[@]}" -gt 0 ] || die "give the ops.oncall sign-off: --sign-off 'item=ops.oncall,who=…,role=…'"
[ -x "$steward" ] || die "no steward binary at $steward (cargo build -p steward-runtime --bin steward, or --steward PATH)"
for tool in jq python3 curl; do
    command -v "$tool" >/dev/null || die "$tool is required"
done
command -v promtool >/dev/null || die "promtool is required by the checklist's ops.alerts item (Debian: prometheus)"

out=${out:-$repo/target/exit-gate/$env_name-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out" || die "cannot create $out"
out=$(cd "$out" && pwd)
if [ -n "$ca_file" ]; then
    ca_file=$(cd "$(dirname "$ca_file")" && pwd)/$(basename "$ca_file")
    # Every steward client command trusts this CA; curl is given it too.
    export STEWARD_CA_FILE="$ca_file"
fi
curl_tls=()
[ -n "$ca_file" ] && curl_tls=(--cacert "$ca_file")

declare -a summary=()
failed_part=""
gate_start=$(date +%s)

finish() {
    echo
    echo "exit gate summary ($env_name)"
    for line in "${summary[@]}"; do echo "  $line"; done
    echo "  total                        $(($(date +%s) - gate_start))s"
    echo "  record: $out"
    if [ -n "$failed_part" ]; then
        echo "EXIT GATE FAILED: part $failed_part"
        exit 1
    fi
    if [ "$gate_mode" = skip ]; then
        echo "!!! exit gate passed WITHOUT the release gate (--skip-gate): not a release result"
        exit 0
    fi
    echo "exit gate passed ($env_name)"
    exit 0
}

# Runs one part; a failure ends the gate, naming the part.
part() {
    local name=$1
    shift
    local start
    start=$(date +%s)
    echo
    echo "::: part $name"
    if "$@"; then
        summary+=("$(printf 'pass  %-26s %4ss' "$name" "$(($(date +%s) - start))")")
    else
        summary+=("$(printf 'FAIL  %-26s %4ss' "$name" "$(($(date +%s) - start))")")
        failed_part=$name
        finish
    fi
}

fail() {
    echo "FAILED: $*" >&2
    return 1
}

# A steward command, bounded in time, its output kept in the record.
st() {
    timeout "$step_timeout" "$steward" "$@"
}

# --- the release gate ---------------------------------------------------------------------

release_gate() {
    case "$gate_mode" in
    skip)
        echo "!!! the release gate is skipped (--skip-gate)"
        return 0
        ;;
    run)
        gate_log="$out/gate.log"
        echo "running bash deploy/security/gate.sh (minutes; installs cargo-deny/cargo-audit once)"
        (cd "$repo" && bash deploy/security/gate.sh) >"$gate_log" 2>&1
        gate_status=$?
        echo "$gate_status" >"$out/gate.status"
        ;;
    log)
        [ -f "$gate_log" ] || fail "the gate log $gate_log does not exist" || return 1
        if [ -z "$gate_status" ] && [ -f "$gate_log.status" ]; then
            gate_status=$(cat "$gate_log.status")
        fi
        cp "$gate_log" "$out/gate.log"
        ;;
    esac
    tail -n 12 "$gate_log"
    if [ -n "$gate_status" ] && [ "$gate_status" != 0 ]; then
        fail "the release gate exited $gate_status (log: $gate_log)"
        return 1
    fi
    # The gate's own verdict is its last line; "passed WITHOUT the image gate" is not a pass.
    local verdict
    verdict=$(grep -v '^[[:space:]]*$' "$gate_log" | tail -n 1)
    [ "$verdict" = "release gate passed" ] ||
        fail "the release gate log does not end in 'release gate passed' (it ends: $verdict)" ||
        return 1
    # How old the gate's result is: its first line names the time it ran.
    local started age
    started=$(grep -m1 -o 'Steward release security gate, [0-9T:Z-]*' "$gate_log" | awk '{print $NF}')
    [ -n "$started" ] || fail "the gate log does not say when the gate ran" || return 1
    age=$((($(date -u +%s) - $(date -u -d "$started" +%s)) / 3600))
    [ "$age" -le "$gate_max_age_hours" ] ||
        fail "the release gate ran $age hours ago (at $started); at most $gate_max_age_hours" || return 1
    echo "release gate passed at $started"
}

# --- one deployment -----------------------------------------------------------------------

# The region, the operator token file and the backend of a config, from the config itself.
read_config() {
    python3 - "$1" <<'EOF'
import os, sys, tomllib
path = sys.argv[1]
with open(path, "rb") as f:
    config = tomllib.load(f)
region = os.environ.get("STEWARD_REGION") or config.get("region", "us")
token = config.get("ops_token") or {}
base = os.path.dirname(os.path.abspath(path))
if "file" in token:
    token_file = os.path.join(base, token["file"])
else:
    token_file = ""
postgres = ("postgres_url" in config or "STEWARD_POSTGRES_URL" in os.environ
            or "STEWARD_POSTGRES_URL_FILE" in os.environ)
print(region)
print(token_file)
print("postgres" if postgres else "sqlite")
EOF
}

admin() { cat "$d_dir/admin_token"; }

api_get() {
    curl -sS --fail-with-body --max-time 30 "${curl_tls[@]}" \
        -H "authorization: Bearer $(admin)" "$d_url/$1"
}

preflight() {
    [ -f "$d_config" ] || fail "no config file $d_config" || return 1
    [ -f "$d_setup/servicenow.json" ] && [ -f "$d_setup/slack.json" ] && [ -f "$d_setup/llm.json" ] ||
        fail "$d_setup must hold servicenow.json, slack.json and llm.json" || return 1
    [ -f "$d_ops_token" ] || fail "no operator token file for $d_config (ops_token = { file = … } or --ops-token-file)" || return 1
    echo "deployment $d_region: $d_url ($d_config)"
    curl -sS --fail --max-time 10 "${curl_tls[@]}" -o /dev/null "$d_url/readyz" ||
        fail "$d_url/readyz does not answer 200" || return 1
    if [ -f "$d_setup/standins.json" ]; then
        echo "stand-ins: $(cat "$d_setup/standins.json")"
    else
        [ -f "$d_setup/incidents.json" ] ||
            fail "without standins.json, $d_setup/incidents.json must name the approve and reject incidents" ||
            return 1
        echo "real services: a person approves and rejects in Slack; the gate waits"
    fi
}

onboard() {
    local server=(--url "$d_url")
    echo "tenant $d_tenant"
    st tenants create "${server[@]}" --token-file "$d_ops_token" --id "$d_tenant" \
        --name "Exit gate $env_name $d_region" >"$d_dir/create.txt" || {
        cat "$d_dir/create.txt"
        fail "steward tenants create"
        return 1
    }
    (umask 077 && awk '/^admin token:/ {print $3}' "$d_dir/create.txt" >"$d_dir/admin_token")
    [ -s "$d_dir/admin_token" ] || fail "tenants create printed no admin token" || return 1
    server+=(--token-file "$d_dir/admin_token")
    local kind
    for kind in servicenow slack llm; do
        st tenants connector "$kind" "${server[@]}" --file "$d_setup/$kind.json" ||
            fail "steward tenants connector $kind" || return 1
    done
    local policy="$d_setup/policy.cedar"
    [ -f "$policy" ] || policy="$here/policy.cedar"
    st tenants policy "${server[@]}" --file "$policy" || fail "steward tenants policy" || return 1
    st tenants source "${server[@]}" --name servicenow --sys-id-pointer /incident/sys_id \
        --number-pointer /incident/number >"$d_dir/source.txt" || {
        cat "$d_dir/source.txt"
        fail "steward tenants source"
        return 1
    }
    grep -v '^secret:' "$d_dir/source.txt"
    (umask 077 && awk '/^secret:/ {print $2}' "$d_dir/source.txt" >"$d_dir/whsec")
    sed -i '/^secret:/d' "$d_dir/source.txt"
    [ -s "$d_dir/whsec" ] || fail "tenants source printed no secret" || return 1
    st tenants check "${server[@]}" || fail "steward tenants check: a connection is not ok" || return 1
}

# The incident of a branch: seeded in the ServiceNow stand-in, or named in incidents.json.
incident_for() {
    local branch=$1
    if [ -f "$d_setup/standins.json" ]; then
        local sn
        sn=$(jq -r .servicenow "$d_setup/standins.json")
        curl -sS --fail-with-body --max-time 10 "${curl_tls[@]}" -X POST "$sn/_standin/incidents" \
            -d "{\"short_description\": \"Exit gate ($branch): checkout returns HTTP 502 since the deploy\",
                 \"description\": \"Payments pods restart; connection pool exhausted.\",
                 \"impact\": \"2\", \"urgency\": \"2\"}"
    else
        jq -ce ".$branch | {sys_id, number}" "$d_setup/incidents.json"
    fi
}

run_status() { api_get "v1/runs/$1" | jq -r '.run.state'; }

# Waits up to $2 seconds for the run to reach one of the states in $3 (space separated);
# fails early on any other terminal state.
wait_status() {
    local run=$1 limit=$2 want=$3 status="" deadline=$(($(date +%s) + $2))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        status=$(run_status "$run") || status="unreadable"
        for w in $want; do [ "$status" = "$w" ] && return 0; done
        case " completed rejected denied stale failed expired parked cancelled shadowed " in
        *" $status "*) fail "run $run ended $status, not $want"; return 1 ;;
        esac
        sleep 0.5
    done
    fail "run $run is $status after ${limit}s, not $want"
}

# The Slack stand-in's message for a run: its ts, once posted.
message_ts() {
    local slack=$1 run=$2
    curl -sS --max-time 10 "${curl_tls[@]}" "$slack/_standin/state" |
        jq -r --arg run "$run" '[.. | objects | select(has("ts") and has("blocks"))
            | select(tostring | contains($run))] | last | .ts // empty'
}

scenario() {
    local branch=$1 action expect
    case "$branch" in
    approve) action=steward_approve expect=completed ;;
    reject) action=steward_reject expect=rejected ;;
    esac
    local incident sys_id number
    incident=$(incident_for "$branch") || fail "no incident for the $branch branch" || return 1
    sys_id=$(jq -r .sys_id <<<"$incident")
    number=$(jq -r .number <<<"$incident")
    echo "incident $number ($sys_id)"
    jq -cn --arg s "$sys_id" --arg n "$number" \
        '{incident: {sys_id: $s, number: $n, short_description: "exit gate"}}' >"$d_dir/$branch.body.json"
    st webhooks send --url "$d_url" --tenant "$d_tenant" --source servicenow \
        --secret-file "$d_dir/whsec" --body-file "$d_dir/$branch.body.json" >"$d_dir/$branch.sent.txt" || {
        cat "$d_dir/$branch.sent.txt"
        fail "steward webhooks send was not accepted"
        return 1
    }
    cat "$d_dir/$branch.sent.txt"
    local run
    run=$(sed -n 's/^202 //p' "$d_dir/$branch.sent.txt" | jq -r .run_id)
    [ -n "$run" ] && [ "$run" != null ] || fail "the webhook started no run" || return 1
    echo "run $run: waiting for the Slack approval request"
    wait_status "$run" "$step_timeout" awaiting_approval || return 1
    if [ -f "$d_setup/standins.json" ]; then
        local slack ts="" approver deadline=$(($(date +%s) + 30))
        slack=$(jq -r '.slack_api | sub("/api/$"; "")' "$d_setup/standins.json")
        while [ -z "$ts" ] && [ "$(date +%s)" -lt "$deadline" ]; do
            ts=$(message_ts "$slack" "$run")
            [ -n "$ts" ] || sleep 0.5
        done
        [ -n "$ts" ] || fail "no approval request for run $run reached Slack" || return 1
        approver=$(jq -r '.approvers[0]' "$d_setup/slack.json")
        echo "clicking $action on message $ts as $approver (the Slack stand-in signs the click)"
        jq -cn --arg u "$d_url/v1/slack/interactions/$d_tenant" --arg ts "$ts" --arg a "$action" \
            --arg user "$approver" \
            '{interactions_url: $u, ts: $ts, action_id: $a, user_id: $user, user_name: "exit-gate"}' |
            curl -sS --fail-with-body --max-time 15 "${curl_tls[@]}" -X POST \
                -H 'content-type: application/json' --data-binary @- "$slack/_standin/click" \
                >"$d_dir/$branch.click.json" || fail "the click was not delivered" || return 1
        cat "$d_dir/$branch.click.json"
        echo
        jq -e '.status == 200' "$d_dir/$branch.click.json" >/dev/null ||
            fail "Steward did not answer the signed click with 200" || return 1
        wait_status "$run" "$step_timeout" "$expect" || return 1
    else
        echo ">>> In Slack, a person must click ${action#steward_} on the request for $number (run $run)."
        echo ">>> Waiting up to ${approval_timeout}s."
        wait_status "$run" "$approval_timeout" "$expect" || return 1
    fi
    api_get "v1/runs/$run" >"$d_dir/$branch.run.json" || fail "reading run $run" || return 1
    # ServiceNow: written exactly once on approve, never on reject, by the run's own journal
    # and, against the stand-in, by what the instance received.
    local written patched="" want=1
    [ "$branch" = reject ] && want=0
    written=$(jq '[.steps[] | select(.kind == "written")] | length' "$d_dir/$branch.run.json")
    echo "the run's journal records $written write(s) to $number"
    [ "$written" = "$want" ] ||
        fail "the journal records $written ServiceNow write(s) on $branch; expected $want" || return 1
    if [ -f "$d_setup/standins.json" ]; then
        local sn
        sn=$(jq -r .servicenow "$d_setup/standins.json")
        patched=$(curl -sS --max-time 10 "${curl_tls[@]}" "$sn/_standin/state" |
            jq --arg s "$sys_id" '[.. | objects | select(has("sys_id") and has("body"))
                | select(.sys_id == $s)] | length')
        echo "the ServiceNow stand-in received $patched PATCH(es) of $number"
        [ "$patched" = "$want" ] ||
            fail "ServiceNow received $patched PATCH(es) on $branch; expected $want" || return 1
    fi
    echo "run $run ended $expect; ServiceNow written $want time(s), as it must be"
}

audit_chain() {
    st audit verify --tenant "$d_tenant" --config "$d_config" | tee "$d_dir/audit.txt"
    grep -q '^result: *PASS' "$d_dir/audit.txt" || fail "the audit chain of $d_tenant does not verify"
}

evidence() {
    rm -rf "$d_dir/evidence"
    st evidence export --url "$d_url" --token-file "$d_ops_token" --tenant "$d_tenant" \
        --out "$d_dir/evidence" || fail "steward evidence export" || return 1
    st evidence verify "$d_dir/evidence" || fail "steward evidence verify"
}

drill() {
    if [ -n "$restore_report" ]; then
        echo "using the restore drill record $restore_report"
        return 0
    fi
    rm -rf "$d_dir/drill" && mkdir -p "$d_dir/drill"
    local drill_config=${drill_configs[$d_region]:-} backup restore=()
    if [ "$d_backend" = postgres ]; then
        # Restored as the drill config's schema owner into its empty scratch database, and
        # checked there as its backup role: never the deployment's own database.
        [ -n "$drill_config" ] ||
            fail "$d_config runs on PostgreSQL: name the drill's empty scratch database with --drill-config $d_region=FILE (docs/operations/exit-gate.md), or pass --restore-report" ||
            return 1
        [ -f "$drill_config" ] || fail "no drill config $drill_config" || return 1
        backup="$d_dir/drill/backup.dump"
        restore=(--config "$drill_config")
        echo "backend postgres: backup with $d_config, restore with $drill_config"
    else
        [ -z "$drill_config" ] ||
            fail "--drill-config $d_region= is for PostgreSQL; $d_config runs on SQLite" || return 1
        backup="$d_dir/drill/backup.db"
        restore=(--config "$d_config" --to "$d_dir/drill/restored.db")
        echo "backend sqlite: restore to a scratch file"
    fi
    st backup --config "$d_config" --out "$backup" >"$d_dir/drill/backup.txt" || {
        cat "$d_dir/drill/backup.txt"
        fail "steward backup"
        return 1
    }
    tail -n 1 "$d_dir/drill/backup.txt"
    st restore "${restore[@]}" --from "$backup" >"$d_dir/drill/report.txt" || {
        cat "$d_dir/drill/report.txt"
        fail "steward restore"
        return 1
    }
    tail -n 1 "$d_dir/drill/report.txt"
    drill_report="$d_dir/drill/report.txt"
}

# --- the run ------------------------------------------------------------------------------

echo "Steward exit gate, $env_name, $(date -u +%FT%TZ); record in $out"
part release.gate release_gate

smoke_tenants=()
drill_report=""
stamp=$(date -u +%Y%m%d%H%M%S)
for i in "${!configs[@]}"; do
    d_config=$(cd "$(dirname "${configs[$i]}")" && pwd)/$(basename "${configs[$i]}")
    d_url=${urls[$i]%/}
    d_setup=$(cd "${setups[$i]}" 2>/dev/null && pwd) || { failed_part="deployment $i setup"; finish; }
    mapfile -t read_back < <(read_config "$d_config")
    d_region=${read_back[0]:-}
    d_ops_token=${ops_token_file:-${read_back[1]:-}}
    d_backend=${read_back[2]:-sqlite}
    case "$d_region" in us | eu) ;; *) failed_part="deployment $i: region of $d_config"; finish ;; esac
    d_tenant="$d_region-exit-gate-$env_name-$stamp"
    d_dir="$out/$d_region"
    mkdir -p "$d_dir"
    part "$d_region.preflight" preflight
    part "$d_region.onboard" onboard
    part "$d_region.scenario.approve" scenario approve
    part "$d_region.scenario.reject" scenario reject
    part "$d_region.audit" audit_chain
    part "$d_region.evidence" evidence
    part "$d_region.drill" drill
    smoke_tenants+=(--smoke-tenant "$d_tenant")
done

checklist() {
    local key=$signing_key
    if [ -z "$key" ]; then
        key="$out/checklist.key"
        st checklist keygen --out "$key" >"$out/checklist.keygen.txt" || fail "checklist keygen" || return 1
        public_key=$(awk '{print $2; exit}' "$out/checklist.keygen.txt")
        echo "a new checklist key for this run: $(head -n 1 "$out/checklist.keygen.txt")"
    fi
    local args=(checklist --env "$env_name")
    for i in "${!configs[@]}"; do
        args+=(--config "$(cd "$(dirname "${configs[$i]}")" && pwd)/$(basename "${configs[$i]}")" --url "${urls[$i]%/}")
    done
    [ -n "$ca_file" ] && args+=(--ca-file "$ca_file")
    [ -n "$ops_token_file" ] && args+=(--token-file "$ops_token_file")
    args+=("${smoke_tenants[@]}" --alerts "$alerts" --restore-report "${restore_report:-$drill_report}")
    for s in "${sign_offs[@]}"; do args+=(--sign-off "$s"); done
    [ "$test_identity" -eq 1 ] && args+=(--test-identity)
    args+=(--signing-key "$key" --out "$out/go-no-go.json")
    st "${args[@]}"
    local code=$?
    [ "$code" -eq 0 ] || fail "steward checklist: no-go (exit $code); see $out/go-no-go.json" || return 1
    local verify=(checklist verify "$out/go-no-go.json" --require-go)
    [ -n "$public_key" ] && verify+=(--public-key "$public_key")
    st "${verify[@]}" || fail "steward checklist verify --require-go"
}
part checklist checklist
finish
