#!/usr/bin/env bash
# Checks the image deploy/image/build.sh made (target/image/oci), without a container engine:
#
# 1. The image configuration: user 65532:65532, entrypoint /steward, cmd serve, the working
#    directory and volume /var/lib/steward, port 8080/tcp, stop signal SIGINT, the version and
#    revision labels and annotations, no secret-looking environment variable.
# 2. The filesystem, unpacked with umoci: exactly the expected paths with their owners and
#    modes; no shell, no package manager, no shared library, no secret-looking file (keys,
#    certificates, `.env`, tokens); /steward a static executable; the passwd and group lines.
# 3. `/steward selfcheck` inside it, the way a container runtime would run it: in a private
#    mount and network namespace, the unpacked root bind-mounted read-only, an empty directory
#    owned by 65532 mounted as the /var/lib/steward volume, /etc/hosts and /etc/resolv.conf
#    supplied for the check (as a runtime mounts them) with a DNS server on the namespace's
#    own loopback, then `unshare --root` with uid and gid 65532 and no supplementary groups.
#    It must pass (CA roots, resolution through /etc/hosts and through DNS, non-root, the
#    volume writable, the root filesystem read-only), and the same selfcheck run as root must
#    fail.
#
# Usage: deploy/image/check.sh [TAG]   (default latest). Runs as root; needs umoci, python3,
# unshare and ip. Exits non-zero on any failure.
set -euo pipefail
self=$(realpath "$0")
cd "$(dirname "$self")/../.."
root=$PWD

# The namespace half, run by the script itself through unshare (see the end).
if [ "${1:-}" = __in_namespace ]; then
    work=$2
    rootfs=$work/bundle/rootfs
    ip link set lo up
    # A DNS server on this namespace's loopback, port 53, answering A queries for one name.
    python3 - "$work/dns.ready" <<'EOF' &
import socket, struct, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 53))
open(sys.argv[1], "w").close()
NAME, ADDR = b"\x03api\x07steward\x04test\x00", bytes([192, 0, 2, 10])
while True:
    data, peer = sock.recvfrom(512)
    if len(data) < 12:
        continue
    qid, flags = struct.unpack("!HH", data[:4])
    end = data.find(b"\x00", 12) + 1
    if end == 0 or len(data) < end + 4:
        continue
    qname = data[12:end].lower()
    qtype, = struct.unpack("!H", data[end:end + 2])
    question = data[12:end + 4]
    found = qname == NAME
    answers = b""
    if found and qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + ADDR
    rcode = 0 if found else 3
    header = struct.pack("!HHHHHH", qid, 0x8180 | rcode | (flags & 0x0100), 1,
                         1 if answers else 0, 0, 0)
    sock.sendto(header + question + answers, peer)
EOF
    dns_pid=$!
    trap 'kill "$dns_pid" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do [ -f "$work/dns.ready" ] && break; sleep 0.1; done
    [ -f "$work/dns.ready" ] || { echo "FAIL the test DNS server did not start"; exit 1; }

    printf '127.0.0.1 localhost\n::1 localhost\n192.0.2.5 postgres.steward.test\n' >"$work/hosts"
    printf 'nameserver 127.0.0.1\noptions timeout:2 attempts:1\n' >"$work/resolv.conf"
    install -d -m 0750 -o 65532 -g 65532 "$work/volume"
    # Mount points for the two files, then the root read-only, then the volume and the files.
    touch "$rootfs/etc/hosts" "$rootfs/etc/resolv.conf"
    mount --bind "$rootfs" "$rootfs"
    mount -o remount,bind,ro "$rootfs"
    mount --bind "$work/volume" "$rootfs/var/lib/steward"
    mount --bind -o ro "$work/hosts" "$rootfs/etc/hosts"
    mount --bind -o ro "$work/resolv.conf" "$rootfs/etc/resolv.conf"

    selfcheck=(/steward selfcheck --resolve postgres.steward.test --resolve api.steward.test
        --data-dir /var/lib/steward --expect-read-only)
    echo "::: as 65532:65532: ${selfcheck[*]}"
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        unshare --root="$rootfs" --wd=/var/lib/steward --setuid 65532 --setgid 65532 \
        "${selfcheck[@]}"
    echo "::: as root, which must fail"
    if env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        unshare --root="$rootfs" --wd=/var/lib/steward "${selfcheck[@]}"; then
        echo "FAIL selfcheck passed as root"
        exit 1
    fi
    echo "pass  selfcheck fails as root"
    exit 0
fi

tag=${1:-latest}
layout=$root/target/image/oci
start=$(date +%s)
[ "$(id -u)" = 0 ] || { echo "check.sh runs as root (unpacking, mounts, uid switch)" >&2; exit 1; }
[ -f "$layout/index.json" ] || { echo "no OCI layout at $layout: run deploy/image/build.sh" >&2; exit 1; }
command -v umoci >/dev/null || { echo "umoci is required (deploy/image/build.sh installs it)" >&2; exit 1; }

work=$(mktemp -d -p "$root/target" image-check.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
pass() { echo "pass  $*"; }
fail() { echo "FAIL  $*"; failures=$((failures + 1)); }

echo "::: image configuration ($layout:$tag)"
if python3 - "$layout" "$tag" >"$work/config.out" <<'EOF'; then cat "$work/config.out"; else cat "$work/config.out"; fail "image configuration"; fi
import json, re, sys
from pathlib import Path

layout, tag = Path(sys.argv[1]), sys.argv[2]
def blob(digest):
    algo, hexd = digest.split(":", 1)
    return json.loads((layout / "blobs" / algo / hexd).read_text())
index = json.loads((layout / "index.json").read_text())
refs = [m for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
if len(refs) != 1:
    sys.exit(f"FAIL  tag {tag!r}: {len(refs)} manifests")
manifest = blob(refs[0]["digest"])
image = blob(manifest["config"]["digest"])
cfg = image.get("config", {})
bad = 0
def check(name, ok, detail):
    global bad
    print(f"{'pass' if ok else 'FAIL'}  {name}: {detail}")
    bad += not ok
check("user", cfg.get("User") == "65532:65532", repr(cfg.get("User")))
check("entrypoint", cfg.get("Entrypoint") == ["/steward"], repr(cfg.get("Entrypoint")))
check("cmd", cfg.get("Cmd") == ["serve"], repr(cfg.get("Cmd")))
check("workdir", cfg.get("WorkingDir") == "/var/lib/steward", repr(cfg.get("WorkingDir")))
check("volumes", list(cfg.get("Volumes") or {}) == ["/var/lib/steward"], repr(cfg.get("Volumes")))
check("ports", list(cfg.get("ExposedPorts") or {}) == ["8080/tcp"], repr(cfg.get("ExposedPorts")))
check("stop signal", cfg.get("StopSignal") == "SIGINT", repr(cfg.get("StopSignal")))
check("platform", (image.get("os"), image.get("architecture")) == ("linux", "amd64"),
      f"{image.get('os')}/{image.get('architecture')}")
secretish = re.compile(r"(KEY|TOKEN|SECRET|PASSW|CREDENTIAL|_URL)", re.I)
env = cfg.get("Env") or []
check("env", not any(secretish.search(e.split("=", 1)[0]) for e in env), repr(env))
labels = cfg.get("Labels") or {}
annotations = manifest.get("annotations") or {}
for key in ("version", "revision", "created", "title", "licenses"):
    full = f"org.opencontainers.image.{key}"
    check(f"label {key}", bool(labels.get(full)) and labels.get(full) == annotations.get(full),
          f"{labels.get(full)!r} (annotation {annotations.get(full)!r})")
layers = manifest.get("layers", [])
check("layers", len(layers) == 1, f"{len(layers)}, {sum(l['size'] for l in layers)} bytes compressed")
sys.exit(1 if bad else 0)
EOF

echo "::: filesystem"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
rootfs=$work/bundle/rootfs
listing=$(cd "$rootfs" && find . -mindepth 1 -printf '%M %U:%G %p\n' | sed 's| \./| /|' | sort -k3)
expected='drwxr-xr-x 0:0 /etc
-r--r--r-- 0:0 /etc/group
-r--r--r-- 0:0 /etc/passwd
-r-xr-xr-x 0:0 /steward
drwxr-xr-x 0:0 /var
drwxr-xr-x 0:0 /var/lib
drwxr-x--- 65532:65532 /var/lib/steward'
if [ "$listing" = "$expected" ]; then
    pass "exactly the expected files, owners and modes:"
    sed 's/^/        /' <<<"$listing"
else
    fail "the files differ from the expected set:"
    diff <(echo "$expected") <(echo "$listing") | sed 's/^/        /' || true
fi
for path in /bin/sh /bin/bash /bin/busybox /usr/bin/apt-get /usr/bin/dpkg /sbin/apk /usr/bin/yum \
    /usr/bin/microdnf /usr/lib /lib /lib64; do
    if [ -e "$rootfs$path" ] || [ -L "$rootfs$path" ]; then fail "$path is present"; fi
done
shells=$(cd "$rootfs" && find . \( -name sh -o -name bash -o -name dash -o -name busybox \) | head -n 5)
[ -z "$shells" ] && pass "no shell" || fail "shells: $shells"
managers=$(cd "$rootfs" && find . \( -name apt -o -name 'apt-*' -o -name dpkg -o -name apk -o -name rpm \
    -o -name yum -o -name dnf -o -name pip -o -name 'pip3*' \) | head -n 5)
[ -z "$managers" ] && pass "no package manager" || fail "package managers: $managers"
libs=$(cd "$rootfs" && find . \( -name '*.so' -o -name '*.so.*' -o -name 'ld-linux*' \) | head -n 5)
[ -z "$libs" ] && pass "no shared library" || fail "shared libraries: $libs"
secrets=$(cd "$rootfs" && find . -iname '*.key' -o -iname '*.pem' -o -iname '*.crt' -o -iname '*.p12' \
    -o -iname '*.pfx' -o -iname 'id_rsa*' -o -iname 'id_ed25519*' -o -iname '.env' -o -iname '.env.*' \
    -o -iname '*token*' -o -iname '*secret*' -o -iname '*credential*' -o -iname '.netrc' \
    -o -iname '*.toml' | head -n 5)
[ -z "$secrets" ] && pass "no secret-looking file" || fail "secret-looking files: $secrets"
if readelf -l "$rootfs/steward" | grep -q 'program interpreter' || readelf -d "$rootfs/steward" | grep -q NEEDED; then
    fail "/steward is not static"
else
    pass "/steward is a static executable ($(du -h "$rootfs/steward" | cut -f1))"
fi
[ "$(cat "$rootfs/etc/passwd")" = "steward:x:65532:65532:steward:/var/lib/steward:/sbin/nologin" ] \
    && pass "/etc/passwd: steward, uid 65532, no password" || fail "/etc/passwd: $(cat "$rootfs/etc/passwd")"
[ "$(cat "$rootfs/etc/group")" = "steward:x:65532:" ] \
    && pass "/etc/group: steward, gid 65532" || fail "/etc/group: $(cat "$rootfs/etc/group")"
# umoci's runtime configuration for the bundle is the image configuration as a runtime sees it.
python3 - "$work/bundle/config.json" <<'EOF' && pass "runtime view: uid 65532, gid 65532, /steward serve in /var/lib/steward" || fail "runtime view of the configuration"
import json, sys
p = json.load(open(sys.argv[1]))["process"]
ok = (p["user"]["uid"], p["user"]["gid"], p["args"], p["cwd"]) == (65532, 65532, ["/steward", "serve"], "/var/lib/steward")
print(f"      uid {p['user']['uid']} gid {p['user']['gid']} args {p['args']} cwd {p['cwd']}")
sys.exit(0 if ok else 1)
EOF

echo "::: selfcheck in the image (read-only root, volume, uid 65532)"
if unshare --mount --net --propagation private "$self" __in_namespace "$work"; then
    pass "selfcheck in the image"
else
    fail "selfcheck in the image"
fi

echo "check.sh took $(( $(date +%s) - start ))s"
if [ "$failures" -gt 0 ]; then
    echo "check.sh: $failures failures"
    exit 1
fi
echo "check.sh: every check passed"
