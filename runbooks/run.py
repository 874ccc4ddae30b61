#!/usr/bin/env python3
"""Runs every command of the runbooks, in order, against a local staging stack.

The stack: `steward standins` (ServiceNow, Slack and an LLM provider) on free loopback ports
and `steward serve` with a staging profile on SQLite, both in a temporary folder; a private
PostgreSQL cluster (initdb, free port) when a runbook asks for it with `local-stack`. See
runbooks/README.md for the markup. Python standard library only.

    python3 runbooks/run.py                     # every runbook in the index's order
    python3 runbooks/run.py onboard-tenant.md   # some of them (onboard-tenant.md comes first)
    python3 runbooks/run.py --keep              # leave the temporary folder for a look

`python3 runbooks/run.py --stack CMD` is the `local-stack` command the runbooks' stand-in
blocks call; it acts on the stack named by $RUNBOOK_STACK.
"""

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ORDER = [
    "onboard-tenant.md",
    "rotate-credentials.md",
    "investigate-failed-run.md",
    "audit-and-evidence.md",
    "incident-response.md",
    "backup-restore.md",
]
BLOCK_TIMEOUT = 60
OVERALL_TIMEOUT = 600
TENANT = "us-newco"

# ---------------------------------------------------------------------------------------------
# The stack: a JSON state file in the temporary folder, shared with `local-stack`.
# ---------------------------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url, timeout=2.0):
    handler = urllib.request.ProxyHandler({})
    opener = urllib.request.build_opener(handler)
    try:
        with opener.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid, grace=10.0):
    """SIGTERM, then SIGKILL after `grace` seconds; reaps the child if it is ours."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.time() + grace
    while time.time() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return
        except ChildProcessError:
            pass
        if not alive(pid):
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (OSError, ChildProcessError):
        pass


def find_pg_bin():
    """The folder of the newest installed PostgreSQL server tools (initdb, pg_ctl)."""
    candidates = []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        for d in base.iterdir():
            if d.name.isdigit() and (d / "bin" / "initdb").is_file():
                candidates.append((int(d.name), d / "bin"))
    if candidates:
        return str(sorted(candidates)[-1][1])
    initdb = shutil.which("initdb")
    if initdb:
        return str(Path(os.path.realpath(initdb)).parent)
    raise RuntimeError("initdb is not installed: PostgreSQL runbooks cannot run")


class Stack:
    def __init__(self, state_file):
        self.file = Path(state_file)
        self.s = json.loads(self.file.read_text()) if self.file.exists() else {}

    def save(self):
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.s, indent=1))
        tmp.replace(self.file)

    @property
    def root(self):
        return Path(self.s["root"])

    def bin(self):
        return self.s["steward_bin"]

    def clean_env(self):
        env = dict(os.environ)
        for k in list(env):
            # No proxy for loopback, and nothing of the caller's own Steward or PostgreSQL
            # settings (STEWARD_* would override the stack's config; PG* could point psql at
            # a shared server).
            if (k.lower() in ("http_proxy", "https_proxy", "all_proxy")
                    or k.startswith(("STEWARD_", "PG"))):
                del env[k]
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        return env

    # --- stand-ins -------------------------------------------------------------------------
    def start_standins(self):
        out = self.root / "standins.out"
        log = open(self.root / "standins.log", "ab")
        env = self.clean_env()
        env["STEWARD_LOG"] = "warn"
        p = subprocess.Popen(
            [self.bin(), "standins", "--servicenow", "127.0.0.1:0", "--slack",
             "127.0.0.1:0", "--llm", "127.0.0.1:0"],
            stdout=open(out, "wb"), stderr=log, env=env, start_new_session=True)
        self.s["standins_pid"] = p.pid
        self.save()
        deadline = time.time() + 30
        while time.time() < deadline:
            text = out.read_text() if out.exists() else ""
            if text.strip():
                urls = json.loads(text.splitlines()[0])
                self.s["urls"] = urls
                self.save()
                return urls
            if p.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("the stand-ins did not start; see " + str(self.root / "standins.log"))

    # --- steward serve ---------------------------------------------------------------------
    def write_config(self):
        """The staging config, for the backend in the state (sqlite or postgres)."""
        root = self.root
        conf = root / "deploy" / "steward.toml"
        pg = self.s.get("backend") == "postgres"
        db_lines = f'database = "{root / "data" / "steward.db"}"\n'
        if pg:
            db_lines += (
                'postgres_url = { file = "secrets/postgres_url" }\n'
                'postgres_migrate_url = { file = "secrets/postgres_owner_url" }\n')
        backup = ""
        if pg:
            backup = (
                '\n[backup]\npostgres_url = { file = "secrets/postgres_backup_url" }\n'
                f'pg_bin_dir = "{self.s["pg"]["bin"]}"\n')
        conf.write_text(
            '# Local staging deployment made by runbooks/run.py.\n'
            'profile = "staging"\n'
            f'listen = "127.0.0.1:{self.s["port"]}"\n'
            + db_lines +
            'region = "us"\n'
            'master_key = { file = "secrets/master.key" }\n'
            'ops_token = { file = "secrets/ops_token" }\n'
            '# The stand-ins speak plain HTTP on loopback; production refuses this.\n'
            'allow_plain_http = true\n'
            '\n[tls]\nterminates_at_proxy = true\n'
            '\n[metrics]\nenabled = true\n'
            '\n[runs]\nmax_restarts = 3\nrestart_window_secs = 60\n'
            '\n[egress.us]\nllm = ["127.0.0.1"]\nservicenow = ["127.0.0.1"]\n'
            'slack = ["127.0.0.1"]\n'
            + backup)
        return conf

    def start_server(self, wait=True):
        if alive(self.s.get("serve_pid")):
            return
        log = open(self.root / "steward.log", "ab")
        env = self.clean_env()
        env["STEWARD_LOG"] = "warn,steward=info"
        p = subprocess.Popen(
            [self.bin(), "serve", "--config", self.s["config"]],
            stdout=log, stderr=log, env=env, start_new_session=True,
            cwd=str(self.root / "deploy"))
        self.s["serve_pid"] = p.pid
        self.save()
        if not wait:
            return
        url = self.s["url"] + "/readyz"
        deadline = time.time() + 40
        while time.time() < deadline:
            if http_status(url) == 200:
                return
            if p.poll() is not None:
                lines = (self.root / "steward.log").read_text(errors="replace").splitlines()
                raise RuntimeError("steward serve exited: " + (lines[-1] if lines else ""))
            time.sleep(0.1)
        raise RuntimeError("steward serve did not become ready at " + url)

    def stop_server(self):
        stop_pid(self.s.get("serve_pid"))
        self.s["serve_pid"] = None
        self.save()

    # --- PostgreSQL ------------------------------------------------------------------------
    def pg_tool(self, name, *args):
        cmd = [str(Path(self.s["pg"]["bin"]) / name), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              cwd=self.s["pg"]["dir"])

    def pg_bin(self):
        return find_pg_bin()

    def psql(self, sql, db="postgres"):
        pg = self.s["pg"]
        cmd = [str(Path(pg["bin"]) / "psql"), "-h", pg["dir"], "-p", str(pg["port"]),
               "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("psql: " + r.stderr)
        return r.stdout

    def pg_init(self):
        if self.s.get("pg"):
            return
        # A folder of its own: the server tools run as `postgres` when we are root, and the
        # stack's folder is private to us.
        d = Path(tempfile.mkdtemp(prefix="steward-runbooks-pg-"))
        pg = {"bin": self.pg_bin(), "dir": str(d), "data": str(d / "data"), "port": free_port()}
        self.s["pg"] = pg
        self.save()
        pw = d / "superuser.pw"
        pw.write_text(secrets.token_hex(16) + "\n")
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres", str(d)], check=True)
        r = self.pg_tool("initdb", "-D", pg["data"], "-U", "postgres", "-E", "UTF8",
                         "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
                         f"--pwfile={pw}")
        if r.returncode != 0:
            raise RuntimeError("initdb: " + r.stderr)
        self.pg_start()
        roles = (REPO / "persistence" / "sql" / "postgres_roles.sql").read_text()
        self.psql(roles)
        pws = {k: secrets.token_hex(12) for k in ("owner", "service", "backup")}
        self.psql(f"ALTER ROLE steward_owner PASSWORD '{pws['owner']}'")
        self.psql(f"ALTER ROLE steward_service PASSWORD '{pws['service']}'")
        self.psql("CREATE ROLE steward_backup LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                  f"BYPASSRLS PASSWORD '{pws['backup']}'")
        self.psql("GRANT pg_read_all_data TO steward_backup")
        self.psql("CREATE DATABASE steward OWNER steward_owner")
        sec = self.root / "deploy" / "secrets"
        for name, role, key in (("postgres_url", "steward_service", "service"),
                                ("postgres_owner_url", "steward_owner", "owner"),
                                ("postgres_backup_url", "steward_backup", "backup")):
            path = sec / name
            path.write_text(f"postgres://{role}:{pws[key]}@127.0.0.1:{pg['port']}/steward\n")
            path.chmod(0o600)
        pgpass = sec / "pgpass"
        pgpass.write_text(
            f"127.0.0.1:{pg['port']}:*:steward_owner:{pws['owner']}\n"
            f"127.0.0.1:{pg['port']}:*:steward_backup:{pws['backup']}\n")
        pgpass.chmod(0o600)
        # For the runbooks' psql steps: the superuser over the cluster's own socket, and the
        # roles' passwords for URLs that must not carry one.
        (self.root / "pg.env").write_text(
            f"PGHOST={pg['dir']}\nPGPORT={pg['port']}\nPGUSER=postgres\n"
            f"PGPASSFILE={pgpass}\nSTEWARD_PG_HOSTPORT=127.0.0.1:{pg['port']}\n")

    def pg_start(self):
        pg = self.s["pg"]
        opts = (f"-c listen_addresses=127.0.0.1 -p {pg['port']} "
                f"-c unix_socket_directories={pg['dir']} -c fsync=off")
        r = self.pg_tool("pg_ctl", "-D", pg["data"], "-o", opts, "-l",
                         str(Path(pg["dir"]) / "log"), "-w", "start")
        if r.returncode != 0:
            raise RuntimeError("pg_ctl start: " + r.stderr + r.stdout)

    def pg_stop(self):
        pg = self.s.get("pg")
        if not pg:
            return
        r = self.pg_tool("pg_ctl", "-D", pg["data"], "-m", "fast", "-w", "stop")
        if r.returncode != 0:
            pidfile = Path(pg["data"]) / "postmaster.pid"
            if pidfile.exists():
                stop_pid(int(pidfile.read_text().split()[0]))

    def use(self, backend):
        if backend == "postgres":
            self.pg_init()
        self.stop_server()
        self.s["backend"] = backend
        self.save()
        self.write_config()
        self.start_server()

    def cleanup(self):
        stop_pid(self.s.get("serve_pid"))
        stop_pid(self.s.get("standins_pid"))
        self.pg_stop()
        if self.s.get("pg"):
            shutil.rmtree(self.s["pg"]["dir"], ignore_errors=True)


def stack_command(argv):
    """`local-stack CMD`: what the runbooks' stand-in blocks call."""
    usage = "local-stack restart | stop | start | db-stop | db-start | use-postgres | use-sqlite"
    state = os.environ.get("RUNBOOK_STACK")
    if not state or not argv:
        print(usage, file=sys.stderr)
        return 2
    st = Stack(state)
    cmd = argv[0]
    try:
        return stack_do(st, cmd, argv)
    except RuntimeError as e:
        print(f"local-stack {cmd}: FAILED: {e}", file=sys.stderr)
        return 1


def stack_do(st, cmd, argv):
    if len(argv) != 1:
        cmd = "usage"
    if cmd == "restart":
        st.stop_server()
        st.start_server()
    elif cmd == "stop":
        st.stop_server()
    elif cmd == "start":
        st.start_server()
    elif cmd == "db-stop":
        st.pg_stop()
    elif cmd == "db-start":
        st.pg_start()
    elif cmd == "use-postgres":
        st.use("postgres")
    elif cmd == "use-sqlite":
        st.use("sqlite")
    else:
        print("local-stack restart | stop | start | db-stop | db-start | use-postgres | "
              "use-sqlite", file=sys.stderr)
        return 2
    print(f"local-stack {cmd}: ok ({st.s.get('backend')}, {st.s['url']})")
    return 0


def build_stack(root, steward_bin):
    for sub in ("deploy/secrets", "data", "work", "bin"):
        (root / sub).mkdir(parents=True)
    st = Stack(root / "stack.json")
    st.s = {"root": str(root), "steward_bin": steward_bin, "port": free_port(),
            "backend": "sqlite"}
    st.s["url"] = f"http://127.0.0.1:{st.s['port']}"
    st.s["config"] = str(root / "deploy" / "steward.toml")
    st.save()
    sec = root / "deploy" / "secrets"
    (sec / "master.key").write_text(secrets.token_hex(32) + "\n")
    (sec / "ops_token").write_text(secrets.token_hex(32) + "\n")
    for f in sec.iterdir():
        f.chmod(0o600)
    st.write_config()
    urls = st.start_standins()
    st.start_server()
    # `steward` and `local-stack` on PATH.
    shim = root / "bin" / "steward"
    shim.write_text(f'#!/bin/sh\nexec "{steward_bin}" "$@"\n')
    shim.chmod(0o755)
    ls = root / "bin" / "local-stack"
    ls.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{Path(__file__).resolve()}" '
                  '--stack "$@"\n')
    ls.chmod(0o755)
    return st, urls


# ---------------------------------------------------------------------------------------------
# Runbooks: parsing and running.
# ---------------------------------------------------------------------------------------------

MARK = re.compile(r"^<!--\s*([a-z-]+)(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(`{3,})\s*([A-Za-z0-9_-]*)\s*$")
KNOWN = ("person", "standin", "expect", "expect-not", "exit", "wait", "timeout",
         "ignore")
HEADING = re.compile(r"^(#{1,4})\s+(.*)$")


class Block:
    def __init__(self, lang, code, line, step, marks_before):
        self.lang, self.code, self.line, self.step = lang, code, line, step
        self.before = marks_before  # list of (name, value)
        self.expect, self.expect_not = [], []

    def has(self, name):
        return any(n == name for n, _ in self.before)

    def value(self, name, default=None):
        for n, v in self.before:
            if n == name:
                return v
        return default


def parse(path):
    """The runbook's shell blocks with their markers, in order."""
    lines = path.read_text().splitlines()
    blocks, pending, step, i = [], [], path.name, 0
    last = None
    prose = []  # the lines since the previous block
    while i < len(lines):
        text = lines[i]
        h = HEADING.match(text)
        m = MARK.match(text.strip())
        f = FENCE.match(text)
        if h:
            step = h.group(2).strip()
            pending, last = [], None
        elif m:
            name, value = m.group(1), m.group(2)
            if name not in KNOWN:
                raise SystemExit(f"{path.name}:{i + 1}: unknown marker <!-- {name} -->")
            if name == "exit" and last is not None and not pending:
                last.before.append((name, value))
            elif name in ("expect", "expect-not"):
                if last is None or pending:
                    raise SystemExit(f"{path.name}:{i + 1}: <!-- {name} --> must follow a block")
                (last.expect if name == "expect" else last.expect_not).append(value or "")
            else:
                pending.append((name, value))
        elif f:
            fence, lang = f.group(1), f.group(2)
            start = i
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != fence:
                body.append(lines[i])
                i += 1
            if lang in ("sh", "bash") and not any(n == "ignore" for n, _ in pending):
                last = Block(lang, "\n".join(body) + "\n", start + 1, step, pending)
                if last.has("standin") and "**Local stack only.**" not in "\n".join(prose):
                    raise SystemExit(f"{path.name}:{start + 1}: a standin block needs a visible "
                                     "'> **Local stack only.** …' sentence before it")
                blocks.append(last)
            else:
                last = None
            pending, prose = [], []
        elif text.strip():
            # Prose after a block ends its expectations; markers before a block wait for it.
            last = None
            prose.append(text)
        i += 1
    for b in blocks:
        for pattern in b.expect + b.expect_not:
            re.compile(pattern)
    return blocks


class Runner:
    def __init__(self, root, env, deadline):
        self.root, self.env, self.deadline = root, env, deadline
        self.cwd = str(root / "work")
        self.counts = {"pass": 0, "skip": 0}
        self.verbose = False
        self.current = None

    def run_block(self, block):
        envout = self.root / "env.out"
        if envout.exists():
            envout.unlink()
        script = (
            f"trap 'env -0 > \"{envout}\"; printf %s \"$PWD\" > \"{envout}.pwd\"' EXIT\n"
            + block.code)
        timeout = float(block.value("timeout") or BLOCK_TIMEOUT)
        timeout = max(1.0, min(timeout, self.deadline - time.time()))
        start = time.time()
        p = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=self.cwd,
                             env=self.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        self.current = p.pid
        try:
            out, err = p.communicate(timeout=timeout)
            code = p.returncode
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            code = None
        # Whatever the block left running in its own process group goes with it.
        self.kill_current()
        # Expectations read standard output, then standard error (kept apart so that the
        # two never interleave mid-line).
        text = out.decode("utf-8", "replace")
        if err:
            text = text.rstrip("\n") + "\n" + err.decode("utf-8", "replace")
        if code is not None and envout.exists():
            new = {}
            for item in envout.read_bytes().split(b"\0"):
                if b"=" in item:
                    k, v = item.decode("utf-8", "replace").split("=", 1)
                    new[k] = v
            for k in ("PWD", "OLDPWD", "SHLVL", "_"):
                new.pop(k, None)
            self.env = new
            pwd = Path(str(envout) + ".pwd")
            if pwd.exists() and Path(pwd.read_text()).is_dir():
                self.cwd = pwd.read_text()
        return code, text, time.time() - start

    def kill_current(self):
        if self.current:
            try:
                os.killpg(self.current, signal.SIGKILL)
            except OSError:
                pass
            self.current = None

    def check(self, block, code, text):
        want = int(block.value("exit") or 0)
        if code is None:
            return f"timed out after {block.value('timeout') or BLOCK_TIMEOUT} s"
        if code != want:
            return f"exit code {code}, expected {want}"
        for pattern in block.expect:
            if not re.search(pattern, text, re.MULTILINE):
                return f"output does not match expect: {pattern}"
        for pattern in block.expect_not:
            if re.search(pattern, text, re.MULTILINE):
                return f"output matches expect-not: {pattern}"
        return None

    def run_book(self, path):
        print(f"\n== {path.name}", flush=True)
        book_start = time.time()
        for n, block in enumerate(parse(path), 1):
            label = f"{path.name}:{block.line} [{block.step}]"
            if block.has("person"):
                self.counts["skip"] += 1
                print(f"  SKIP  person      {label}", flush=True)
                continue
            if time.time() > self.deadline:
                return self.fail(label, block, "", "the overall timeout ran out")
            wait = float(block.value("wait") or 0)
            tries_until = time.time() + wait
            took = 0.0
            tries = 0
            while True:
                tries += 1
                code, text, t = self.run_block(block)
                took += t
                problem = self.check(block, code, text)
                if problem is None or time.time() + 1 > tries_until:
                    break
                time.sleep(1)
            kind = "standin" if block.has("standin") else "run"
            if problem:
                return self.fail(label, block, text, problem + (
                    f" (after {tries} tries in {wait:.0f} s)" if wait else ""))
            self.counts["pass"] += 1
            extra = f", {tries} tries" if tries > 1 else ""
            print(f"  PASS  {kind:<10}  {label}  {took:.1f}s{extra}", flush=True)
            if self.verbose:
                print("\n".join("  > " + line for line in text.rstrip().splitlines()))
        print(f"  -- {path.name} passed in {time.time() - book_start:.1f}s", flush=True)
        return True

    def fail(self, label, block, text, problem):
        print(f"  FAIL  {label}: {problem}", flush=True)
        print("  --- block ---")
        print("\n".join("  | " + line for line in block.code.rstrip().splitlines()))
        print("  --- output (last 60 lines) ---")
        print("\n".join("  > " + line for line in text.rstrip().splitlines()[-60:]))
        if block.expect or block.expect_not:
            print("  --- expectations ---")
            for p in block.expect:
                print(f"  expect:     {p}")
            for p in block.expect_not:
                print(f"  expect-not: {p}")
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("books", nargs="*", help="runbook files (default: all, in order)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--timeout", type=float, default=OVERALL_TIMEOUT,
                    help="overall timeout in seconds (default %(default)s)")
    ap.add_argument("--list", action="store_true", help="print each block's markers and exit")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every block's output")
    if len(sys.argv) > 1 and sys.argv[1] == "--stack":
        return stack_command(sys.argv[2:])
    args = ap.parse_args()

    names = args.books or ORDER
    books = []
    for name in names:
        p = Path(name)
        if not p.is_file():
            p = HERE / Path(name).name
        if not p.is_file():
            print(f"no such runbook: {name}", file=sys.stderr)
            return 2
        books.append(p)
    # A runbook after the first builds on the tenant onboard-tenant.md makes.
    if books and books[0].name != "onboard-tenant.md" and any(
            b.name != "onboard-tenant.md" for b in books):
        books = [HERE / "onboard-tenant.md"] + [b for b in books if b.name != "onboard-tenant.md"]
    for b in books:
        parse(b)  # a markup mistake stops here, before any process starts
    if args.list:
        for b in books:
            for blk in parse(b):
                print(f"{b.name}:{blk.line} {blk.before} expect={blk.expect}")
        return 0

    steward_bin = os.environ.get("STEWARD_BIN", str(REPO / "target" / "debug" / "steward"))
    steward_bin = str(Path(steward_bin).resolve())
    if not os.access(steward_bin, os.X_OK):
        print(f"no steward binary at {steward_bin}: cargo build -p steward-runtime --bin steward"
              " (or set STEWARD_BIN)", file=sys.stderr)
        return 2
    if any("local-stack use-postgres" in blk.code for b in books for blk in parse(b)):
        try:
            find_pg_bin()
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 2
    for tool in ("curl", "jq", "openssl"):
        if not shutil.which(tool):
            print(f"the runbooks need {tool} on PATH", file=sys.stderr)
            return 2

    started = time.time()
    deadline = started + args.timeout
    root = Path(tempfile.mkdtemp(prefix="steward-runbooks-"))
    st = None
    runner = None
    ok = False

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGALRM, on_signal)
    signal.alarm(int(args.timeout) + 60)
    try:
        print(f"local stack in {root}", flush=True)
        st, urls = build_stack(root, steward_bin)
        env = st.clean_env()
        env.update({
            "PATH": f"{root / 'bin'}:{env.get('PATH', '')}",
            "RUNBOOK_STACK": str(root / "stack.json"),
            "RUNBOOK_LOCAL": "1",
            "STEWARD_URL": st.s["url"],
            "STEWARD_CONFIG": st.s["config"],
            "OPS_TOKEN_FILE": str(root / "deploy" / "secrets" / "ops_token"),
            "STEWARD_OPERATOR": "runbook-runner",
            "TENANT": TENANT,
            "SERVICENOW_URL": urls["servicenow"],
            "SLACK_API_URL": urls["slack_api"],
            "LLM_URL": urls["llm"],
            "SLACK_STANDIN_URL": urls["slack_api"].rstrip("/").removesuffix("/api"),
            "LLM_STANDIN_URL": urls["llm"].rstrip("/").removesuffix("/v1"),
            "WEBHOOK_OVERLAP_SECS": "4",
        })
        print(f"steward at {st.s['url']}, stand-ins {urls}  ({time.time() - started:.1f}s)",
              flush=True)
        runner = Runner(root, env, deadline)
        runner.verbose = args.verbose
        ok = True
        for book in books:
            if not runner.run_book(book):
                ok = False
                break
        c = runner.counts
        verdict = "PASS" if ok else "FAIL"
        print(f"\n{verdict}: {c['pass']} blocks passed, {c['skip']} person steps skipped, "
              f"{time.time() - started:.1f}s", flush=True)
    except KeyboardInterrupt as e:
        print(f"\nFAIL: stopped ({e})", flush=True)
        ok = False
    except Exception as e:  # the stack did not come up
        print(f"\nFAIL: {e}", flush=True)
        ok = False
    finally:
        signal.alarm(0)
        if runner is not None:
            runner.kill_current()
        if st is not None:
            Stack(root / "stack.json").cleanup()
        if not ok:
            for log in ("steward.log", "standins.log"):
                p = root / log
                if p.exists():
                    print(f"--- last lines of {log} ---")
                    print("\n".join(p.read_text(errors="replace").splitlines()[-15:]))
        if args.keep or not ok and os.environ.get("RUNBOOK_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
