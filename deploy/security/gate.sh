#!/usr/bin/env bash
# Steward's release security gate: one command, every gate in order, each gate's result and time,
# a summary, and a non-zero exit when any gate fails. What each gate checks, and how to add an
# exception: deploy/security/README.md.
#
#   bash deploy/security/gate.sh               # the release gate
#   bash deploy/security/gate.sh --skip-image  # local use only: no image gate, said loudly
#
# Gates: tools, advisory-db, self-test, dependencies, policy, image, manifests.
#
# Environment:
#   STEWARD_ADVISORY_DB  the RustSec advisory database folder (default: the advisory database
#                        snapshot beside the checkout, ../shared/advisory-db from the root)
#   STEWARD_GATE_TODAY   the date the gate judges by, YYYY-MM-DD (default: today, UTC)
#
# Network: `cargo install` of a missing tool and `cargo fetch` of the locked crates go to the
# package registry cargo is configured with; every check after that runs offline.
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

skip_image=0
for arg in "$@"; do
    case "$arg" in
        --skip-image) skip_image=1 ;;
        -h | --help)
            sed -n '2,17p' "$0"
            exit 0
            ;;
        *)
            echo "unknown argument: $arg (see --help)" >&2
            exit 2
            ;;
    esac
done

export CARGO_TERM_COLOR=never
# gate.py and its tests leave no bytecode cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
sec=deploy/security
work=$root/target/security
mkdir -p "$work"
# The advisory database snapshot: STEWARD_ADVISORY_DB, else shared/advisory-db beside the
# checkout or beside one of its parent folders, else beside the repository a local clone was
# made from (a CI clone in a scratch folder).
find_advisory_db() {
    local dir=$root origin
    while [ -n "$dir" ] && [ "$dir" != / ]; do
        dir=$(dirname "$dir")
        if [ -d "$dir/shared/advisory-db/crates" ]; then
            echo "$dir/shared/advisory-db"
            return
        fi
    done
    origin=$(git -C "$root" config --get remote.origin.url 2>/dev/null || true)
    if [ -n "$origin" ] && [ -d "$origin" ] && [ -d "$origin/../shared/advisory-db/crates" ]; then
        (cd "$origin/../shared/advisory-db" && pwd)
        return
    fi
    echo "$root/../shared/advisory-db"
}
db=${STEWARD_ADVISORY_DB:-$(find_advisory_db)}
today=${STEWARD_GATE_TODAY:-$(date -u +%F)}
# cargo-deny reads its database as a git checkout named after the database URL (its default
# URL's name) under db-path (deny.toml: target/security/advisory-dbs).
deny_db_root=$work/advisory-dbs
deny_db=$deny_db_root/advisory-db-3157b0e258782691
scorer=$work/release/steward-cvss-score
policy_args=(--gate "$sec/gate.toml" --exceptions "$sec/exceptions.toml" --db "$db"
    --scorer "$scorer" --today "$today")

yaml_python=python3
if ! python3 -c 'import yaml' 2>/dev/null && [ -x "$root/target/manifests-venv/bin/python" ]; then
    yaml_python=$root/target/manifests-venv/bin/python
fi

declare -a summary=()
failed=0
total_start=$(date +%s)

# gate NAME FUNCTION: runs one gate, prints its result and time, records it for the summary.
gate() {
    local name=$1 fn=$2 start took status
    start=$(date +%s)
    echo
    echo "=== gate ${name}"
    "$fn"
    status=$?
    took=$(($(date +%s) - start))
    if [ "$status" -eq 0 ]; then
        echo "=== gate ${name}: pass (${took}s)"
        summary+=("$(printf '%-13s pass  %4ss' "$name" "$took")")
    else
        echo "=== gate ${name}: FAIL (${took}s)"
        summary+=("$(printf '%-13s FAIL  %4ss' "$name" "$took")")
        failed=1
    fi
}

ensure_tool() {
    local bin=$1 crate=$2
    if ! command -v "$bin" >/dev/null; then
        echo "installing $crate (once; it stays in ~/.cargo/bin)"
        cargo install --locked "$crate" || return 1
    fi
}

tools() {
    command -v python3 >/dev/null || { echo "python3 is required"; return 1; }
    # PyYAML reads the manifests: the system's, or the manifests check's venv (deploy/ci).
    if ! "$yaml_python" -c 'import yaml' 2>/dev/null; then
        echo "PyYAML is required (Debian: python3-yaml, or run deploy/ci/manifests.sh once)"
        return 1
    fi
    ensure_tool cargo-deny cargo-deny || return 1
    ensure_tool cargo-audit cargo-audit || return 1
    cargo deny --version && cargo audit --version || return 1
    # The CVSS scorer (the `cvss` crate), its own small workspace.
    cargo build --quiet --release --locked --manifest-path "$sec/cvss-score/Cargo.toml" \
        --target-dir "$work" || return 1
    echo "CVSS scorer: $scorer"
}

advisory_db() {
    [ -d "$db/crates" ] || {
        echo "no advisory database at $db (set STEWARD_ADVISORY_DB)"
        return 1
    }
    python3 "$sec/gate.py" db-age --gate "$sec/gate.toml" --db "$db" --today "$today"
    local age_status=$?
    # cargo-deny's view of the same snapshot: a git checkout of it, committed at the snapshot's
    # date, rebuilt whenever any file of the snapshot differs (name, size or time) from the
    # last build, so it is never older or newer than the snapshot.
    local date fingerprint
    fingerprint=$(cd "$db" && find . -type f -printf '%P\t%s\t%T@\n' | LC_ALL=C sort | sha256sum)
    if [ -d "$deny_db/.git" ] && [ "$(cat "$deny_db_root/fingerprint" 2>/dev/null)" = "$fingerprint" ]; then
        echo "cargo-deny database checkout: $deny_db (current)"
        return "$age_status"
    fi
    date=$(sed -n 's/^- commit date: *\([0-9-]*\).*/\1/p' "$db/README.md" 2>/dev/null | head -n 1)
    local when=${date:+${date}T00:00:00Z}
    when=${when:-$(date -u +%FT%TZ)}
    rm -rf "$deny_db_root" && mkdir -p "$deny_db" || return 1
    cp -R "$db/." "$deny_db/" || return 1
    (
        cd "$deny_db" &&
            git init -q &&
            git add -A &&
            GIT_AUTHOR_DATE="$when" GIT_COMMITTER_DATE="$when" \
                git -c user.name=steward-gate -c user.email=gate@localhost -c core.hooksPath=/dev/null \
                -c commit.gpgsign=false commit -q --allow-empty -m "advisory database snapshot"
    ) || {
        echo "could not make the database checkout for cargo-deny"
        return 1
    }
    printf '%s' "$fingerprint" >"$deny_db_root/fingerprint"
    echo "cargo-deny database checkout: $deny_db, rebuilt ($(find "$db/crates" -name '*.md' | wc -l) advisories)"
    return "$age_status"
}

# deny_check OUT MANIFEST: cargo-deny, offline, every check, JSON diagnostics into OUT.
deny_check() {
    local out=$1 manifest=$2
    cargo fetch --locked --manifest-path "$manifest" --quiet || return 1
    cargo deny --frozen --format json --manifest-path "$manifest" --config "$root/deny.toml" \
        check --show-stats all 2>"$out"
}

self_test() {
    local status=0
    echo "-- gate.py unit tests"
    "$yaml_python" -m unittest discover -s "$sec" -p 'test_*.py' 2>&1 | tail -n 3 || status=1
    echo "-- the CVSS scorer's tests"
    cargo test --quiet --release --locked --manifest-path "$sec/cvss-score/Cargo.toml" \
        --target-dir "$work" 2>&1 | grep -E '^test result|FAILED|panicked' || status=1
    echo "-- the dependency check on the vulnerable fixture must fail on RUSTSEC-2021-0003"
    local none=$work/no-exceptions.toml
    : >"$none"
    deny_check "$work/fixture-deny.json" "$sec/fixtures/vulnerable/Cargo.toml"
    local tool=$?
    python3 "$sec/gate.py" deny --output "$work/fixture-deny.json" --tool-status "$tool" \
        "${policy_args[@]}" --exceptions "$none" --expect RUSTSEC-2021-0003 || status=1
    echo "-- the same finding with a current exception passes; with an expired one it fails"
    local soon past
    soon=$(date -u -d "$today + 30 days" +%F) && past=$(date -u -d "$today - 1 day" +%F) || return 1
    printf '[[exception]]\nid = "RUSTSEC-2021-0003"\nreason = "self-test of the exception rules"\nowner = "release gate"\nexpires = %s\n' \
        "$soon" >"$work/exception-current.toml"
    sed "s/^expires = .*/expires = $past/" "$work/exception-current.toml" >"$work/exception-expired.toml"
    python3 "$sec/gate.py" deny --output "$work/fixture-deny.json" --tool-status "$tool" \
        "${policy_args[@]}" --exceptions "$work/exception-current.toml" >/dev/null || {
        echo "a current exception did not let the fixture's finding through"
        status=1
    }
    if python3 "$sec/gate.py" deny --output "$work/fixture-deny.json" --tool-status "$tool" \
        "${policy_args[@]}" --exceptions "$work/exception-expired.toml" >/dev/null; then
        echo "an expired exception was accepted"
        status=1
    fi
    echo "-- the dependency check on the banned fixture must fail on backoff"
    deny_check "$work/banned-deny.json" "$sec/fixtures/banned/Cargo.toml"
    tool=$?
    python3 "$sec/gate.py" deny --output "$work/banned-deny.json" --tool-status "$tool" \
        "${policy_args[@]}" --exceptions "$none" --expect ban:backoff | grep -E 'ban:|pass|FAIL   expected' || status=1
    echo "-- with MIT and Apache-2.0 off the allow-list, the fixture's smallvec must fail the licence check"
    sed '/^allow = \[/,/^\]/c allow = ["ISC"]' deny.toml >"$work/deny-isc-only.toml"
    cargo deny --frozen --format json --manifest-path "$sec/fixtures/vulnerable/Cargo.toml" \
        --config "$work/deny-isc-only.toml" check licenses 2>"$work/licence-deny.json"
    tool=$?
    python3 "$sec/gate.py" deny --output "$work/licence-deny.json" --tool-status "$tool" --checks licenses \
        "${policy_args[@]}" --exceptions "$none" --expect licence:smallvec | grep -E 'licence:|pass|FAIL   expected' || status=1
    return "$status"
}

dependencies() {
    deny_check "$work/deny.json" "$root/Cargo.toml"
    local tool=$?
    python3 "$sec/gate.py" deny --output "$work/deny.json" --tool-status "$tool" "${policy_args[@]}"
}

# The fail-closed tests of the Cedar policy gate that must exist and pass (actors/src/policy.rs);
# every other test of the module runs too.
fail_closed_tests=(
    a_runtime_evaluation_error_is_a_deny
    an_error_in_the_approval_check_refuses_the_click
    an_engine_that_does_not_answer_in_time_denies
    missing_entity_data_is_a_deny
    unknown_fields_are_always_denied
    the_gate_never_allows_what_the_model_denies
    an_engine_out_of_time_denies_every_request
    missing_entity_data_never_allows
    text_that_is_not_a_valid_policy_set_never_loads
)

policy() {
    local out=$work/policy-tests.txt status name
    cargo test --locked -p steward-actors --lib policy:: >"$out" 2>&1
    status=$?
    grep -E '^test |^test result|panicked|^error' "$out"
    [ "$status" -eq 0 ] || return 1
    for name in "${fail_closed_tests[@]}"; do
        grep -q "^test policy::tests::${name} \.\.\. ok$" "$out" || {
            echo "the fail-closed policy test ${name} did not run and pass"
            return 1
        }
    done
    echo "the ${#fail_closed_tests[@]} fail-closed policy tests ran and passed"
}

image() {
    local bin=target/image/steward oci=target/image/oci
    if [ "$skip_image" -eq 1 ]; then
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        echo "!!! --skip-image: the container image is NOT checked. Local use only:   !!!"
        echo "!!! this run does not clear a release.                                   !!!"
        echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        return 0
    fi
    if [ ! -f "$bin" ] || [ ! -f "$oci/index.json" ]; then
        echo "no image: $bin and $oci/index.json are required. Build it first:"
        echo "    bash deploy/image/build.sh"
        echo "(or, for local use only, run this gate with --skip-image)"
        return 1
    fi
    local status=0
    echo "-- cargo audit of the dependency list embedded in $bin"
    cargo audit --db "$db" --no-fetch --json bin "$bin" >"$work/audit.json" 2>"$work/audit.err"
    echo "cargo-audit exit status $? (the gate's policy decides below)"
    python3 "$sec/gate.py" audit --output "$work/audit.json" --binary "$bin" "${policy_args[@]}" \
        --no-unused || {
        sed -n '1,20p' "$work/audit.err"
        status=1
    }
    echo "-- the image layout $oci"
    python3 "$sec/gate.py" image --oci "$oci" --binary "$bin" --gate "$sec/gate.toml" || status=1
    return "$status"
}

manifests() {
    "$yaml_python" "$sec/gate.py" k8s --dir deploy/k8s
}

echo "Steward release security gate, $(date -u +%FT%TZ), judging by $today"
echo "advisory database: $db"
gate tools tools
gate advisory-db advisory_db
gate self-test self_test
gate dependencies dependencies
gate policy policy
gate image image
gate manifests manifests

echo
echo "release gate summary"
for line in "${summary[@]}"; do echo "  $line"; done
echo "  total              $(($(date +%s) - total_start))s"
if [ "$skip_image" -eq 1 ]; then
    echo "  !!! the image gate was skipped (--skip-image): not a release result"
fi
if [ "$failed" -ne 0 ]; then
    echo "RELEASE GATE FAILED"
    exit 1
fi
if [ "$skip_image" -eq 1 ]; then
    echo "release gate passed WITHOUT the image gate"
    exit 0
fi
echo "release gate passed"
