"""Every SDK method against real guests through the real ``pyro`` binary.

Runs only with PYRO_E2E=1 (scripts/test.sh sets it, and e2e/python_test.go runs
this suite); the binary is $PYRO_BIN, else ``pyro`` on PATH. Guests boot one at
a time. State is the binary's default state dir ($PYRO_HOME or
~/.local/share/pyro); VM lifecycle and prune tests use a private state dir that
shares only the installed environments, so they never touch other VMs.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from typing import Any, Callable, Optional

from pyro_mcp import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    Pyro,
    PyroError,
)

BASE_ENV = "debian:12-base"  # small; most tests boot it
FULL_ENV = "debian:12"  # has python3 (service test, default environment)

E2E_SKIP: Optional[str] = None
if os.environ.get("PYRO_E2E") != "1":
    E2E_SKIP = "boots real guests; set PYRO_E2E=1 (scripts/test.sh does) and PYRO_BIN"
elif not (os.environ.get("PYRO_BIN") or shutil.which("pyro")):
    E2E_SKIP = "no pyro binary: set PYRO_BIN or put pyro on PATH"

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyro_bin() -> str:
    return os.environ.get("PYRO_BIN") or shutil.which("pyro") or "pyro"


def cli_supports(words: list[str], needle: str) -> bool:
    """Whether `pyro WORDS --help` exists and mentions needle."""
    try:
        p = subprocess.run([pyro_bin(), *words, "--help"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    return p.returncode == 0 and needle in p.stdout


def shared_state_dir() -> str:
    if os.environ.get("PYRO_HOME"):
        return os.environ["PYRO_HOME"]
    if os.environ.get("XDG_DATA_HOME"):
        return os.path.join(os.environ["XDG_DATA_HOME"], "pyro")
    return os.path.join(os.path.expanduser("~"), ".local", "share", "pyro")


def isolated_state_dir(tc: unittest.TestCase) -> str:
    """A fresh state dir sharing the installed environments and caches."""
    home = tempfile.mkdtemp(prefix="pyro-py-e2e-")
    shared = shared_state_dir()
    for d in ("environments", "cache"):
        os.makedirs(os.path.join(shared, d), exist_ok=True)
        os.symlink(os.path.join(shared, d), os.path.join(home, d))
    tc.addCleanup(shutil.rmtree, home, True)
    return home


_pulled: set[str] = set()


def ensure_env(name: str) -> None:
    if name not in _pulled:
        Pyro().pull_environment(name)
        _pulled.add(name)


def wait_for(pred: Callable[[], Any], timeout: float = 30, interval: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return v
        time.sleep(interval)


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class EnvironmentsTest(unittest.TestCase):
    def test_environments(self) -> None:
        p = Pyro()
        pulled = p.pull_environment(BASE_ENV)
        self.assertEqual(pulled["environment"]["name"], BASE_ENV)
        self.assertTrue(pulled["environment"]["installed"])
        again = p.pull_environment(BASE_ENV)
        self.assertTrue(again["already_installed"])
        envs = {e["name"]: e for e in p.list_environments()}
        self.assertIn(FULL_ENV, envs)
        self.assertTrue(envs[BASE_ENV]["installed"])
        info = p.inspect_environment(BASE_ENV)
        self.assertEqual(info["name"], BASE_ENV)
        self.assertTrue(info["installed"])
        with self.assertRaises(NotFoundError) as cm:
            p.inspect_environment("nope:1")
        self.assertTrue(cm.exception.hint)
        # Prune in a private, empty state dir: nothing to remove, and nothing
        # of the shared one (other tests' partial builds) is touched.
        empty = tempfile.mkdtemp(prefix="pyro-py-prune-")
        self.addCleanup(shutil.rmtree, empty, True)
        pruned = Pyro(state_dir=empty).prune_environments()
        self.assertIn("freed_bytes", pruned)
        self.assertFalse(pruned.get("removed"))


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class RunTest(unittest.TestCase):
    def setUp(self) -> None:
        ensure_env(BASE_ENV)
        self.pyro = Pyro()

    def test_shell_string_and_exit_code(self) -> None:
        r = self.pyro.run_in_vm(BASE_ENV, "echo hi; echo err >&2; exit 3")
        self.assertEqual((r["exit_code"], r["stdout"], r["stderr"]), (3, "hi\n", "err\n"))
        self.assertFalse(r["timed_out"])
        self.assertEqual((r["vcpu_count"], r["mem_mib"], r["network"]), (1, 1024, False))

    def test_argv_and_options(self) -> None:
        r = self.pyro.run_in_vm(environment=BASE_ENV, command=["printf", "%s|", "a b", "$HOME"],
                                vcpu_count=2, mem_mib=512, ttl_seconds=300)
        self.assertEqual((r["exit_code"], r["stdout"]), (0, "a b|$HOME|"))
        self.assertEqual((r["vcpu_count"], r["mem_mib"]), (2, 512))

    def test_timeout(self) -> None:
        r = self.pyro.run_in_vm(BASE_ENV, "sleep 60", timeout_seconds=2)
        self.assertTrue(r["timed_out"])

    def test_errors(self) -> None:
        with self.assertRaises(NotFoundError) as cm:
            self.pyro.run_in_vm("nope:1", "true")
        self.assertEqual(cm.exception.category, "not_found")
        self.assertIn("nope:1", cm.exception.message)
        self.assertIn("pyro env list", cm.exception.hint or "")
        with self.assertRaises(InvalidArgumentError) as cm2:
            self.pyro.run_in_vm(BASE_ENV, "true", mem_mib=-5)
        self.assertEqual(cm2.exception.exit_code, 2)
        self.assertTrue(cm2.exception.hint)


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class VMLifecycleTest(unittest.TestCase):
    def setUp(self) -> None:
        ensure_env(BASE_ENV)
        self.pyro = Pyro(state_dir=isolated_state_dir(self))

    def _cleanup_vm(self, vm_id: str) -> None:
        try:
            self.pyro.delete_vm(vm_id)
        except NotFoundError:
            pass

    def test_create_start_stop_delete(self) -> None:
        p = self.pyro
        vm = p.create_vm(BASE_ENV, ttl_seconds=600)
        self.addCleanup(self._cleanup_vm, vm["vm_id"])
        self.assertEqual((vm["state"], vm["vcpu_count"], vm["mem_mib"], vm["network"]),
                         ("created", 1, 1024, False))
        self.assertEqual(p.status_vm(vm["vm_id"])["state"], "created")
        started = p.start_vm(vm["vm_id"])
        self.assertEqual(started["state"], "running")
        self.assertEqual(p.start_vm(vm["vm_id"])["state"], "running")  # idempotent
        net = p.network_info_vm(vm["vm_id"])
        self.assertFalse(net["network_enabled"])
        self.assertEqual(net["mode"], "none")
        self.assertEqual(p.stop_vm(vm["vm_id"])["state"], "stopped")
        deleted = p.delete_vm(vm["vm_id"])
        self.assertEqual(deleted["prior_state"], "stopped")
        with self.assertRaises(NotFoundError):
            p.status_vm(vm["vm_id"])
        with self.assertRaises(NotFoundError):
            p.delete_vm(vm["vm_id"])

    def test_exec_autocleans_and_network(self) -> None:
        p = self.pyro
        vm = p.create_vm(BASE_ENV, network=True, mem_mib=512)
        self.addCleanup(self._cleanup_vm, vm["vm_id"])
        net = p.network_info_vm(vm["vm_id"])
        self.assertTrue(net["network_enabled"])
        self.assertEqual(net["guest_ip"], "10.0.2.15")
        with self.assertRaises(PyroError):  # not running yet
            p.exec_vm(vm["vm_id"], command="true")
        p.start_vm(vm["vm_id"])
        r = p.exec_vm(vm["vm_id"], command=["sh", "-c", "ip -o -4 addr show eth0 || cat /proc/net/dev; exit 4"],
                      timeout_seconds=20)
        self.assertEqual(r["exit_code"], 4)
        self.assertIn("eth0", r["stdout"])
        with self.assertRaises(NotFoundError):  # auto-clean
            p.status_vm(vm["vm_id"])

    def test_reap_expired(self) -> None:
        p = self.pyro
        vm = p.create_vm(BASE_ENV, ttl_seconds=1)
        self.addCleanup(self._cleanup_vm, vm["vm_id"])
        keep = p.create_vm(BASE_ENV)
        self.addCleanup(self._cleanup_vm, keep["vm_id"])
        wait_for(lambda: p.status_vm(vm["vm_id"])["state"] == "expired", timeout=10)
        r = p.reap_expired()
        self.assertEqual(r["count"], 1)
        self.assertEqual([d["vm_id"] for d in r["removed"]], [vm["vm_id"]])
        self.assertEqual(p.status_vm(keep["vm_id"])["state"], "created")
        self.assertEqual(p.reap_expired()["count"], 0)


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class WorkspaceTest(unittest.TestCase):
    def setUp(self) -> None:
        ensure_env(BASE_ENV)
        self.pyro = Pyro()
        self.tmp = tempfile.mkdtemp(prefix="pyro-py-ws-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def _delete(self, ws_id: str) -> None:
        try:
            self.pyro.delete_workspace(ws_id)
        except NotFoundError:
            pass

    def _file(self, rel: str, text: str) -> str:
        path = os.path.join(self.tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_workspace_flow(self) -> None:
        """Seed, exec, diff, sync push, export, snapshots, reset, logs, status, delete."""
        p = self.pyro
        self._file("seed/hello.txt", "hello\n")
        self._file("seed/sub/a.txt", "a\n")
        ws = p.create_workspace(BASE_ENV, seed_path=os.path.join(self.tmp, "seed"))
        wid = ws["workspace_id"]
        self.addCleanup(self._delete, wid)
        self.assertEqual(ws["state"], "running")
        self.assertEqual((ws["vcpu_count"], ws["mem_mib"], ws["network"]), (1, 1024, False))
        self.assertEqual(ws["workspace_seed"]["mode"], "directory")
        self.assertEqual(ws["workspace_seed"]["file_count"], 2)
        self.assertFalse(ws["secrets"])
        self.assertEqual(ws["reset_count"], 0)

        # exec: shell string, argv, non-zero exit
        r = p.exec_workspace(wid, command="cat hello.txt sub/a.txt; pwd")
        self.assertEqual((r["exit_code"], r["stdout"]), (0, "hello\na\n/workspace\n"))
        r = p.exec_workspace(wid, command=["sh", "-c", "exit 7"], timeout_seconds=10)
        self.assertEqual(r["exit_code"], 7)

        # change the tree, then diff against the baseline
        p.exec_workspace(wid, command="echo new > new.txt && rm sub/a.txt && echo more >> hello.txt")
        changes = {c["path"]: c["status"] for c in p.diff_workspace(wid)["changes"]}
        self.assertEqual(changes.get("new.txt"), "added", changes)
        self.assertEqual(changes.get("sub/a.txt"), "deleted", changes)
        self.assertEqual(changes.get("hello.txt"), "modified", changes)

        # sync push and export
        self._file("push/x/y.txt", "pushed\n")
        s = p.push_workspace_sync(wid, os.path.join(self.tmp, "push"), dest="/workspace/pushed")
        self.assertEqual(s["file_count"], 1)
        self.assertEqual(p.exec_workspace(wid, command="cat pushed/x/y.txt")["stdout"], "pushed\n")
        s = p.push_workspace_sync(wid, os.path.join(self.tmp, "push"))
        self.assertEqual(s["dest"], "/workspace")
        out = os.path.join(self.tmp, "exported.txt")
        e = p.export_workspace(wid, "new.txt", output_path=out)
        self.assertEqual(e["kind"], "file")
        with open(out) as f:
            self.assertEqual(f.read(), "new\n")
        e = p.export_workspace(wid, "pushed", output_path=os.path.join(self.tmp, "exported-dir"))
        self.assertEqual(e["kind"], "dir")
        self.assertTrue(os.path.isfile(os.path.join(self.tmp, "exported-dir", "x", "y.txt")))
        with self.assertRaises(PyroError):
            p.export_workspace(wid, "no-such-file", output_path=os.path.join(self.tmp, "nothing"))

        # snapshots
        snap = p.create_snapshot(wid, "green")
        self.assertEqual(snap["name"], "green")
        with self.assertRaises(AlreadyExistsError):
            p.create_snapshot(wid, "green")
        names = [s["name"] for s in p.list_snapshots(wid)["snapshots"]]
        self.assertEqual(sorted(names), ["baseline", "green"])

        # reset to the named snapshot, then (default) to the baseline
        p.exec_workspace(wid, command="rm new.txt")
        ws = p.reset_workspace(wid, snapshot="green")
        self.assertEqual((ws["reset_count"], ws["state"]), (1, "running"))
        self.assertEqual(p.exec_workspace(wid, command="cat new.txt")["stdout"], "new\n")
        ws = p.reset_workspace(wid)
        self.assertEqual(ws["reset_count"], 2)
        self.assertIsNotNone(ws["last_reset_at"])
        r = p.exec_workspace(wid, command="test -e new.txt; echo $?; cat hello.txt")
        self.assertEqual(r["stdout"], "1\nhello\n")

        deleted = p.delete_snapshot(wid, "green")
        self.assertTrue(deleted["deleted"])
        self.assertEqual([s["name"] for s in p.list_snapshots(wid)["snapshots"]], ["baseline"])
        with self.assertRaises(PyroError):
            p.delete_snapshot(wid, "baseline")
        with self.assertRaises(NotFoundError):
            p.delete_snapshot(wid, "green")

        # history (cleared by reset), status, delete
        entries = p.logs_workspace(wid)["entries"]
        self.assertEqual(len(entries), 1)
        self.assertEqual(entries[0]["exit_code"], 0)
        self.assertIn("hello\n", entries[0]["stdout"])
        st = p.status_workspace(wid)
        self.assertEqual((st["workspace_id"], st["state"], st["reset_count"]), (wid, "running", 2))
        self.assertIn("service_count", st)
        self.assertIn("running_service_count", st)
        self.assertEqual(p.delete_workspace(wid)["workspace_id"], wid)
        with self.assertRaises(NotFoundError) as cm:
            p.status_workspace(wid)
        self.assertTrue(cm.exception.hint)

    def test_defaults_use_debian_12(self) -> None:
        # The contract's default environment, with nothing else given.
        ensure_env(FULL_ENV)
        ws = self.pyro.create_workspace()
        self.addCleanup(self._delete, ws["workspace_id"])
        self.assertEqual((ws["environment"], ws["workspace_seed"]["mode"]), (FULL_ENV, "empty"))
        r = self.pyro.exec_workspace(ws["workspace_id"], command="python3 -c 'print(6*7)'")
        self.assertEqual(r["stdout"], "42\n")


SERVICE_SKIP = E2E_SKIP or (
    None if cli_supports(["workspace", "service", "start"], "--ready-http")
    else "the pyro binary has no `workspace service start --ready-http` yet"
)


@unittest.skipIf(SERVICE_SKIP, SERVICE_SKIP or "")
class ServiceTest(unittest.TestCase):
    def test_services(self) -> None:
        ensure_env(FULL_ENV)  # python3 -m http.server
        p = Pyro()
        ws = p.create_workspace(FULL_ENV)
        wid = ws["workspace_id"]
        self.addCleanup(lambda: p.delete_workspace(wid))

        web = p.start_service(wid, "web", command="python3 -m http.server 8080 --bind 127.0.0.1",
                              readiness={"type": "http", "url": "http://127.0.0.1:8080/"})
        self.assertEqual(web["name"], "web")
        self.assertEqual(web["state"], "running")
        self.assertTrue(web.get("ready_at"))
        r = p.exec_workspace(wid, command="python3 -c \"import urllib.request as u; "
                             "print(u.urlopen('http://127.0.0.1:8080/').status)\"")
        self.assertEqual(r["stdout"], "200\n")

        tcp = p.start_service(wid, "tcp", command=["python3", "-m", "http.server", "8081"],
                              readiness={"type": "tcp", "address": "127.0.0.1:8081"},
                              ready_timeout_seconds=20, ready_interval_ms=200)
        self.assertEqual(tcp["state"], "running")
        self.assertTrue(tcp.get("ready_at"))
        filesvc = p.start_service(wid, "file", command="sleep 1; touch /tmp/ready; exec sleep 300",
                                  cwd="/tmp", readiness={"type": "file", "path": "/tmp/ready"})
        self.assertEqual(filesvc["cwd"], "/tmp")
        cmdsvc = p.start_service(wid, "cmd", command='echo "started-$((6*7))"; touch /tmp/c; exec sleep 300',
                                 readiness={"type": "command", "command": "test -e /tmp/c"})
        self.assertEqual(cmdsvc["state"], "running")
        self.assertTrue(cmdsvc.get("ready_at"))
        with self.assertRaises(PyroError):
            p.start_service(wid, "never", command="sleep 300",
                            readiness={"type": "file", "path": "/nonexistent"}, ready_timeout_seconds=2)
        with self.assertRaises(PyroError):
            p.start_service(wid, "web", command="sleep 1")

        names = sorted(s["name"] for s in p.list_services(wid)["services"])
        self.assertTrue({"web", "tcp", "file", "cmd"} <= set(names), names)
        self.assertEqual(p.status_service(wid, "web")["name"], "web")
        with self.assertRaises(NotFoundError):
            p.status_service(wid, "no-such-service")

        logs = wait_for(lambda: "started-42" in "\n".join(p.logs_service(wid, "cmd")["lines"]), timeout=10)
        self.assertTrue(logs, p.logs_service(wid, "cmd"))
        web_logs = p.logs_service(wid, "web", tail_lines=1)
        self.assertLessEqual(len(web_logs["lines"]), 1)
        all_logs = p.logs_service(wid, "web", all=True)
        self.assertTrue(any("GET /" in line for line in all_logs["lines"]), all_logs)

        stopped = p.stop_service(wid, "web")
        self.assertIn(stopped["state"], ("stopped", "exited", "failed"))
        st = p.status_workspace(wid)
        self.assertGreaterEqual(st["service_count"], 4)
        self.assertEqual(st["running_service_count"], 3)
        r = p.exec_workspace(wid, command="python3 -c \"import urllib.request as u; "
                             "u.urlopen('http://127.0.0.1:8080/', timeout=2)\"")
        self.assertNotEqual(r["exit_code"], 0, "the stopped service no longer answers")


SHELL_SKIP = E2E_SKIP or (
    None if cli_supports(["workspace", "shell", "open"], "--cols")
    else "the pyro binary has no `workspace shell open --cols` yet"
)


@unittest.skipIf(SHELL_SKIP, SHELL_SKIP or "")
class ShellTest(unittest.TestCase):
    def read_until(self, wid: str, sid: str, needle: str, cursor: int, timeout: float = 20) -> tuple[str, int]:
        """Read from cursor until needle shows up; returns (text, next cursor)."""
        text = ""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.pyro.read_shell(wid, sid, cursor=cursor)
            text += r["output"]
            cursor = r["next_cursor"]
            if needle in text:
                return text, cursor
            time.sleep(0.3)
        self.fail(f"{needle!r} not in shell output after {timeout}s: {text!r}")

    def test_shells(self) -> None:
        ensure_env(BASE_ENV)
        p = self.pyro = Pyro()
        ws = p.create_workspace(BASE_ENV)
        wid = ws["workspace_id"]
        self.addCleanup(lambda: p.delete_workspace(wid))

        sh = p.open_shell(wid)
        sid = sh["shell_id"]
        self.assertEqual((sh["cwd"], sh["cols"], sh["rows"]), ("/workspace", 120, 30))
        p.write_shell(wid, sid, input="echo hello-$((6*7))")
        _, cur = self.read_until(wid, sid, "hello-42", 0)
        p.write_shell(wid, sid, input="echo no", append_newline=False)
        p.write_shell(wid, sid, input="nl-ok")
        _, cur = self.read_until(wid, sid, "nonl-ok", cur)
        p.write_shell(wid, sid, input="sleep 300")
        time.sleep(1)
        sig = p.signal_shell(wid, sid)
        self.assertEqual(sig["shell_id"], sid)
        p.write_shell(wid, sid, input="echo after-$((1+1))")
        _, cur = self.read_until(wid, sid, "after-2", cur)
        p.signal_shell(wid, sid, signal_name="INT")
        part = p.read_shell(wid, sid, cursor=0, max_chars=5)
        self.assertLessEqual(len(part["output"]), 5)

        sh2 = p.open_shell(wid, cwd="/tmp", cols=80, rows=24)
        sid2 = sh2["shell_id"]
        self.assertNotEqual(sid2, sid)
        p.write_shell(wid, sid2, input="echo cwd=$(pwd) size=$(stty size)")
        self.read_until(wid, sid2, "cwd=/tmp size=24 80", 0)

        closed = p.close_shell(wid, sid)
        self.assertTrue(closed["closed"])
        with self.assertRaises(PyroError):
            p.write_shell(wid, sid, input="echo gone")
        p.close_shell(wid, sid2)
        with self.assertRaises(NotFoundError):
            p.read_shell(wid, "no-such-shell")


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class SecretsTest(unittest.TestCase):
    """create_workspace(secrets=...) and secret_env on exec, shells and services."""

    SECRET = "s3cr3t-value-42"

    def test_secrets(self) -> None:
        ensure_env(FULL_ENV)
        p = Pyro()
        tmp = tempfile.mkdtemp(prefix="pyro-py-secrets-")
        self.addCleanup(shutil.rmtree, tmp, True)
        keyfile = os.path.join(tmp, "key.pem")
        with open(keyfile, "w") as f:
            f.write("KEY-MATERIAL")
        try:
            ws = p.create_workspace(FULL_ENV, secrets=[{"name": "API_TOKEN", "value": self.SECRET},
                                                       {"name": "KEY", "file_path": keyfile}])
        except PyroError as e:
            if "secret" in e.message and e.category in ("unavailable", "failed_precondition", "invalid_argument"):
                self.skipTest(f"the pyro binary rejects workspace secrets: {e}")
            raise
        wid = ws["workspace_id"]
        self.addCleanup(lambda: p.delete_workspace(wid))
        self.assertEqual(sorted((s["name"], s["source"]) for s in ws["secrets"]),
                         [("API_TOKEN", "literal"), ("KEY", "file")])
        self.assertNotIn(self.SECRET, json.dumps(ws))
        self.assertNotIn(self.SECRET, json.dumps(p.status_workspace(wid)))

        r = p.exec_workspace(wid, command='test "$API_TOKEN" = "%s" && echo match' % self.SECRET,
                             secret_env={"API_TOKEN": None})
        self.assertEqual(r["stdout"], "match\n")
        r = p.exec_workspace(wid, command='test "$MY_KEY" = KEY-MATERIAL && echo key-ok; echo "${API_TOKEN:-unset}"',
                             secret_env={"KEY": "MY_KEY"})
        self.assertEqual(r["stdout"], "key-ok\nunset\n")
        r = p.exec_workspace(wid, command='printf "%s" "$API_TOKEN"', secret_env=["API_TOKEN"])
        self.assertNotIn(self.SECRET, r["stdout"], "secret values are redacted from exec output")
        self.assertNotIn(self.SECRET, json.dumps(p.logs_workspace(wid)))
        with self.assertRaises(PyroError):
            p.exec_workspace(wid, command="true", secret_env=["NO_SUCH_SECRET"])

        if not SHELL_SKIP:
            sh = p.open_shell(wid, secret_env={"API_TOKEN": "TOK"})
            p.write_shell(wid, sh["shell_id"], input='echo "tok-len=${#TOK}"')
            out = wait_for(lambda: "tok-len=15" in p.read_shell(wid, sh["shell_id"])["output"], timeout=20)
            self.assertTrue(out, p.read_shell(wid, sh["shell_id"]))
            p.close_shell(wid, sh["shell_id"])
        if not SERVICE_SKIP:
            p.start_service(wid, "sec", command='echo "svc-len=${#SVC_TOK}"; exec sleep 300',
                            secret_env={"API_TOKEN": "SVC_TOK"})
            ok = wait_for(lambda: "svc-len=15" in "\n".join(p.logs_service(wid, "sec")["lines"]), timeout=10)
            self.assertTrue(ok, p.logs_service(wid, "sec"))

        ws = p.reset_workspace(wid)
        self.assertEqual(len(ws["secrets"]), 2)
        r = p.exec_workspace(wid, command='test "$API_TOKEN" = "%s" && echo still' % self.SECRET,
                             secret_env=["API_TOKEN"])
        self.assertEqual(r["stdout"], "still\n", "secrets survive reset")


MCP_SKIP = E2E_SKIP or (None if cli_supports(["mcp"], "serve") else "the pyro binary has no `mcp serve` yet")


@unittest.skipIf(MCP_SKIP, MCP_SKIP or "")
class MCPServerTest(unittest.TestCase):
    def test_create_server_run_answers_tools_list(self) -> None:
        env = dict(os.environ, PYRO_BIN=pyro_bin(),
                   PYTHONPATH=PYTHON_DIR + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from pyro_mcp import create_server; create_server().run()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        )
        self.addCleanup(self._stop, proc)
        lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=lambda: [lines.put(l) for l in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

        def send(msg: dict) -> None:
            proc.stdin.write(json.dumps(msg) + "\n")  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]

        def reply(want_id: int) -> dict:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    msg = json.loads(lines.get(timeout=1))
                except queue.Empty:
                    if proc.poll() is not None:
                        break
                    continue
                if msg.get("id") == want_id:
                    return msg
            self.fail(f"no reply {want_id}; exit {proc.poll()}; stderr: {self._stderr(proc)}")

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2024-11-05", "capabilities": {},
                         "clientInfo": {"name": "pyro-python-test", "version": "0"}}})
        init = reply(1)
        self.assertIn("result", init, init)
        self.assertIn("tools", init["result"].get("capabilities", {}))
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
        tools = {t["name"]: t for t in reply(2)["result"]["tools"]}
        for name in ["vm_run", "vm_create", "workspace_create", "workspace_exec", "service_start",
                     "shell_open", "snapshot_create"]:
            self.assertIn(name, tools)
        props = tools["vm_run"]["inputSchema"]["properties"]
        self.assertIn("command", props)
        proc.stdin.close()  # type: ignore[union-attr]
        self.assertEqual(proc.wait(timeout=20), 0, self._stderr(proc))

    @staticmethod
    def _stderr(proc: subprocess.Popen) -> str:
        if proc.poll() is None or proc.stderr is None:
            return "(running)"
        r, _, _ = select.select([proc.stderr], [], [], 0)
        return proc.stderr.read() if r else ""

    @staticmethod
    def _stop(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s in (proc.stdin, proc.stdout, proc.stderr):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


if __name__ == "__main__":
    unittest.main()
