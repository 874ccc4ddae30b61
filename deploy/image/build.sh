#!/usr/bin/env bash
# Steward's container image. This one script is what both ways of building the image run, so
# they cannot drift apart:
#   - here, without a container engine: `deploy/image/build.sh` (all steps, OCI layout by umoci);
#   - with an engine: deploy/Containerfile runs `deploy/image/build.sh rootfs` in its builder
#     stage and copies target/image/rootfs into `scratch`.
#
# Usage: deploy/image/build.sh [binary|rootfs|oci]        (default: oci, which does all three)
#   binary  target/image/steward: the steward binary, static, release profile, built with
#           `cargo auditable` so its dependency list is embedded (`cargo audit bin` reads it).
#   rootfs  the binary, then target/image/rootfs: the image's whole filesystem.
#   oci     the rootfs, then target/image/oci: an OCI image layout made by umoci, tagged
#           `<version>` and `latest`.
#
# The static binary. glibc with `crt-static`, for x86_64-unknown-linux-gnu. With `--target`
# given, RUSTFLAGS apply to the target's artifacts only, not to build scripts and proc macros,
# and the artifacts go to target/x86_64-unknown-linux-gnu/release, so the shared target
# directory serves and the host builds are not invalidated.
#
# Name resolution in the static binary. Both the HTTP clients (reqwest's default resolver) and
# sqlx's PostgreSQL connections (tokio's `lookup_host`) resolve names with the C library's
# `getaddrinfo`. The linker warns that a static `getaddrinfo` needs glibc's NSS shared libraries
# at run time; that holds for NSS modules loaded with dlopen, but since glibc 2.34 the `files`
# and `dns` modules are part of libc itself, so the static binary reads /etc/hosts and
# /etc/resolv.conf (which the container runtime mounts) with no shared library at all. With no
# /etc/nsswitch.conf in the image, glibc's built-in order applies (`files`, then `dns`). A
# pure-Rust resolver (reqwest's `hickory-dns` feature) would cover only the HTTP clients: sqlx
# offers no resolver hook, so the C library's resolver is needed in any case, and one resolver
# for every connection is simpler to reason about. This step therefore refuses a glibc older
# than 2.34, and deploy/image/check.sh proves resolution inside the image, through /etc/hosts
# and through a DNS server.
#
# CA roots. reqwest (`rustls-tls`, that is webpki-roots) and sqlx (`tls-rustls-ring-webpki`)
# use trust anchors compiled into the binary; nothing reads a CA bundle from disk, so the image
# carries none. `steward selfcheck` counts them.
#
# The rootfs step needs root (the data directory belongs to uid 65532, everything else to
# root). The oci step needs umoci (Debian's package, installed with apt-get when missing).
#
# Environment: SOURCE_DATE_EPOCH (file times and the image's creation time; default now),
# STEWARD_REVISION (the source revision label; default `git rev-parse HEAD` when available).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

step=${1:-oci}
case "$step" in
    binary | rootfs | oci) ;;
    *)
        echo "usage: $0 [binary|rootfs|oci]" >&2
        exit 2
        ;;
esac

out=$root/target/image
triple=x86_64-unknown-linux-gnu
uid=65532
gid=65532
data_dir=/var/lib/steward
port=8080
version=$(awk '/^\[workspace.package\]/ { p = 1; next } /^\[/ { p = 0 }
    p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[ -n "$version" ] || { echo "no version under [workspace.package] in Cargo.toml" >&2; exit 1; }
epoch=${SOURCE_DATE_EPOCH:-$(date +%s)}
mkdir -p "$out"

took() { echo "$(( $(date +%s) - $1 ))s"; }

build_binary() {
    local start glibc
    start=$(date +%s)
    command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 1; }
    glibc=$(getconf GNU_LIBC_VERSION | awk '{ print $2 }')
    if ! printf '2.34\n%s\n' "$glibc" | sort -C -V; then
        echo "glibc $glibc: a static getaddrinfo needs glibc 2.34 or later (files and dns in libc)" >&2
        exit 1
    fi
    if ! cargo auditable --version >/dev/null 2>&1; then
        echo "installing cargo-auditable"
        cargo install --locked cargo-auditable
    fi
    echo "building steward $version: static (glibc $glibc, crt-static), release, $triple, cargo auditable"
    RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
        cargo auditable build --locked --release --target "$triple" \
        -p steward-runtime --bin steward
    local bin=$root/target/$triple/release/steward
    # Static: no program interpreter, no shared library needed.
    if readelf -l "$bin" | grep -q 'Requesting program interpreter' \
        || readelf -d "$bin" | grep -q '(NEEDED)'; then
        echo "$bin is not a static executable" >&2
        exit 1
    fi
    readelf -S "$bin" | grep -q '\.dep-v0' \
        || { echo "$bin carries no embedded dependency list (.dep-v0)" >&2; exit 1; }
    install -m 0755 "$bin" "$out/steward"
    echo "target/image/steward: $(du -h "$out/steward" | cut -f1), static, dependency list embedded; built in $(took "$start")"
}

# The image's whole filesystem: the binary, the user's passwd and group lines, the data
# directory (a volume mount point, the one path the user may write), nothing else: no shell,
# no package manager, no C library, no CA bundle (see above).
build_rootfs() {
    local start rootfs=$out/rootfs
    start=$(date +%s)
    [ "$(id -u)" = 0 ] || { echo "the rootfs step runs as root (file ownership)" >&2; exit 1; }
    [ -x "$out/steward" ] || { echo "no $out/steward: run the binary step first" >&2; exit 1; }
    rm -rf "$rootfs"
    install -d -m 0755 -o 0 -g 0 "$rootfs" "$rootfs/etc" "$rootfs/var" "$rootfs/var/lib"
    install -d -m 0750 -o "$uid" -g "$gid" "$rootfs$data_dir"
    install -m 0555 -o 0 -g 0 "$out/steward" "$rootfs/steward"
    printf 'steward:x:%s:%s:steward:%s:/sbin/nologin\n' "$uid" "$gid" "$data_dir" >"$rootfs/etc/passwd"
    printf 'steward:x:%s:\n' "$gid" >"$rootfs/etc/group"
    chown 0:0 "$rootfs/etc/passwd" "$rootfs/etc/group"
    chmod 0444 "$rootfs/etc/passwd" "$rootfs/etc/group"
    find "$rootfs" -exec touch -h -d "@$epoch" {} +
    echo "target/image/rootfs:"
    (cd "$rootfs" && find . -mindepth 1 | sort | while read -r f; do
        stat -c '  %A %u:%g %8s %n' "$f"
    done)
    echo "rootfs in $(took "$start")"
}

ensure_umoci() {
    if ! command -v umoci >/dev/null; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq umoci >/dev/null
    fi
    umoci --version
}

# An OCI image layout: an empty image, one layer holding the rootfs, and the configuration.
build_oci() {
    local start layout=$out/oci bundle=$out/bundle created revision
    start=$(date +%s)
    ensure_umoci
    created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
    revision=${STEWARD_REVISION:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
    rm -rf "$layout" "$bundle"
    umoci init --layout "$layout"
    umoci new --image "$layout:$version"
    umoci unpack --image "$layout:$version" "$bundle"
    cp -a "$out/rootfs/." "$bundle/rootfs/"
    umoci repack --image "$layout:$version" --history.created "$created" \
        --history.created_by "deploy/image/build.sh" "$bundle"
    local annotations=(
        org.opencontainers.image.title=steward
        "org.opencontainers.image.description=Supervised AI workflows for IT operations"
        "org.opencontainers.image.version=$version"
        "org.opencontainers.image.revision=$revision"
        "org.opencontainers.image.created=$created"
        org.opencontainers.image.licenses=Apache-2.0
    )
    local args=()
    for a in "${annotations[@]}"; do
        args+=(--config.label "$a" --manifest.annotation "$a")
    done
    umoci config --image "$layout:$version" --created "$created" \
        --history.created "$created" --history.created_by "deploy/image/build.sh (config)" \
        --os linux --architecture amd64 \
        --clear config.env --clear config.entrypoint --clear config.cmd \
        --config.user "$uid:$gid" \
        --config.entrypoint /steward --config.cmd serve \
        --config.workingdir "$data_dir" --config.volume "$data_dir" \
        --config.exposedports "$port/tcp" --config.stopsignal SIGINT \
        "${args[@]}"
    umoci tag --image "$layout:$version" latest
    umoci gc --layout "$layout"
    rm -rf "$bundle"
    echo "target/image/oci: tags $(umoci ls --layout "$layout" | tr '\n' ' ')($(du -sh "$layout" | cut -f1)); revision $revision; in $(took "$start")"
}

total=$(date +%s)
build_binary
[ "$step" = binary ] || build_rootfs
[ "$step" != oci ] || build_oci
echo "build.sh $step took $(took "$total")"
