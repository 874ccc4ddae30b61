"""Tests of gate.py: `python3 -m unittest discover -s deploy/security -p 'test_*.py'`.

gate.sh runs them as part of the gate's self-test. CVSS scoring itself is tested in
cvss-score (cargo test); here a table of known scores stands in for the scorer.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import tarfile
import tempfile
import textwrap
import unittest
from pathlib import Path

import gate

TODAY = dt.date(2026, 12, 4)


class TableScorer:
    """Scores from a fixed table; a vector not in it is an error, as in the real scorer."""

    TABLE = {
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H": (9.8, "critical"),
        "CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:N/I:N/A:H": (5.9, "medium"),
        "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H": (7.5, "high"),
    }

    def score(self, vector):
        if vector not in self.TABLE:
            raise gate.InputError(f"CVSS vector {vector!r} does not parse")
        return self.TABLE[vector]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


class ConfigTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())

    def test_defaults_and_the_committed_file_agree(self):
        committed = gate.GateConfig.load(Path(__file__).with_name("gate.toml"))
        self.assertEqual(committed, gate.GateConfig(public_values=committed.public_values))
        self.assertEqual(committed.min_cvss, 7.0)
        self.assertEqual(committed.max_db_age_days, 180)

    def test_malformed_configs_are_refused(self):
        for body in [
            "[vulnerabilities]\nmin_cvss = 11.0\n",
            "[vulnerabilities]\nmin_cvss = \"high\"\n",
            "[vulnerabilities]\nunscored = \"ignore\"\n",
            "[advisory_db]\nmax_age_days = 0\n",
            "[advisory_db]\nmax_age_days = true\n",
            "[advisories]\nunmaintaned = \"fail\"\n",
            "[surprise]\n",
            "[image]\npublic_values = [\"short\"]\n",
            "[image]\npublic_values = \"xoxb-1234567890-1234567890-abc\"\n",
            "advisory_db = 3\n",
            "not toml at all [[[",
        ]:
            with self.subTest(body=body), self.assertRaises(gate.InputError):
                gate.GateConfig.load(write(self.dir / "gate.toml", body))

    def test_an_oversized_config_is_refused(self):
        path = self.dir / "gate.toml"
        path.write_text("# " + "x" * (gate.MAX_CONFIG_BYTES + 1))
        with self.assertRaises(gate.InputError):
            gate.GateConfig.load(path)


class ExceptionTests(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp())

    def load(self, body):
        return gate.load_exceptions(write(self.dir / "exceptions.toml", body), TODAY, 90)

    def test_the_committed_file_is_valid(self):
        _, problems = gate.load_exceptions(Path(__file__).with_name("exceptions.toml"),
                                           dt.date.today(), 90)
        self.assertEqual(problems, [])

    def test_a_valid_exception_loads(self):
        exceptions, problems = self.load("""
            [[exception]]
            id = "RUSTSEC-2024-0436"
            reason = "only used at build time by a proc macro"
            owner = "platform team"
            expires = 2027-01-15
        """)
        self.assertEqual(problems, [])
        self.assertEqual(exceptions[0].id, "RUSTSEC-2024-0436")

    def test_expired_and_too_distant_exceptions_fail(self):
        exceptions, problems = self.load("""
            [[exception]]
            id = "RUSTSEC-2024-0001"
            reason = "it was fine until yesterday"
            owner = "a"
            expires = 2026-12-03
            [[exception]]
            crate = "paste"
            reason = "ninety-one days is one too many"
            owner = "b"
            expires = 2027-03-05
            [[exception]]
            crate = "paste"
            reason = "exactly ninety days is allowed"
            owner = "c"
            expires = 2027-03-04
        """)
        self.assertEqual(len(problems), 2, problems)
        self.assertIn("expired on 2026-12-03", problems[0])
        self.assertIn("91 days", problems[1])
        self.assertEqual([e.owner for e in exceptions], ["c"])

    def test_malformed_exceptions_are_problems(self):
        for body in [
            '[[exception]]\nreason = "no id and no crate here"\nowner = "a"\nexpires = 2027-01-01\n',
            '[[exception]]\nid = "RUSTSEC-1"\nreason = "bad id shape given"\nowner = "a"\nexpires = 2027-01-01\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "short"\nowner = "a"\nexpires = 2027-01-01\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "no owner is given"\nexpires = 2027-01-01\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "expiry is a string"\nowner = "a"\nexpires = "2027-01-01"\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "expiry is a datetime"\nowner = "a"\nexpires = 2027-01-01T00:00:00Z\n',
            '[[exception]]\ncrate = "../etc"\nreason = "crate is a path here"\nowner = "a"\nexpires = 2027-01-01\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "version without a crate"\nowner = "a"\nexpires = 2027-01-01\nversion = "1"\n',
            '[[exception]]\nid = "RUSTSEC-2024-0001"\nreason = "an unknown key is here"\nowner = "a"\nexpires = 2027-01-01\nseverity = "low"\n',
        ]:
            with self.subTest(body=body):
                exceptions, problems = self.load(body)
                self.assertEqual(exceptions, [])
                self.assertEqual(len(problems), 1, problems)
        with self.assertRaises(gate.InputError):
            self.load("exception = 3\n")
        with self.assertRaises(gate.InputError):
            self.load("[other]\n")

    def test_matching_by_id_alias_crate_and_version(self):
        exc = gate.Exception_(1, "CVE-2021-25900", None, None, "reason given", "o", TODAY)
        f = gate.Finding("vulnerability", "smallvec", "1.6.0", "m", "RUSTSEC-2021-0003",
                         ("CVE-2021-25900",))
        self.assertTrue(exc.matches(f))
        pinned = gate.Exception_(2, None, "smallvec", "1.6.1", "reason given", "o", TODAY)
        self.assertFalse(pinned.matches(f))
        both = gate.Exception_(3, "RUSTSEC-2021-0003", "other", None, "reason given", "o", TODAY)
        self.assertFalse(both.matches(f))


class PolicyTests(unittest.TestCase):
    def findings(self):
        critical = gate.Finding("vulnerability", "a", "1", "m", "RUSTSEC-2021-0001", score=9.8)
        medium = gate.Finding("vulnerability", "b", "1", "m", "RUSTSEC-2021-0002", score=5.9)
        unscored = gate.Finding("vulnerability", "c", "1", "m", "RUSTSEC-2021-0003")
        unmaintained = gate.Finding("unmaintained", "d", "1", "m", "RUSTSEC-2021-0004")
        unsound = gate.Finding("unsound", "e", "1", "m", "RUSTSEC-2021-0005")
        licence = gate.Finding("licence", "f", "1", "GPL-3.0 rejected")
        dup = gate.Finding("duplicate", "g", "1", "found 2 duplicate entries")
        return [critical, medium, unscored, unmaintained, unsound, licence, dup]

    def test_the_default_threshold(self):
        fs = self.findings()
        gate.judge(fs, gate.GateConfig())
        self.assertEqual([f.fails for f in fs], [True, False, True, True, False, True, False])

    def test_exactly_the_threshold_fails(self):
        f = gate.Finding("vulnerability", "a", "1", "m", "RUSTSEC-2021-0001", score=7.0)
        gate.judge([f], gate.GateConfig())
        self.assertTrue(f.fails)
        gate.judge([f], gate.GateConfig(min_cvss=7.1))
        self.assertFalse(f.fails)

    def test_exceptions_let_findings_through_and_unused_ones_are_reported(self):
        fs = self.findings()
        gate.judge(fs, gate.GateConfig())
        used = gate.Exception_(1, "RUSTSEC-2021-0004", None, None, "replacement under way", "o", TODAY)
        unused = gate.Exception_(2, "RUSTSEC-2020-0001", None, None, "long since fixed", "o", TODAY)
        verdict = gate.Verdict()
        gate.apply_exceptions(fs, [used, unused], verdict)
        gate.report_unused([used, unused], verdict)
        self.assertEqual(len(verdict.failures), 3)
        self.assertEqual(len(verdict.excepted), 1)
        self.assertTrue(any("matches no finding" in r and "#2" in r for r in verdict.reports))
        self.assertFalse(any("#1" in r for r in verdict.reports))

    def test_a_below_threshold_finding_does_not_use_an_exception(self):
        f = gate.Finding("vulnerability", "b", "1", "m", "RUSTSEC-2021-0002", score=5.9)
        gate.judge([f], gate.GateConfig())
        exc = gate.Exception_(1, "RUSTSEC-2021-0002", None, None, "reason given", "o", TODAY)
        verdict = gate.Verdict()
        gate.apply_exceptions([f], [exc], verdict)
        self.assertEqual(verdict.failures, [])
        self.assertFalse(exc.used)


class DenyOutputTests(unittest.TestCase):
    def setUp(self):
        self.db = Path(tempfile.mkdtemp())
        write(self.db / "crates" / "c" / "RUSTSEC-2021-0007.md", """\
            ```toml
            [advisory]
            id = "RUSTSEC-2021-0007"
            package = "c"
            date = "2021-03-01"
            cvss = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"
            ```

            # Title
        """)

    def diag(self, code, severity="error", advisory=None, name="c", version="1.0.0"):
        fields = {"severity": severity, "code": code, "message": "msg",
                  "graphs": [{"Krate": {"name": name, "version": version},
                              "parents": [{"Krate": {"name": "mid", "version": "2.0.0"},
                                           "parents": [{"Krate": {"name": "steward-api", "version": "0.1.0"}}]}]}]}
        if advisory:
            fields["advisory"] = advisory
        return {"type": "diagnostic", "fields": fields}

    def test_diagnostics_become_findings(self):
        lines = [
            {"type": "log", "fields": {"message": "ignored"}},
            self.diag("vulnerability", advisory={"id": "RUSTSEC-2021-0007", "cvss": None, "aliases": []}),
            self.diag("unmaintained", advisory={"id": "RUSTSEC-2024-0001"}),
            self.diag("rejected", name="gpl"),
            self.diag("duplicate", severity="warning"),
            self.diag("source-not-allowed"),
            self.diag("banned", name="backoff"),
            self.diag("a-new-check"),
            self.diag("a-new-warning", severity="warning"),
            self.diag("index-failure", severity="warning"),
            self.diag("advisory-ignored", severity="note"),
        ]
        findings, seen = gate.deny_findings(lines, self.db, TableScorer())
        self.assertEqual(seen, 10)
        kinds = [f.kind for f in findings]
        self.assertEqual(kinds, ["vulnerability", "unmaintained", "licence", "duplicate",
                                 "source", "ban", "other", "warning", "yanked"])
        gate.judge(findings, gate.GateConfig())
        self.assertEqual([f.fails for f in findings],
                         [True, True, True, False, True, True, True, False, True])
        # The vector came from the snapshot, since cargo-deny's JSON carried none.
        self.assertEqual(findings[0].score, 7.5)
        self.assertEqual((findings[0].crate, findings[0].version), ("c", "1.0.0"))
        self.assertEqual(findings[0].via, "mid <- steward-api")
        self.assertEqual(gate.graph_crate("junk"), (None, None, None))
        self.assertEqual(gate.graph_crate([{"Krate": {"name": "d", "version": "1"}},
                                           {"Krate": {"name": "d", "version": "2"}}])[:2], ("d", "1, 2"))

    def test_non_json_lines_are_skipped_and_an_unparseable_vector_is_an_error(self):
        path = self.db / "out.json"
        path.write_text("plain text\n{not json\n" + json.dumps(self.diag("yanked")) + "\n")
        lines = gate.read_json_lines(path)
        self.assertEqual(len(lines), 1)
        bad = self.diag("vulnerability", advisory={"id": "RUSTSEC-2021-0008", "cvss": "CVSS:3.1/AV:Q"})
        with self.assertRaises(gate.InputError):
            gate.deny_findings([bad], self.db, TableScorer())

    def test_db_date_from_readme_or_newest_advisory(self):
        day, source = gate.db_date(self.db)
        self.assertEqual(day, dt.date(2021, 3, 1))
        self.assertIn("newest advisory", source)
        write(self.db / "README.md", "# snapshot\n\n- upstream commit: abc\n- commit date: 2026-08-21\n")
        self.assertEqual(gate.db_date(self.db)[0], dt.date(2026, 8, 21))
        with self.assertRaises(gate.InputError):
            gate.db_date(Path(tempfile.mkdtemp()))

    def test_audit_output(self):
        report = {
            "lockfile": {"dependency-count": 3},
            "vulnerabilities": {"found": True, "count": 1, "list": [{
                "advisory": {"id": "RUSTSEC-2021-0003", "title": "t", "aliases": [],
                             "cvss": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"},
                "package": {"name": "smallvec", "version": "1.6.0"}}]},
            "warnings": {"unmaintained": [{"kind": "unmaintained", "advisory": {"id": "RUSTSEC-2024-0001"},
                                           "package": {"name": "x", "version": "1"}}]},
        }
        findings = gate.audit_findings(report, self.db, TableScorer())
        self.assertEqual([(f.kind, f.score) for f in findings],
                         [("vulnerability", 9.8), ("unmaintained", None)])
        with self.assertRaises(gate.InputError):
            gate.audit_findings({"vulnerabilities": []}, self.db, TableScorer())


class ElfTests(unittest.TestCase):
    def test_sections_of_a_real_executable_and_refusals(self):
        import sys
        names = gate.elf_sections(Path(sys.executable).resolve())
        self.assertIn(".text", names)
        self.assertNotIn(".dep-v0", names)
        junk = Path(tempfile.mkdtemp()) / "junk"
        for body in [b"#!/bin/sh\n", b"\x7fELF\x02\x01" + b"\0" * 10, b"\x7fELF\x01\x01" + b"\0" * 60]:
            junk.write_bytes(body)
            with self.subTest(body=body[:8]), self.assertRaises(gate.InputError):
                gate.elf_sections(junk)


def tar_bytes(entries, gz=True):
    """A layer: entries are (path, bytes | None for a directory | ("link", target), mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, content, mode in entries:
            info = tarfile.TarInfo(path)
            info.mode = mode
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(content, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    data = buf.getvalue()
    return gzip.compress(data) if gz else data


class ImageTests(unittest.TestCase):
    BINARY = b"\x7fELF steward binary"

    def layout(self, layers, user="65532:65532",
               media="application/vnd.oci.image.layer.v1.tar+gzip", corrupt=False):
        root = Path(tempfile.mkdtemp())
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)

        def put(data: bytes, media_type: str) -> dict:
            digest = hashlib.sha256(data).hexdigest()
            (blobs / digest).write_bytes(data)
            return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}

        layer_descs = [put(tar_bytes(entries), media) for entries in layers]
        config = put(json.dumps({"architecture": "amd64", "os": "linux",
                                 "config": {"User": user, "Entrypoint": ["/steward"]}}).encode(),
                     "application/vnd.oci.image.config.v1+json")
        manifest = put(json.dumps({"schemaVersion": 2, "mediaType": gate.OCI_MANIFEST,
                                   "config": config, "layers": layer_descs}).encode(), gate.OCI_MANIFEST)
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
        if corrupt:
            path = blobs / layer_descs[0]["digest"].split(":")[1]
            data = bytearray(path.read_bytes())
            data[-1] ^= 1
            path.write_bytes(bytes(data))
        binary = root / "steward"
        binary.write_bytes(self.BINARY)
        return root, binary

    def clean(self):
        return [("steward", self.BINARY, 0o755),
                ("etc/", None, 0o755),
                ("etc/passwd", b"root:x:0:0::/root:/sbin/nologin\nnonroot:x:65532:65532::/:/sbin/nologin\n", 0o644),
                ("etc/ssl/certs/ca-certificates.crt", b"-----BEGIN CERTIFICATE-----\nMIIB\n", 0o644)]

    def check(self, layers, **kw):
        root, binary = self.layout(layers, **kw)
        return gate.check_image(root, binary)

    def test_a_clean_image_passes(self):
        verdict = self.check([self.clean()])
        self.assertEqual(verdict.failures, [])
        verdict = self.check([self.clean()], user="nonroot")
        self.assertEqual(verdict.failures, [])

    def test_a_shell_or_package_manager_fails(self):
        for path in ["bin/sh", "usr/bin/bash", "bin/busybox", "usr/bin/apt-get", "sbin/apk", "usr/bin/pip3"]:
            with self.subTest(path=path):
                verdict = self.check([self.clean() + [(path, b"#!", 0o755)]])
                self.assertEqual(len(verdict.failures), 1, verdict.failures)
                self.assertIn(f"/{path}", verdict.failures[0])
        verdict = self.check([self.clean() + [("bin/sh", ("link", "/bin/busybox"), 0o777)]])
        self.assertEqual(len(verdict.failures), 1)

    def test_a_shell_removed_by_a_later_layer_is_gone(self):
        verdict = self.check([self.clean() + [("bin/sh", b"#!", 0o755)], [("bin/.wh.sh", b"", 0o644)]])
        self.assertEqual(verdict.failures, [])
        verdict = self.check([self.clean() + [("usr/bin/bash", b"#!", 0o755)], [("usr/bin/.wh..wh..opq", b"", 0o644)]])
        self.assertEqual(verdict.failures, [])

    def test_root_users_fail(self):
        for user in ["", "root", "0", "0:0", "ghost", "root:root"]:
            with self.subTest(user=user):
                verdict = self.check([self.clean()], user=user)
                self.assertEqual(len(verdict.failures), 1, verdict.failures)
        verdict = self.check([[("steward", self.BINARY, 0o755)]], user="nonroot")
        self.assertIn("no /etc/passwd", verdict.failures[0])
        passwd = b"admin:x:0:0::/:/sbin/nologin\n"
        verdict = self.check([[("steward", self.BINARY, 0o755), ("etc/passwd", passwd, 0o644)]], user="admin")
        self.assertIn("uid 0", verdict.failures[0])

    def test_secrets_in_any_layer_fail_even_when_deleted_later(self):
        key = b"-----BEGIN PRIVATE KEY-----\n" + b"MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7" * 3 + b"\n"
        cases = [
            ("root/.ssh/id_ed25519", b"anything"),
            ("app/server.key", b"x"),
            ("app/.env", b"A=1"),
            ("home/u/.docker/config.json", b"{}"),
            ("etc/steward/master_key", b"00"),
            ("etc/app.conf", key),
            ("etc/app.conf", b"token = xoxb-123456789012-abcdefghijklmnop"),
            ("etc/app.conf", b"key=sk-proj-" + b"a1" * 20),
            ("etc/app.conf", b"AKIAABCDEFGHIJKLMNOP"),
            ("etc/app.conf", b"stw_" + b"0f" * 32),
            ("etc/app.conf", b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ]
        for path, content in cases:
            with self.subTest(path=path, content=content[:20]):
                verdict = self.check([self.clean() + [(path, content, 0o600)],
                                      [(str(Path(path).parent / (".wh." + Path(path).name)), b"", 0o644)]])
                self.assertEqual(len(verdict.failures), 1, verdict.failures)
                if len(content) >= 20:
                    # The finding names the file and the rule, never the value.
                    self.assertNotIn(content.decode(errors="replace")[8:], verdict.failures[0])

    def test_public_certificates_and_code_mentioning_prefixes_pass(self):
        code = b"strip_prefix(\"xoxb-\") whsec_ stw_ sk- -----BEGIN PRIVATE KEY----- eyJ"
        verdict = self.check([self.clean() + [("usr/lib/lib.so", code, 0o755)]])
        self.assertEqual(verdict.failures, [])

    def test_only_the_exact_public_values_are_let_through(self):
        demo = "xoxb-1234567890-9876543210987-StewardDemoBotToken42"
        other = "sk-proj-steward-demo-0000000000000000000000000000"
        binary = b"\x7fELF\0" + demo.encode() + other.encode() + b"\0"
        layers = [[("steward", binary, 0o755),
                   ("etc/passwd", b"nonroot:x:65532:65532::/:/x\n", 0o644)]]
        root, path = self.layout(layers, user="nonroot")
        path.write_bytes(binary)
        self.assertEqual(len(gate.check_image(root, path).failures), 1)
        verdict = gate.check_image(root, path, (demo, other))
        self.assertEqual(verdict.failures, [])
        self.assertTrue(any("2 known public" in r for r in verdict.reports))
        # A real-looking token beside a public one is still found.
        layers[0][0] = ("steward", binary + b" xoxb-2234567890-1876543210987-RealToken", 0o755)
        root, path = self.layout(layers, user="nonroot")
        path.write_bytes(layers[0][0][1])
        self.assertEqual(len(gate.check_image(root, path, (demo, other)).failures), 1)

    def test_the_scanned_binary_must_be_in_the_image(self):
        verdict = self.check([[("etc/passwd", b"nonroot:x:65532:65532::/:/x\n", 0o644),
                               ("steward", b"another build", 0o755)]], user="nonroot")
        self.assertEqual(len(verdict.failures), 1)
        self.assertIn("scanned binary", verdict.failures[0])

    def test_two_tags_of_one_manifest_are_checked_once(self):
        root, binary = self.layout([self.clean()])
        index = json.loads((root / "index.json").read_text())
        index["manifests"].append(dict(index["manifests"][0]))
        (root / "index.json").write_text(json.dumps(index))
        verdict = gate.check_image(root, binary)
        self.assertEqual(verdict.failures, [])
        self.assertEqual(sum("runs as User" in r for r in verdict.reports), 1)

    def test_broken_layouts_are_input_errors(self):
        root, binary = self.layout([self.clean()], corrupt=True)
        with self.assertRaises(gate.InputError):
            gate.check_image(root, binary)
        root, binary = self.layout([self.clean()], media="application/vnd.oci.image.layer.v1.tar+zstd")
        with self.assertRaises(gate.InputError):
            gate.check_image(root, binary)
        root, binary = self.layout([self.clean()])
        (root / "index.json").write_text('{"manifests": [{"mediaType": "%s", "digest": "sha256:../../x"}]}'
                                         % gate.OCI_MANIFEST)
        with self.assertRaises(gate.InputError):
            gate.check_image(root, binary)
        (root / "index.json").write_text("[not json")
        with self.assertRaises(gate.InputError):
            gate.check_image(root, binary)
        (root / "oci-layout").unlink()
        with self.assertRaises(gate.InputError):
            gate.check_image(root, binary)


class ManifestTests(unittest.TestCase):
    DEPLOYMENT = """\
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: steward}
        spec:
          template:
            spec:
              containers:
                - name: steward
                  securityContext: {readOnlyRootFilesystem: %s}
    """

    def tree(self, base_ro="true", patch=None):
        root = Path(tempfile.mkdtemp())
        write(root / "base" / "deployment.yaml", self.DEPLOYMENT % base_ro)
        if patch:
            write(root / "overlays" / "prod" / "patch.yaml", patch)
        return root

    def test_the_repository_manifests_pass(self):
        verdict = gate.check_k8s(Path(__file__).resolve().parents[1] / "k8s")
        self.assertEqual(verdict.failures, [])

    def test_read_only_root_is_required(self):
        self.assertEqual(gate.check_k8s(self.tree()).failures, [])
        self.assertEqual(len(gate.check_k8s(self.tree(base_ro="false")).failures), 1)
        self.assertEqual(len(gate.check_k8s(self.tree(base_ro="null")).failures), 1)

    def test_overlays_may_patch_but_not_lift_it_or_add_a_writable_container(self):
        ok = "kind: Deployment\nmetadata: {name: steward}\nspec:\n  template:\n    spec:\n      containers:\n        - name: steward\n          resources: {}\n"
        self.assertEqual(gate.check_k8s(self.tree(patch=ok)).failures, [])
        lifted = ok.replace("resources: {}", "securityContext: {readOnlyRootFilesystem: false}")
        self.assertEqual(len(gate.check_k8s(self.tree(patch=lifted)).failures), 1)
        sidecar = ok.replace("name: steward", "name: sidecar")
        self.assertEqual(len(gate.check_k8s(self.tree(patch=sidecar)).failures), 1)

    def test_no_workload_is_a_failure_and_bad_yaml_an_error(self):
        root = Path(tempfile.mkdtemp())
        write(root / "service.yaml", "kind: Service\n")
        self.assertEqual(len(gate.check_k8s(root).failures), 1)
        write(root / "bad.yaml", "a: [unclosed\n")
        with self.assertRaises(gate.InputError):
            gate.check_k8s(root)


if __name__ == "__main__":
    unittest.main()
