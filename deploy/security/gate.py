#!/usr/bin/env python3
"""The release gate's checks that are not a tool's own: database age, severity threshold and
exceptions over cargo-deny's and cargo-audit's findings, the container image, the Kubernetes
manifests. deploy/security/gate.sh runs them; deploy/security/README.md describes them.

Each subcommand prints what it found and exits 0 (pass) or 1 (fail); 2 is a usage or input
error, which gate.sh counts as a failure too. Standard library only, plus the CVSS scorer built
from deploy/security/cvss-score.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import re
import stat
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# Bounds on what is read: a file beyond them is a failure, never silently skipped.
MAX_CONFIG_BYTES = 1 << 20  # gate.toml, exceptions.toml, an advisory, an OCI index/manifest
MAX_TOOL_OUTPUT_BYTES = 64 << 20  # cargo-deny's or cargo-audit's JSON
MAX_BLOB_BYTES = 4 << 30  # one image layer, compressed
MAX_SCANNED_FILE_BYTES = 512 << 20  # one file inside a layer

SEVERITY_LEVELS = ("fail", "report")


class InputError(Exception):
    """Input the gate cannot judge: malformed, oversized or missing. Fails the gate."""


def read_bounded(path: Path, limit: int) -> bytes:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from err
    if size > limit:
        raise InputError(f"{path}: {size} bytes, more than the {limit} this gate reads")
    return path.read_bytes()


def load_toml(path: Path) -> dict:
    try:
        return tomllib.loads(read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"{path}: not valid TOML: {err}") from err


# ---------------------------------------------------------------------------------------------
# gate.toml


@dataclass(frozen=True)
class GateConfig:
    max_db_age_days: int = 180
    min_cvss: float = 7.0
    unscored: str = "fail"
    unmaintained: str = "fail"
    unsound: str = "report"
    notice: str = "report"
    yanked: str = "fail"
    duplicates: str = "report"
    max_exception_days: int = 90
    public_values: tuple[str, ...] = ()

    @staticmethod
    def load(path: Path) -> "GateConfig":
        raw = load_toml(path)
        known = {"advisory_db", "vulnerabilities", "advisories", "bans", "exceptions", "image"}
        unknown = set(raw) - known
        if unknown:
            raise InputError(f"{path}: unknown sections {sorted(unknown)}")

        def section(name: str, keys: set[str]) -> dict:
            value = raw.get(name, {})
            if not isinstance(value, dict):
                raise InputError(f"{path}: [{name}] must be a table")
            extra = set(value) - keys
            if extra:
                raise InputError(f"{path}: [{name}] has unknown keys {sorted(extra)}")
            return value

        db = section("advisory_db", {"max_age_days"})
        vulns = section("vulnerabilities", {"min_cvss", "unscored"})
        advisories = section("advisories", {"unmaintained", "unsound", "notice", "yanked"})
        bans = section("bans", {"duplicates"})
        exceptions = section("exceptions", {"max_days"})
        image = section("image", {"public_values"})
        public = image.get("public_values", [])
        if not isinstance(public, list) or not all(
            isinstance(v, str) and 16 <= len(v) <= 256 for v in public
        ):
            raise InputError(f"{path}: [image] public_values must be strings of 16 to 256 characters")
        base = GateConfig()
        cfg = GateConfig(
            max_db_age_days=db.get("max_age_days", base.max_db_age_days),
            min_cvss=vulns.get("min_cvss", base.min_cvss),
            unscored=vulns.get("unscored", base.unscored),
            unmaintained=advisories.get("unmaintained", base.unmaintained),
            unsound=advisories.get("unsound", base.unsound),
            notice=advisories.get("notice", base.notice),
            yanked=advisories.get("yanked", base.yanked),
            duplicates=bans.get("duplicates", base.duplicates),
            max_exception_days=exceptions.get("max_days", base.max_exception_days),
            public_values=tuple(public),
        )
        for name in ("max_db_age_days", "max_exception_days"):
            value = getattr(cfg, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= 3650:
                raise InputError(f"{path}: {name} must be a whole number of days, 1 to 3650")
        if (
            not isinstance(cfg.min_cvss, (int, float))
            or isinstance(cfg.min_cvss, bool)
            or not 0.0 <= cfg.min_cvss <= 10.0
        ):
            raise InputError(f"{path}: min_cvss must be a number from 0.0 to 10.0")
        for name in ("unscored", "unmaintained", "unsound", "notice", "yanked", "duplicates"):
            if getattr(cfg, name) not in SEVERITY_LEVELS:
                raise InputError(f"{path}: {name} must be one of {SEVERITY_LEVELS}")
        return cfg


# ---------------------------------------------------------------------------------------------
# exceptions.toml

ADVISORY_ID = re.compile(r"^(RUSTSEC-\d{4}-\d{4}|CVE-\d{4}-\d{4,}|GHSA(-[23456789cfghjmpqrvwx]{4}){3})$")
CRATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass
class Exception_:
    index: int
    id: str | None
    crate: str | None
    version: str | None
    reason: str
    owner: str
    expires: dt.date
    used: bool = False

    def label(self) -> str:
        what = self.id or ""
        if self.crate:
            what += (" " if what else "") + self.crate + (f"@{self.version}" if self.version else "")
        return f"exception #{self.index} ({what}, owner {self.owner}, expires {self.expires})"

    def matches(self, finding: "Finding") -> bool:
        if self.id is not None and self.id != finding.advisory and self.id not in finding.aliases:
            return False
        if self.crate is not None and self.crate != finding.crate:
            return False
        if self.version is not None and self.version != finding.version:
            return False
        return True


def load_exceptions(path: Path, today: dt.date, max_days: int) -> tuple[list[Exception_], list[str]]:
    """The exceptions and the problems that fail the gate (expired, too far out, malformed)."""
    raw = load_toml(path)
    extra = set(raw) - {"exception"}
    if extra:
        raise InputError(f"{path}: unknown top-level keys {sorted(extra)}")
    entries = raw.get("exception", [])
    if not isinstance(entries, list):
        raise InputError(f"{path}: `exception` must be an array of tables ([[exception]])")
    exceptions: list[Exception_] = []
    problems: list[str] = []
    for index, entry in enumerate(entries, start=1):
        where = f"{path.name} exception #{index}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: not a table")
            continue
        unknown = set(entry) - {"id", "crate", "version", "reason", "owner", "expires"}
        if unknown:
            problems.append(f"{where}: unknown keys {sorted(unknown)}")
            continue
        adv, crate, version = entry.get("id"), entry.get("crate"), entry.get("version")
        reason, owner, expires = entry.get("reason"), entry.get("owner"), entry.get("expires")
        bad = []
        if adv is None and crate is None:
            bad.append("names neither an advisory `id` nor a `crate`")
        if adv is not None and (not isinstance(adv, str) or not ADVISORY_ID.match(adv)):
            bad.append("`id` is not an advisory id (RUSTSEC-YYYY-NNNN, CVE-…, GHSA-…)")
        if crate is not None and (not isinstance(crate, str) or not CRATE_NAME.match(crate)):
            bad.append("`crate` is not a crate name")
        if version is not None and (crate is None or not isinstance(version, str) or not version):
            bad.append("`version` needs a `crate` and must be a version string")
        if not isinstance(reason, str) or len(reason.strip()) < 10:
            bad.append("`reason` must say why (at least 10 characters)")
        if not isinstance(owner, str) or not owner.strip():
            bad.append("`owner` is required")
        if type(expires) is not dt.date:
            bad.append("`expires` must be a TOML date (YYYY-MM-DD)")
        if bad:
            problems.append(f"{where}: " + "; ".join(bad))
            continue
        exc = Exception_(index, adv, crate, version, reason.strip(), owner.strip(), expires)
        if expires < today:
            problems.append(f"{exc.label()}: expired on {expires}; fix the finding or renew it")
        elif (expires - today).days > max_days:
            problems.append(
                f"{exc.label()}: expires {(expires - today).days} days from today, "
                f"more than the {max_days} allowed"
            )
        else:
            exceptions.append(exc)
    return exceptions, problems


# ---------------------------------------------------------------------------------------------
# The advisory database


def db_date(db: Path) -> tuple[dt.date, str]:
    """The snapshot's date: its README's commit date, else the newest advisory's date."""
    readme = db / "README.md"
    if readme.is_file():
        text = read_bounded(readme, MAX_CONFIG_BYTES).decode("utf-8", "replace")
        found = re.search(r"^\s*-?\s*commit date:\s*(\d{4}-\d{2}-\d{2})\s*$", text, re.M | re.I)
        if found:
            return dt.date.fromisoformat(found.group(1)), "the snapshot's commit date (README.md)"
    newest = None
    for md in db.glob("crates/*/*.md"):
        head = read_bounded(md, MAX_CONFIG_BYTES).decode("utf-8", "replace")[:4096]
        for value in re.findall(r'^date\s*=\s*"(\d{4}-\d{2}-\d{2})"', head, re.M):
            day = dt.date.fromisoformat(value)
            newest = day if newest is None or day > newest else newest
    if newest is None:
        raise InputError(f"{db}: no commit date in README.md and no dated advisory under crates/")
    return newest, "the newest advisory's date"


def advisory_meta(db: Path, advisory: str, crate: str | None) -> dict:
    """The TOML front matter of an advisory in the snapshot, found by id."""
    candidates = [db / "crates" / crate / f"{advisory}.md"] if crate else []
    candidates += list(db.glob(f"crates/*/{advisory}.md")) + list(db.glob(f"rust/*/{advisory}.md"))
    for path in candidates:
        if path.is_file():
            text = read_bounded(path, MAX_CONFIG_BYTES).decode("utf-8")
            found = re.match(r"\s*```toml\n(.*?)\n```", text, re.S)
            if not found:
                raise InputError(f"{path}: no TOML front matter")
            return tomllib.loads(found.group(1)).get("advisory", {})
    return {}


class Scorer:
    """CVSS base scores, from the steward-cvss-score binary (the `cvss` crate)."""

    def __init__(self, binary: Path | None):
        self.binary = binary
        self.cache: dict[str, tuple[float, str]] = {}

    def score(self, vector: str) -> tuple[float, str]:
        if vector in self.cache:
            return self.cache[vector]
        if self.binary is None:
            raise InputError("a CVSS vector needs scoring and no scorer was given (--scorer)")
        try:
            out = subprocess.run(
                [str(self.binary)], input=vector.replace("\n", " ") + "\n", capture_output=True,
                text=True, timeout=30, check=True,
            ).stdout.strip()
        except OSError as err:
            raise InputError(f"the CVSS scorer {self.binary} cannot run: {err}") from err
        parts = out.split("\t")
        if len(parts) == 3 and parts[0] == "ok":
            self.cache[vector] = (float(parts[1]), parts[2])
            return self.cache[vector]
        raise InputError(f"CVSS vector {vector!r} does not parse: {out}")


# ---------------------------------------------------------------------------------------------
# Findings and the policy over them


@dataclass
class Finding:
    kind: str  # vulnerability, unmaintained, unsound, notice, yanked, licence, ban, duplicate, source, other
    crate: str | None
    version: str | None
    message: str
    advisory: str | None = None
    aliases: tuple[str, ...] = ()
    score: float | None = None
    severity: str | None = None
    fails: bool = True
    excepted_by: Exception_ | None = None
    via: str | None = None

    def describe(self) -> str:
        who = f"{self.crate} {self.version}" if self.crate else "(no crate)"
        what = f"{self.advisory} " if self.advisory else ""
        sev = ""
        if self.kind == "vulnerability":
            sev = f" [CVSS {self.score} {self.severity}]" if self.score is not None else " [no CVSS score]"
        path = f" (via {self.via})" if self.via else ""
        return f"{self.kind}: {who}: {what}{self.message}{sev}{path}"


@dataclass
class Verdict:
    failures: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)
    excepted: list[str] = field(default_factory=list)

    def print(self, title: str) -> int:
        print(f"{title}: {len(self.failures)} failing, {len(self.excepted)} excepted, "
              f"{len(self.reports)} reported")
        for line in self.failures:
            print(f"  FAIL   {line}")
        for line in self.excepted:
            print(f"  EXCEPT {line}")
        for line in self.reports:
            print(f"  report {line}")
        return 1 if self.failures else 0


def judge(findings: list[Finding], cfg: GateConfig) -> None:
    """Decides, for each finding, whether it fails the gate under gate.toml."""
    for f in findings:
        if f.kind == "vulnerability":
            if f.score is None:
                f.fails = cfg.unscored == "fail"
            else:
                f.fails = f.score >= cfg.min_cvss
        elif f.kind in ("unmaintained", "unsound", "notice", "yanked"):
            f.fails = getattr(cfg, f.kind) == "fail"
        elif f.kind == "duplicate":
            f.fails = cfg.duplicates == "fail"
        elif f.kind == "warning":
            f.fails = False
        else:
            f.fails = True


def apply_exceptions(findings: list[Finding], exceptions: list[Exception_], verdict: Verdict) -> None:
    for f in findings:
        if not f.fails:
            verdict.reports.append(f.describe())
            continue
        for exc in exceptions:
            if exc.matches(f):
                exc.used = True
                f.excepted_by = exc
                break
        if f.excepted_by:
            verdict.excepted.append(f"{f.describe()} -- {f.excepted_by.label()}: {f.excepted_by.reason}")
        else:
            verdict.failures.append(f.describe())


def report_unused(exceptions: list[Exception_], verdict: Verdict) -> None:
    for exc in exceptions:
        if not exc.used:
            verdict.reports.append(f"{exc.label()} matches no finding any more: remove it")


def score_advisory(f: Finding, cvss: str | None, scorer: Scorer) -> None:
    if cvss:
        f.score, f.severity = scorer.score(cvss)


ADVISORY_CODES = {"vulnerability", "unmaintained", "unsound", "notice"}
LICENCE_CODES = {"rejected", "unlicensed", "no-license-field", "parse-error", "missing-clarification-file"}
SOURCE_CODES = {"source-not-allowed", "git-source-underspecified", "unmatched-source", "unmatched-organization"}


def deny_findings(lines: list[dict], db: Path, scorer: Scorer) -> tuple[list[Finding], int]:
    """Findings from cargo-deny's JSON diagnostics (`--format json`), and how many were read."""
    findings: list[Finding] = []
    seen = 0
    for obj in lines:
        if obj.get("type") != "diagnostic":
            continue
        seen += 1
        before = len(findings)
        fields = obj.get("fields", {})
        severity = fields.get("severity")
        code = fields.get("code")
        message = str(fields.get("message", ""))[:300]
        crate, version, via = graph_crate(fields.get("graphs"))
        if code in ADVISORY_CODES:
            adv = fields.get("advisory") or {}
            f = Finding(code, crate, version, message, adv.get("id"),
                        tuple(adv.get("aliases") or ()))
            cvss = adv.get("cvss")
            if cvss is None and adv.get("id"):
                cvss = advisory_meta(db, adv["id"], crate).get("cvss")
            score_advisory(f, cvss, scorer)
            findings.append(f)
        elif code == "yanked":
            findings.append(Finding("yanked", crate, version, message))
        elif code == "index-failure":
            # The registry index cache did not say whether this version is yanked: under
            # `yanked = "fail"` an unknown answer fails too (`cargo fetch` fills the cache).
            findings.append(Finding("yanked", crate, version, f"yanked status unknown: {message}"))
        elif code == "duplicate":
            findings.append(Finding("duplicate", crate, version, message))
        elif code in LICENCE_CODES:
            findings.append(Finding("licence", crate, version, message))
        elif code in SOURCE_CODES:
            findings.append(Finding("source", crate, version, message))
        elif code in ("banned", "not-allowed", "wildcard", "build-script-not-allowed"):
            findings.append(Finding("ban", crate, version, message))
        elif severity == "error":
            # Anything else cargo-deny calls an error (a config it rejects, a database it could
            # not open, an unknown new check) fails closed.
            findings.append(Finding("other", crate, version, f"[{code}] {message}"))
        elif severity == "warning":
            findings.append(Finding("warning", crate, version, f"[{code}] {message}"))
        if len(findings) > before and via:
            findings[-1].via = via
    return findings, seen


def graph_crate(graphs) -> tuple[str | None, str | None, str | None]:
    """The crate a cargo-deny diagnostic is about, its version(s), and one path to it from a
    workspace crate (`a <- b <- steward-api`), from the diagnostic's inclusion graphs."""
    if not isinstance(graphs, list) or not graphs or not isinstance(graphs[0], dict):
        return None, None, None

    def krate(node: dict) -> dict:
        inner = node.get("Krate")
        return inner if isinstance(inner, dict) else node

    first = krate(graphs[0])
    versions = [str(krate(g).get("version")) for g in graphs if isinstance(g, dict)]
    chain = []
    node = graphs[0]
    while isinstance(node, dict) and len(chain) < 12:
        chain.append(str(krate(node).get("name")))
        parents = node.get("parents") or []
        node = parents[0] if parents else None
    via = " <- ".join(chain[1:]) if len(chain) > 1 else None
    return first.get("name"), ", ".join(versions) if versions else None, via


def audit_findings(report: dict, db: Path, scorer: Scorer) -> list[Finding]:
    """Findings from `cargo audit --json` (also for `cargo audit bin`)."""
    findings: list[Finding] = []
    vulns = report.get("vulnerabilities")
    if not isinstance(vulns, dict) or not isinstance(vulns.get("list"), list):
        raise InputError("cargo-audit's JSON has no vulnerabilities list")
    for item in vulns["list"]:
        adv, pkg = item.get("advisory", {}), item.get("package", {})
        f = Finding("vulnerability", pkg.get("name"), pkg.get("version"), str(adv.get("title", ""))[:300],
                    adv.get("id"), tuple(adv.get("aliases") or ()))
        score_advisory(f, adv.get("cvss") or advisory_meta(db, adv.get("id", ""), f.crate).get("cvss"), scorer)
        findings.append(f)
    for kind, items in (report.get("warnings") or {}).items():
        for item in items or []:
            adv, pkg = item.get("advisory") or {}, item.get("package", {})
            k = item.get("kind", kind)
            k = k if k in ("unmaintained", "unsound", "notice", "yanked") else "other"
            findings.append(Finding(k, pkg.get("name"), pkg.get("version"),
                                    str(adv.get("title", k))[:300], adv.get("id"),
                                    tuple(adv.get("aliases") or ())))
    return findings


def read_json_lines(path: Path) -> list[dict]:
    out = []
    for raw in read_bounded(path, MAX_TOOL_OUTPUT_BYTES).decode("utf-8", "replace").splitlines():
        raw = raw.strip()
        if raw.startswith("{"):
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
    return out


# ---------------------------------------------------------------------------------------------
# The container image

SHELLS = {"sh", "bash", "ash", "dash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox", "toybox"}
PACKAGE_MANAGERS = {"apt", "apt-get", "aptitude", "dpkg", "apk", "rpm", "yum", "dnf", "microdnf",
                    "zypper", "pacman", "emerge", "pip", "pip3", "npm", "gem", "opkg", "nix-env"}
BIN_DIRS = {"bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"}

SECRET_NAMES = [
    (re.compile(r"^id_(rsa|dsa|ecdsa|ed25519)$"), "an SSH private key file"),
    (re.compile(r"\.(key|p12|pfx|jks|keystore|kdbx)$"), "a key store file"),
    (re.compile(r"^\.(env|netrc|npmrc|pypirc|git-credentials|pgpass)$"), "a credentials file"),
    (re.compile(r"^(master_key|ops_token|postgres_url|postgres_migrate_url)$"), "a Steward secret file"),
]
SECRET_PATHS = [
    (re.compile(r"(^|/)\.aws/credentials$"), "cloud credentials"),
    (re.compile(r"(^|/)\.docker/config\.json$"), "registry credentials"),
    (re.compile(r"(^|/)\.ssh/[^/]+$"), "a file under .ssh"),
]
SECRET_CONTENT = [
    (re.compile(rb"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----\s*[A-Za-z0-9+/=\r\n]{64}"), "a PEM private key"),
    (re.compile(rb"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "a cloud access key id"),
    (re.compile(rb"\bxox[abposr]-[0-9]{6,}-[0-9A-Za-z-]{10,}"), "a Slack token"),
    (re.compile(rb"\bgh[pousr]_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{60,}"), "a code host token"),
    (re.compile(rb"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,}"), "an LLM provider key"),
    (re.compile(rb"\bwhsec_[A-Za-z0-9+/]{24,}"), "a webhook signing secret"),
    (re.compile(rb"\bstw_[0-9a-f]{64}\b"), "a Steward API token"),
    (re.compile(rb"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,}"), "a JWT"),
    (re.compile(rb"\bAIza[0-9A-Za-z_-]{35}\b"), "a cloud API key"),
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "tar",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
}
DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class Layout:
    def __init__(self, root: Path):
        self.root = root
        marker = root / "oci-layout"
        if not marker.is_file():
            raise InputError(f"{root}: no oci-layout file: not an OCI image layout")
        try:
            version = json.loads(read_bounded(marker, MAX_CONFIG_BYTES)).get("imageLayoutVersion")
        except json.JSONDecodeError as err:
            raise InputError(f"{marker}: not JSON: {err}") from err
        if version != "1.0.0":
            raise InputError(f"{marker}: imageLayoutVersion {version!r}, expected 1.0.0")

    def blob_path(self, descriptor: dict) -> Path:
        digest = descriptor.get("digest", "")
        found = DIGEST.match(digest) if isinstance(digest, str) else None
        if not found:
            raise InputError(f"descriptor digest {digest!r} is not a sha256 digest")
        path = self.root / "blobs" / "sha256" / found.group(1)
        if not path.is_file():
            raise InputError(f"blob {digest} is missing from the layout")
        size = path.stat().st_size
        if size > MAX_BLOB_BYTES:
            raise InputError(f"blob {digest}: {size} bytes, more than the gate reads")
        if isinstance(descriptor.get("size"), int) and descriptor["size"] != size:
            raise InputError(f"blob {digest}: {size} bytes, the descriptor says {descriptor['size']}")
        return path

    def verified(self, descriptor: dict, limit: int) -> bytes:
        path = self.blob_path(descriptor)
        data = read_bounded(path, limit)
        if hashlib.sha256(data).hexdigest() != descriptor["digest"].split(":", 1)[1]:
            raise InputError(f"blob {descriptor['digest']} does not match its digest")
        return data

    def json_blob(self, descriptor: dict) -> dict:
        try:
            value = json.loads(self.verified(descriptor, MAX_CONFIG_BYTES))
        except json.JSONDecodeError as err:
            raise InputError(f"blob {descriptor.get('digest')}: not JSON: {err}") from err
        if not isinstance(value, dict):
            raise InputError(f"blob {descriptor.get('digest')}: not a JSON object")
        return value

    def manifests(self) -> list[dict]:
        """Every image manifest reachable from index.json (nested indexes followed)."""
        try:
            index = json.loads(read_bounded(self.root / "index.json", MAX_CONFIG_BYTES))
        except json.JSONDecodeError as err:
            raise InputError(f"index.json: not JSON: {err}") from err
        out: list[dict] = []
        todo = list(index.get("manifests") or [])
        if not todo:
            raise InputError("index.json lists no manifest")
        steps = 0
        seen: set[str] = set()
        while todo:
            steps += 1
            if steps > 256:
                raise InputError("index.json: more than 256 manifests and indexes")
            desc = todo.pop(0)
            if not isinstance(desc, dict):
                raise InputError("index.json: a manifest entry is not an object")
            # Two tags of one image name the same manifest: it is checked once.
            if desc.get("digest") in seen:
                continue
            seen.add(desc.get("digest"))
            media = desc.get("mediaType")
            if media in (OCI_INDEX, DOCKER_LIST):
                todo.extend(self.json_blob(desc).get("manifests") or [])
            elif media in (OCI_MANIFEST, DOCKER_MANIFEST):
                out.append(self.json_blob(desc))
            else:
                raise InputError(f"index.json: unsupported media type {media!r}")
        return out


def layer_members(layout: Layout, desc: dict):
    """(member, content or None) for every entry of one layer."""
    kind = LAYER_TYPES.get(desc.get("mediaType"))
    if kind is None:
        raise InputError(f"layer {desc.get('digest')}: unsupported media type {desc.get('mediaType')!r}")
    if kind == "zstd":
        raise InputError(f"layer {desc.get('digest')}: zstd layers cannot be read by this gate")
    path = layout.blob_path(desc)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != desc["digest"].split(":", 1)[1]:
        raise InputError(f"layer {desc['digest']} does not match its digest")
    raw = path.open("rb")
    stream = gzip.GzipFile(fileobj=raw) if kind == "gzip" else raw
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                content = None
                if member.isreg():
                    if member.size > MAX_SCANNED_FILE_BYTES:
                        raise InputError(f"layer {desc['digest']}: {member.name} is too large to scan")
                    content = tar.extractfile(member).read()
                yield member, content
    except (tarfile.TarError, OSError, EOFError) as err:
        raise InputError(f"layer {desc.get('digest')}: not a readable tar: {err}") from err
    finally:
        raw.close()


def norm(name: str) -> str:
    return str(PurePosixPath("/" + name.lstrip("./"))).lstrip("/")


def without_public(content: bytes, public: tuple[str, ...]) -> tuple[bytes, int]:
    """The content with every occurrence of a known public value blanked, and how many there were."""
    seen = 0
    for value in public:
        raw = value.encode()
        count = content.count(raw)
        if count:
            seen += count
            content = content.replace(raw, b"\0" * len(raw))
    return content, seen


def secret_hits(name: str, content: bytes | None) -> list[str]:
    hits = []
    base = PurePosixPath(name).name
    for pattern, what in SECRET_NAMES:
        if pattern.search(base):
            hits.append(what)
    for pattern, what in SECRET_PATHS:
        if pattern.search(name):
            hits.append(what)
    if content:
        for pattern, what in SECRET_CONTENT:
            if pattern.search(content):
                hits.append(f"{what} in its content")
    return hits


def user_is_root(user: str, passwd: bytes | None) -> str | None:
    """Why the image's `User` is root (or cannot be shown not to be), or None."""
    if not user:
        return "no User is set: the container would run as root"
    name = user.split(":", 1)[0]
    if name.isdigit():
        return "User is uid 0" if int(name) == 0 else None
    if name == "root":
        return "User is root"
    if passwd is None:
        return f"User {name!r} is a name and the image has no /etc/passwd to resolve it"
    for line in passwd.decode("utf-8", "replace").splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] == name:
            return f"User {name!r} has uid 0" if parts[2] == "0" else None
    return f"User {name!r} is not in the image's /etc/passwd"


def check_image(oci: Path, binary: Path | None, public: tuple[str, ...] = ()) -> Verdict:
    verdict = Verdict()
    layout = Layout(oci)
    manifests = layout.manifests()
    binary_sha = hashlib.sha256(binary.read_bytes()).hexdigest() if binary else None
    for number, manifest in enumerate(manifests, start=1):
        config = layout.json_blob(manifest.get("config") or {})
        where = f"image manifest {number}"
        files: dict[str, str] = {}  # path -> "file" | "link" | "dir", after whiteouts
        contents: dict[str, bytes] = {}
        binary_found = False
        layers = manifest.get("layers") or []
        if not layers:
            verdict.failures.append(f"{where}: has no layers")
        for desc in layers:
            short = desc.get("digest", "?")[:19]
            for member, content in layer_members(layout, desc):
                path = norm(member.name)
                base = PurePosixPath(path).name
                parent = str(PurePosixPath(path).parent)
                if base == ".wh..wh..opq":
                    for p in [p for p in files if p.startswith(parent + "/")]:
                        files.pop(p)
                    continue
                if base.startswith(".wh."):
                    gone = str(PurePosixPath(parent) / base[4:]).lstrip("./")
                    for p in [p for p in files if p == gone or p.startswith(gone + "/")]:
                        files.pop(p)
                    continue
                files[path] = "dir" if member.isdir() else "link" if (member.issym() or member.islnk()) else "file"
                scanned = content
                if content is not None and public:
                    scanned, seen = without_public(content, public)
                    if seen:
                        verdict.reports.append(
                            f"{where}: /{path}: {seen} known public value(s) from gate.toml, not secrets"
                        )
                hits = secret_hits(path, scanned)
                if hits:
                    verdict.failures.append(f"{where}: layer {short}: /{path}: {', '.join(hits)}")
                if content is not None and path in ("etc/passwd",):
                    contents[path] = content
                if content is not None and member.mode & stat.S_IXUSR and binary_sha:
                    binary_found |= hashlib.sha256(content).hexdigest() == binary_sha
        for path, kind in sorted(files.items()):
            p = PurePosixPath(path)
            if kind != "dir" and str(p.parent) in BIN_DIRS:
                if p.name in SHELLS:
                    verdict.failures.append(f"{where}: /{path}: a shell")
                elif p.name in PACKAGE_MANAGERS:
                    verdict.failures.append(f"{where}: /{path}: a package manager")
        user = str((config.get("config") or {}).get("User") or "")
        why = user_is_root(user, contents.get("etc/passwd") if "etc/passwd" in files else None)
        if why:
            verdict.failures.append(f"{where}: {why}")
        else:
            verdict.reports.append(f"{where}: runs as User {user!r}")
        if binary_sha and not binary_found:
            verdict.failures.append(
                f"{where}: no executable in the image is the scanned binary {binary}: "
                "the binary scan would not cover what ships"
            )
        verdict.reports.append(f"{where}: {len(layers)} layers, {len(files)} paths")
    return verdict


# ---------------------------------------------------------------------------------------------
# Kubernetes manifests

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return ((((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}
    return ((spec.get("template") or {}).get("spec")) or {}


def check_k8s(root: Path) -> Verdict:
    try:
        import yaml  # PyYAML: the system's python3-yaml, or the manifests venv's
    except ImportError as err:
        raise InputError("PyYAML is needed to read the manifests (python3-yaml)") from err
    verdict = Verdict()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml"))
    base_containers: set[str] = set()
    checked = 0
    for path in files:
        rel = path.relative_to(root)
        try:
            docs = list(yaml.safe_load_all(read_bounded(path, MAX_CONFIG_BYTES)))
        except yaml.YAMLError as err:
            raise InputError(f"{path}: not YAML: {err}") from err
        is_patch = "overlays" in rel.parts
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") not in WORKLOADS:
                continue
            spec = pod_spec(doc) or {}
            for group in ("initContainers", "containers", "ephemeralContainers"):
                for c in spec.get(group) or []:
                    name = c.get("name", "?")
                    ro = (c.get("securityContext") or {}).get("readOnlyRootFilesystem")
                    label = f"{rel}: {doc['kind']} {doc.get('metadata', {}).get('name')} container {name}"
                    if ro is False:
                        verdict.failures.append(f"{label}: sets readOnlyRootFilesystem: false")
                    elif ro is not True and not (is_patch and name in base_containers):
                        verdict.failures.append(f"{label}: does not set readOnlyRootFilesystem: true")
                    else:
                        checked += 1
                    if not is_patch:
                        base_containers.add(name)
    if checked == 0 and not verdict.failures:
        verdict.failures.append(f"{root}: no workload container found to check")
    verdict.reports.append(f"{checked} container entries checked in {len(files)} files")
    return verdict


# ---------------------------------------------------------------------------------------------
# Commands


def today_arg(value: str | None) -> dt.date:
    return dt.date.fromisoformat(value) if value else dt.datetime.now(dt.timezone.utc).date()


def cmd_db_age(args) -> int:
    cfg = GateConfig.load(args.gate)
    day, source = db_date(args.db)
    age = (today_arg(args.today) - day).days
    print(f"advisory database {args.db}: dated {day} ({source}), {age} days old, "
          f"limit {cfg.max_db_age_days}")
    if age > cfg.max_db_age_days:
        print(f"  FAIL   the database is older than {cfg.max_db_age_days} days: refresh the snapshot")
        return 1
    if age < 0:
        print("  FAIL   the database is dated in the future: the snapshot or the clock is wrong")
        return 1
    return 0


def evaluate(findings: list[Finding], args, title: str) -> int:
    cfg = GateConfig.load(args.gate)
    exceptions, problems = load_exceptions(args.exceptions, today_arg(args.today), cfg.max_exception_days)
    judge(findings, cfg)
    verdict = Verdict(failures=list(problems))
    apply_exceptions(findings, exceptions, verdict)
    if not args.no_unused:
        report_unused(exceptions, verdict)
    return verdict.print(title)


def cmd_deny(args) -> int:
    lines = read_json_lines(args.output)
    findings, seen = deny_findings(lines, args.db, Scorer(args.scorer))
    status = evaluate(findings, args, f"cargo-deny ({seen} diagnostics)")
    summaries = [obj.get("fields") or {} for obj in lines if obj.get("type") == "summary"]
    checks = summaries[-1] if summaries else {}
    wanted = set(args.checks.split(","))
    if not wanted or set(checks) != wanted:
        print(f"  FAIL   cargo-deny did not finish the checks {sorted(wanted)} (exit status "
              f"{args.tool_status}); its output is in {args.output}")
        return 1
    errors = sum(int((c or {}).get("errors", 0)) for c in checks.values())
    if args.tool_status != 0 and errors == 0:
        print(f"  FAIL   cargo-deny exited {args.tool_status} without reporting an error")
        return 1
    print("  checks " + ", ".join(f"{name}: {c.get('errors', 0)} errors, {c.get('warnings', 0)} warnings"
                                  for name, c in sorted(checks.items())))
    if args.expect:
        def met(expected: str) -> bool:
            kind, _, name = expected.rpartition(":")
            return any((f.advisory == name or f.crate == name) and (not kind or f.kind == kind)
                       and f.fails and not f.excepted_by for f in findings)

        missing = [e for e in args.expect if not met(e)]
        if missing or status == 0:
            print(f"  FAIL   expected {args.expect} to fail the check; missing: {missing}")
            return 1
        print(f"  pass   the check failed on {args.expect}, as expected")
        return 0
    return status


def elf_sections(path: Path) -> list[str]:
    """The section names of a 64-bit little-endian ELF file."""
    import struct

    data = read_bounded(path, MAX_SCANNED_FILE_BYTES)
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise InputError(f"{path}: not a 64-bit little-endian ELF executable")
    try:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        if shentsize != 64 or shnum > 4096 or shstrndx >= shnum:
            raise InputError(f"{path}: implausible ELF section table")

        def header(i: int) -> tuple[int, int, int]:
            name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
            return name, offset, size

        _, str_off, str_size = header(shstrndx)
        strings = data[str_off:str_off + str_size]
        names = []
        for i in range(shnum):
            name = header(i)[0]
            end = strings.find(b"\0", name)
            names.append(strings[name:end].decode("ascii", "replace"))
        return names
    except struct.error as err:
        raise InputError(f"{path}: truncated ELF file: {err}") from err


def cmd_audit(args) -> int:
    if args.binary is not None and ".dep-v0" not in elf_sections(args.binary):
        print(f"  FAIL   {args.binary} carries no embedded dependency list (.dep-v0): "
              "build it with `cargo auditable` (deploy/image/build.sh does)")
        return 1
    try:
        report = json.loads(read_bounded(args.output, MAX_TOOL_OUTPUT_BYTES))
    except json.JSONDecodeError as err:
        raise InputError(f"{args.output}: cargo-audit's output is not JSON: {err}") from err
    findings = audit_findings(report, args.db, Scorer(args.scorer))
    deps = (report.get("lockfile") or {}).get("dependency-count")
    if not isinstance(deps, int) or deps < 1:
        print("  FAIL   cargo-audit found no dependency list in the binary (not built with cargo auditable?)")
        return 1
    return evaluate(findings, args, f"cargo-audit bin ({deps} dependencies embedded)")


def cmd_image(args) -> int:
    cfg = GateConfig.load(args.gate)
    return check_image(args.oci, args.binary, cfg.public_values).print(f"image {args.oci}")


def cmd_k8s(args) -> int:
    return check_k8s(args.dir).print(f"manifests {args.dir}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def policy(p):
        p.add_argument("--gate", type=Path, required=True)
        p.add_argument("--exceptions", type=Path, required=True)
        p.add_argument("--db", type=Path, required=True)
        p.add_argument("--scorer", type=Path)
        p.add_argument("--today")
        p.add_argument("--no-unused", action="store_true", help="do not report unused exceptions")

    p = sub.add_parser("db-age")
    p.add_argument("--gate", type=Path, required=True)
    p.add_argument("--db", type=Path, required=True)
    p.add_argument("--today")
    p.set_defaults(run=cmd_db_age)
    p = sub.add_parser("deny")
    policy(p)
    p.add_argument("--output", type=Path, required=True, help="cargo-deny's JSON lines")
    p.add_argument("--tool-status", type=int, default=0)
    p.add_argument("--checks", default="advisories,bans,licenses,sources",
                   help="the cargo-deny checks that must have run (comma-separated)")
    p.add_argument("--expect", action="append", help="[KIND:]ID: an advisory id or crate name (of a finding of that kind) that must fail the check")
    p.set_defaults(run=cmd_deny)
    p = sub.add_parser("audit")
    policy(p)
    p.add_argument("--output", type=Path, required=True, help="cargo-audit's JSON")
    p.add_argument("--binary", type=Path, help="the scanned binary: must embed its dependency list")
    p.set_defaults(run=cmd_audit)
    p = sub.add_parser("image")
    p.add_argument("--oci", type=Path, required=True)
    p.add_argument("--gate", type=Path, required=True)
    p.add_argument("--binary", type=Path)
    p.set_defaults(run=cmd_image)
    p = sub.add_parser("k8s")
    p.add_argument("--dir", type=Path, required=True)
    p.set_defaults(run=cmd_k8s)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except InputError as err:
        print(f"  FAIL   {err}")
        return 2
    except subprocess.SubprocessError as err:
        print(f"  FAIL   the CVSS scorer failed: {err}")
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
