"""Fast tests, no VM: argument mapping (against a fake ``pyro``), error mapping,
binary lookup and the contract's method names, parameters and defaults."""

from __future__ import annotations

import inspect
import json
import os
import unittest
from typing import Any

import pyro_mcp
from pyro_mcp import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    Pyro,
    PyroError,
    UnavailableError,
    create_server,
)
from pyro_mcp.errors import split_hint

from .fakepyro import FakePyro

P = inspect.Parameter
REQ = P.empty  # "no default"

# The Python SDK contract: method -> [(name, kind, default)] after self.
# kind: "pos" positional-or-keyword, "kw" keyword-only.
CONTRACT: dict[str, list[tuple[str, str, Any]]] = {
    "create_server": [("profile", "pos", None), ("pool", "kw", 0), ("pool_workspace", "kw", 0)],
    "start_pool": [
        ("environment", "pos", "debian:12"),
        ("size", "kw", 2),
        ("vcpu_count", "kw", 1),
        ("mem_mib", "kw", 1024),
        ("wait_seconds", "kw", 300),
        ("workspace", "kw", False),
    ],
    "list_pools": [],
    "stop_pools": [("environment", "pos", None)],
    "list_environments": [],
    "pull_environment": [("environment", "pos", REQ), ("registry", "kw", None)],
    "push_environment": [("environment", "pos", REQ), ("reference", "pos", REQ)],
    "inspect_environment": [("environment", "pos", REQ)],
    "prune_environments": [],
    "create_vm": [
        ("environment", "pos", "debian:12"),
        ("vcpu_count", "kw", 1),
        ("mem_mib", "kw", 1024),
        ("ttl_seconds", "kw", 0),
        ("network", "kw", False),
        ("network_policy", "kw", None),
        ("allow_hosts", "kw", None),
        ("allow_host_compat", "kw", False),
    ],
    "start_vm": [("vm_id", "pos", REQ)],
    "exec_vm": [("vm_id", "pos", REQ), ("command", "kw", REQ), ("timeout_seconds", "kw", 30)],
    "stop_vm": [("vm_id", "pos", REQ)],
    "delete_vm": [("vm_id", "pos", REQ)],
    "status_vm": [("vm_id", "pos", REQ)],
    "network_info_vm": [("vm_id", "pos", REQ)],
    "reap_expired": [],
    "run_in_vm": [
        ("environment", "pos", "debian:12"),
        ("command", "pos", None),  # required at call time (TypeError when missing)
        ("vcpu_count", "kw", 1),
        ("mem_mib", "kw", 1024),
        ("timeout_seconds", "kw", 30),
        ("ttl_seconds", "kw", 0),
        ("network", "kw", False),
        ("network_policy", "kw", None),
        ("allow_hosts", "kw", None),
        ("allow_host_compat", "kw", False),
    ],
    "create_workspace": [
        ("environment", "pos", "debian:12"),
        ("vcpu_count", "kw", 1),
        ("mem_mib", "kw", 1024),
        ("network", "kw", False),
        ("network_policy", "kw", None),
        ("allow_hosts", "kw", None),
        ("allow_host_compat", "kw", False),
        ("seed_path", "kw", None),
        ("secrets", "kw", None),
        ("name", "kw", None),
        ("labels", "kw", None),
        ("checkpoints", "kw", False),
    ],
    "list_workspaces": [("labels", "kw", None)],
    "update_workspace": [("workspace_id", "pos", REQ), ("name", "kw", None), ("labels", "kw", None), ("clear_labels", "kw", None)],
    "stop_workspace": [("workspace_id", "pos", REQ)],
    "start_workspace": [("workspace_id", "pos", REQ)],
    "fork_workspace": [("workspace_id", "pos", REQ), ("count", "kw", 1), ("name", "kw", None), ("with_secrets", "kw", False)],
    "push_workspace_sync": [
        ("workspace_id", "pos", REQ),
        ("source_path", "pos", REQ),
        ("dest", "kw", "/workspace"),
    ],
    "export_workspace": [("workspace_id", "pos", REQ), ("path", "pos", REQ), ("output_path", "kw", REQ)],
    "diff_workspace": [("workspace_id", "pos", REQ), ("since", "kw", None)],
    # Checkpoints (#15).
    "list_checkpoints": [("workspace_id", "pos", REQ)],
    "undo_workspace": [("workspace_id", "pos", REQ), ("to", "kw", None)],
    "create_snapshot": [("workspace_id", "pos", REQ), ("snapshot_name", "pos", REQ)],
    "list_snapshots": [("workspace_id", "pos", REQ)],
    "delete_snapshot": [("workspace_id", "pos", REQ), ("snapshot_name", "pos", REQ)],
    "reset_workspace": [("workspace_id", "pos", REQ), ("snapshot", "kw", "baseline")],
    "start_service": [
        ("workspace_id", "pos", REQ),
        ("service_name", "pos", REQ),
        ("command", "kw", REQ),
        ("cwd", "kw", "/workspace"),
        ("readiness", "kw", None),
        ("ready_timeout_seconds", "kw", 30),
        ("ready_interval_ms", "kw", 500),
        ("secret_env", "kw", None),
        ("publish", "kw", None),
    ],
    "set_workspace_network": [("workspace_id", "pos", REQ), ("network_policy", "kw", None), ("allow_hosts", "kw", None)],
    "list_services": [("workspace_id", "pos", REQ)],
    "status_service": [("workspace_id", "pos", REQ), ("service_name", "pos", REQ)],
    "logs_service": [
        ("workspace_id", "pos", REQ),
        ("service_name", "pos", REQ),
        ("tail_lines", "kw", 200),
        ("all", "kw", False),
    ],
    "stop_service": [("workspace_id", "pos", REQ), ("service_name", "pos", REQ)],
    "open_shell": [
        ("workspace_id", "pos", REQ),
        ("cwd", "kw", "/workspace"),
        ("cols", "kw", 120),
        ("rows", "kw", 30),
        ("secret_env", "kw", None),
    ],
    "read_shell": [
        ("workspace_id", "pos", REQ),
        ("shell_id", "pos", REQ),
        ("cursor", "kw", 0),
        ("max_chars", "kw", 65536),
        ("plain", "kw", False),
        ("wait_for_idle_ms", "kw", None),
    ],
    "write_shell": [
        ("workspace_id", "pos", REQ),
        ("shell_id", "pos", REQ),
        ("input", "kw", REQ),
        ("append_newline", "kw", True),
    ],
    "signal_shell": [("workspace_id", "pos", REQ), ("shell_id", "pos", REQ), ("signal_name", "kw", "INT")],
    "close_shell": [("workspace_id", "pos", REQ), ("shell_id", "pos", REQ)],
    "exec_workspace": [
        ("workspace_id", "pos", REQ),
        ("command", "kw", REQ),
        ("timeout_seconds", "kw", 30),
        ("secret_env", "kw", None),
        ("background", "kw", False),
    ],
    # Background jobs (#17 item 9).
    "read_workspace_job": [
        ("workspace_id", "pos", REQ), ("job_id", "pos", REQ), ("cursor", "kw", 0), ("max_chars", "kw", 65536),
    ],
    "wait_workspace_job": [("workspace_id", "pos", REQ), ("job_id", "pos", REQ), ("timeout_seconds", "kw", 30)],
    "delete_workspace": [("workspace_id", "pos", REQ)],
    "status_workspace": [("workspace_id", "pos", REQ)],
    "logs_workspace": [("workspace_id", "pos", REQ)],
    # Files (#16).
    "list_workspace_files": [("workspace_id", "pos", REQ), ("path", "pos", "/workspace"), ("recursive", "kw", False)],
    "read_workspace_file": [
        ("workspace_id", "pos", REQ), ("path", "pos", REQ), ("max_bytes", "kw", 65536), ("base64", "kw", False),
    ],
    "write_workspace_file": [("workspace_id", "pos", REQ), ("path", "pos", REQ), ("text", "kw", REQ)],
    "apply_workspace_patch": [("workspace_id", "pos", REQ), ("patch", "kw", REQ)],
    "summarize_workspace": [("workspace_id", "pos", REQ)],
    "export_workspace_disk": [("workspace_id", "pos", REQ), ("output_path", "kw", REQ), ("overwrite", "kw", False)],
    "list_workspace_disk": [("workspace_id", "pos", REQ), ("path", "pos", "/workspace"), ("recursive", "kw", False)],
    "read_workspace_disk": [
        ("workspace_id", "pos", REQ), ("path", "pos", REQ), ("max_bytes", "kw", 65536), ("base64", "kw", False),
    ],
}

_KIND = {"pos": P.POSITIONAL_OR_KEYWORD, "kw": P.KEYWORD_ONLY}


class ContractTest(unittest.TestCase):
    def test_public_names(self) -> None:
        for name in [
            "Pyro", "create_server", "PyroError", "NotFoundError", "AlreadyExistsError",
            "FailedPreconditionError", "InvalidArgumentError", "UnavailableError",
        ]:
            self.assertTrue(hasattr(pyro_mcp, name), name)
            self.assertIn(name, pyro_mcp.__all__)
        self.assertEqual(list(inspect.signature(create_server).parameters), ["pyro_bin", "profile", "pool", "pool_workspace"])
        self.assertIsNone(inspect.signature(create_server).parameters["profile"].default)
        self.assertIsNone(inspect.signature(create_server).parameters["pyro_bin"].default)
        sig = inspect.signature(Pyro)
        self.assertEqual([(p.name, p.default) for p in sig.parameters.values()],
                         [("pyro_bin", None), ("state_dir", None)])

    def test_signatures_match_contract(self) -> None:
        for method, params in CONTRACT.items():
            with self.subTest(method=method):
                fn = getattr(Pyro, method)
                sig = inspect.signature(fn)
                got = [(p.name, p.kind, p.default) for p in sig.parameters.values()][1:]
                want = [(n, _KIND[k], d) for n, k, d in params]
                self.assertEqual(got, want)
                self.assertTrue(fn.__doc__, f"{method} has no docstring")
                self.assertIsNot(sig.return_annotation, P.empty, f"{method} has no return annotation")

    def test_no_extra_public_methods(self) -> None:
        public = {n for n, _ in inspect.getmembers(Pyro, inspect.isfunction) if not n.startswith("_")}
        self.assertEqual(public, set(CONTRACT))

    def test_run_in_vm_requires_command(self) -> None:
        with self.assertRaises(TypeError):
            Pyro(pyro_bin="/nonexistent/pyro").run_in_vm("debian:12")


class MappingTest(unittest.TestCase):
    """Each method runs exactly the documented `pyro ... --json` command line."""

    def setUp(self) -> None:
        self.fake = FakePyro()
        self.fake.set()
        self.addCleanup(self.fake.close)
        self.pyro = Pyro(pyro_bin=self.fake.path)

    def check(self, call: Any, want: list[str], stdout: str = '{"ok": true}') -> Any:
        self.fake.reset()
        self.fake.set(stdout=stdout)
        result = call()
        calls = self.fake.calls()
        self.assertEqual(len(calls), 1, "one subprocess per call")
        self.assertEqual(calls[0]["argv"], want)
        self.assertFalse(calls[0]["stdin_tty"])
        return result

    def test_secret_values_never_on_command_line(self) -> None:
        # Issue #12.11: every local user can read a process's command line
        # (/proc/PID/cmdline), so secret values travel on stdin instead.
        values = {"API_TOKEN": "tok-3f9a\nline2", "DB_PASSWORD": "pw=with=equals", "EMPTYISH": " "}
        self.check(lambda: self.pyro.create_workspace(secrets=values),
                   ["workspace", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--secret=API_TOKEN", "--secret=DB_PASSWORD", "--secret=EMPTYISH"])
        call = self.fake.calls()[-1]
        for v in values.values():
            self.assertNotIn(v, call["cmdline"])
            self.assertFalse(any(v in a for a in call["argv"]))
        self.assertEqual(call["stdin"], "tok-3f9a\nline2\x00pw=with=equals\x00 \x00")
        with self.assertRaises(ValueError):
            self.pyro.create_workspace(secrets={"A": "nul\x00inside"})

    def test_environments(self) -> None:
        envs = self.check(self.pyro.list_environments, ["env", "list", "--json"],
                          stdout='{"environments": [{"name": "debian:12"}]}')
        self.assertEqual(envs, [{"name": "debian:12"}])
        self.check(lambda: self.pyro.pull_environment("debian:12-base"),
                   ["env", "pull", "--json", "debian:12-base"])
        self.check(lambda: self.pyro.pull_environment("debian:12", registry="localhost:5000/pyro"),
                   ["env", "pull", "--json", "--registry=localhost:5000/pyro", "debian:12"])
        self.check(lambda: self.pyro.push_environment("debian:12", "localhost:5000/pyro/debian:12"),
                   ["env", "push", "--json", "debian:12", "localhost:5000/pyro/debian:12"])
        self.check(lambda: self.pyro.inspect_environment("debian:12"),
                   ["env", "inspect", "--json", "debian:12"])
        self.check(self.pyro.prune_environments, ["env", "prune", "--json"])

    def test_vms(self) -> None:
        p = self.pyro
        self.check(p.create_vm, ["vm", "create", "--json", "debian:12", "--vcpu-count=1",
                                 "--mem-mib=1024", "--ttl-seconds=0"])
        self.check(lambda: p.create_vm(network_policy="off"),
                   ["vm", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--ttl-seconds=0", "--network-policy=off"])
        self.check(lambda: p.create_vm("debian:12-base", vcpu_count=2, mem_mib=512, ttl_seconds=60,
                                       network=True, allow_host_compat=True),
                   ["vm", "create", "--json", "debian:12-base", "--vcpu-count=2", "--mem-mib=512",
                    "--ttl-seconds=60", "--network", "--allow-host-compat"])
        for name, word in [("start_vm", "start"), ("stop_vm", "stop"), ("delete_vm", "delete"),
                           ("status_vm", "status"), ("network_info_vm", "network")]:
            self.check(lambda: getattr(p, name)("abc123"), ["vm", word, "--json", "abc123"])
        self.check(p.reap_expired, ["vm", "reap", "--json"])
        self.check(lambda: p.exec_vm("abc", command="echo hi; exit 3"),
                   ["vm", "exec", "--json", "abc", "--timeout-seconds=30", "--", "echo hi; exit 3"])
        self.check(lambda: p.exec_vm("abc", command=["ls", "-la", "/"], timeout_seconds=5),
                   ["vm", "exec", "--json", "abc", "--timeout-seconds=5", "--", "ls", "-la", "/"])

    def test_run(self) -> None:
        p = self.pyro
        self.check(lambda: p.run_in_vm("debian:12", "uname -a"),
                   ["run", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--timeout-seconds=30", "--ttl-seconds=0", "--", "uname -a"])
        self.check(lambda: p.run_in_vm(command=["python3", "-c", "print(1)"], vcpu_count=2, mem_mib=2048,
                                       timeout_seconds=9, ttl_seconds=99, network=True,
                                       allow_host_compat=True),
                   ["run", "--json", "debian:12", "--vcpu-count=2", "--mem-mib=2048",
                    "--timeout-seconds=9", "--ttl-seconds=99", "--network", "--allow-host-compat",
                    "--", "python3", "-c", "print(1)"])
        self.check(lambda: p.run_in_vm("debian:12", "pip download x", network_policy="egress",
                                       allow_hosts=["@pypi", "*.example.com:443"]),
                   ["run", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--timeout-seconds=30", "--ttl-seconds=0", "--network-policy=egress",
                    "--allow-host=@pypi", "--allow-host=*.example.com:443", "--", "pip download x"])
        with self.assertRaises(TypeError):
            p.run_in_vm("debian:12", "true", network_policy="egress", allow_hosts="pypi.org")
        with self.assertRaises(ValueError):
            p.run_in_vm("debian:12", "")
        with self.assertRaises(ValueError):
            p.run_in_vm("debian:12", [])

    def test_workspace_files(self) -> None:
        p = self.pyro
        self.check(lambda: p.list_workspace_files("w1"), ["workspace", "file", "list", "--json", "w1", "/workspace"])
        self.check(lambda: p.list_workspace_files("w1", "src", recursive=True),
                   ["workspace", "file", "list", "--json", "w1", "src", "--recursive"])
        self.check(lambda: p.read_workspace_file("w1", "a.txt"),
                   ["workspace", "file", "read", "--json", "w1", "a.txt", "--max-bytes=65536"])
        self.check(lambda: p.read_workspace_file("w1", "a.bin", max_bytes=10, base64=True),
                   ["workspace", "file", "read", "--json", "w1", "a.bin", "--max-bytes=10", "--base64"])
        # Content and patches travel on stdin, whatever they hold.
        text = "--text=x\n\x00 ünïcode\n"
        self.check(lambda: p.write_workspace_file("w1", "n.txt", text=text),
                   ["workspace", "file", "write", "--json", "w1", "n.txt", "--text-file=-"])
        self.assertEqual(self.fake.calls()[-1]["stdin"], text)
        patch = "--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+b\n"
        self.check(lambda: p.apply_workspace_patch("w1", patch=patch),
                   ["workspace", "patch", "apply", "--json", "w1", "--patch-file=-"])
        self.assertEqual(self.fake.calls()[-1]["stdin"], patch)
        self.check(lambda: p.summarize_workspace("w1"), ["workspace", "summary", "--json", "w1"])
        self.check(lambda: p.export_workspace_disk("w1", output_path="/tmp/w.ext4"),
                   ["workspace", "disk", "export", "--json", "w1", "--output=/tmp/w.ext4"])
        self.check(lambda: p.list_workspace_disk("w1", "src", recursive=True),
                   ["workspace", "disk", "list", "--json", "w1", "src", "--recursive"])
        self.check(lambda: p.read_workspace_disk("w1", "a.txt", max_bytes=5),
                   ["workspace", "disk", "read", "--json", "w1", "a.txt", "--max-bytes=5"])

    def test_checkpoints(self) -> None:
        p = self.pyro
        self.check(lambda: p.create_workspace(checkpoints=True),
                   ["workspace", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024", "--checkpoints"])
        self.check(lambda: p.list_checkpoints("abc"), ["workspace", "checkpoint", "list", "--json", "abc"])
        self.check(lambda: p.undo_workspace("abc"), ["workspace", "undo", "--json", "abc"])
        self.check(lambda: p.undo_workspace("abc", to=3), ["workspace", "undo", "--json", "abc", "--to=3"])
        self.check(lambda: p.diff_workspace("abc", since=2), ["workspace", "diff", "--json", "abc", "--since=2"])

    def test_workspaces(self) -> None:
        p = self.pyro
        self.check(p.create_workspace, ["workspace", "create", "--json", "debian:12", "--vcpu-count=1",
                                        "--mem-mib=1024"])
        self.check(lambda: p.create_workspace("debian:12-base", vcpu_count=2, mem_mib=2048, network=True,
                                              allow_host_compat=True, seed_path="/src",
                                              secrets=[{"name": "A", "value": "x=y"},
                                                       {"name": "B", "file_path": "/k.pem"}]),
                   ["workspace", "create", "--json", "debian:12-base", "--vcpu-count=2", "--mem-mib=2048",
                    "--network", "--allow-host-compat", "--seed-path=/src", "--secret=A",
                    "--secret-file=B=/k.pem"])
        self.assertEqual(self.fake.calls()[-1]["stdin"], "x=y\x00")
        self.check(lambda: p.create_workspace(network_policy="egress+published-ports", allow_hosts=["10.0.0.0/8"]),
                   ["workspace", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--network-policy=egress+published-ports", "--allow-host=10.0.0.0/8"])
        self.check(lambda: p.set_workspace_network("abc", allow_hosts=["pypi.org"]),
                   ["workspace", "network", "set", "--json", "abc", "--allow-host=pypi.org"])
        self.check(lambda: p.set_workspace_network("abc", network_policy="egress"),
                   ["workspace", "network", "set", "--json", "abc", "--network-policy=egress"])
        self.check(lambda: p.create_workspace(secrets={"TOKEN": "-v"}),
                   ["workspace", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024",
                    "--secret=TOKEN"])
        self.assertEqual(self.fake.calls()[-1]["stdin"], "-v\x00")
        with self.assertRaises(ValueError):
            p.create_workspace(secrets=[{"name": "A"}])
        with self.assertRaises(ValueError):
            p.create_workspace(secrets=[{"name": "A", "value": "1", "file_path": "/x"}])
        self.check(lambda: p.push_workspace_sync("w1", "./src"),
                   ["workspace", "sync", "push", "--json", "w1", "./src", "--dest=/workspace"])
        self.check(lambda: p.push_workspace_sync("w1", "a.tgz", dest="/workspace/x"),
                   ["workspace", "sync", "push", "--json", "w1", "a.tgz", "--dest=/workspace/x"])
        self.check(lambda: p.export_workspace("w1", "out.txt", output_path="/tmp/o"),
                   ["workspace", "export", "--json", "w1", "out.txt", "--output=/tmp/o"])
        self.check(lambda: p.diff_workspace("w1"), ["workspace", "diff", "--json", "w1"])
        self.check(lambda: p.create_snapshot("w1", "green"),
                   ["workspace", "snapshot", "create", "--json", "w1", "green"])
        self.check(lambda: p.list_snapshots("w1"), ["workspace", "snapshot", "list", "--json", "w1"])
        self.check(lambda: p.delete_snapshot("w1", "green"),
                   ["workspace", "snapshot", "delete", "--json", "w1", "green"])
        self.check(lambda: p.reset_workspace("w1"), ["workspace", "reset", "--json", "w1", "--snapshot=baseline"])
        self.check(lambda: p.reset_workspace("w1", snapshot="green"),
                   ["workspace", "reset", "--json", "w1", "--snapshot=green"])
        self.check(lambda: p.exec_workspace("w1", command="make test"),
                   ["workspace", "exec", "--json", "w1", "--timeout-seconds=30", "--", "make test"])
        self.check(lambda: p.exec_workspace("w1", command=["env"], timeout_seconds=3,
                                            secret_env={"API_TOKEN": None, "DB": "DB_PASSWORD", "X": ""}),
                   ["workspace", "exec", "--json", "w1", "--timeout-seconds=3", "--secret-env=API_TOKEN",
                    "--secret-env=DB=DB_PASSWORD", "--secret-env=X", "--", "env"])
        self.check(lambda: p.exec_workspace("w1", command="env", secret_env=["A", "B"]),
                   ["workspace", "exec", "--json", "w1", "--timeout-seconds=30", "--secret-env=A",
                    "--secret-env=B", "--", "env"])
        self.check(lambda: p.exec_workspace("w1", command="sleep 1", timeout_seconds=600, background=True),
                   ["workspace", "exec", "--json", "w1", "--timeout-seconds=600", "--background", "--", "sleep 1"])
        self.check(lambda: p.read_workspace_job("w1", "j1", cursor=7),
                   ["workspace", "job", "read", "--json", "w1", "j1", "--cursor=7", "--max-chars=65536"])
        self.check(lambda: p.wait_workspace_job("w1", "j1", timeout_seconds=60),
                   ["workspace", "job", "wait", "--json", "w1", "j1", "--timeout-seconds=60"])
        for name, word in [("status_workspace", "status"), ("logs_workspace", "logs"),
                           ("delete_workspace", "delete")]:
            self.check(lambda: getattr(p, name)("w1"), ["workspace", word, "--json", "w1"])

    def test_services(self) -> None:
        p = self.pyro
        base = ["workspace", "service", "start", "--json", "w1", "web", "--cwd=/workspace"]
        tail = ["--ready-timeout-seconds=30", "--ready-interval-ms=500"]
        self.check(lambda: p.start_service("w1", "web", command="python3 -m http.server"),
                   base + tail + ["--", "python3 -m http.server"])
        cases = [
            ({"type": "file", "path": "/tmp/ready"}, ["--ready-file=/tmp/ready"]),
            ({"type": "tcp", "address": "127.0.0.1:8080"}, ["--ready-tcp=127.0.0.1:8080"]),
            ({"type": "http", "url": "http://127.0.0.1:8080/"}, ["--ready-http=http://127.0.0.1:8080/"]),
            ({"type": "http", "url": "http://x/", "expect_status": 404},
             ["--ready-http=http://x/", "--ready-http-status=404"]),
            ({"type": "command", "command": "test -e /tmp/x"}, ["--ready-command=test -e /tmp/x"]),
        ]
        for readiness, flags in cases:
            self.check(lambda: p.start_service("w1", "web", command=["srv", "-p", "1"], readiness=readiness),
                       base + flags + tail + ["--", "srv", "-p", "1"])
        self.check(lambda: p.start_service("w1", "db", command="run", cwd="/srv", ready_timeout_seconds=5,
                                           ready_interval_ms=100, secret_env={"PW": "DB_PW"}),
                   ["workspace", "service", "start", "--json", "w1", "db", "--cwd=/srv",
                    "--ready-timeout-seconds=5", "--ready-interval-ms=100", "--secret-env=PW=DB_PW",
                    "--", "run"])
        self.check(lambda: p.start_service("w1", "web", command="srv", publish=["8000", "18001:8001"]),
                   base + tail + ["--publish=8000", "--publish=18001:8001", "--", "srv"])
        with self.assertRaises(TypeError):
            p.start_service("w1", "web", command="x", publish="8000")
        with self.assertRaises(ValueError):
            p.start_service("w1", "web", command="x", readiness={"type": "udp", "address": "x"})
        with self.assertRaises(ValueError):
            p.start_service("w1", "web", command="x", readiness={"type": "tcp"})
        self.check(lambda: p.list_services("w1"), ["workspace", "service", "list", "--json", "w1"])
        self.check(lambda: p.status_service("w1", "web"), ["workspace", "service", "status", "--json", "w1", "web"])
        self.check(lambda: p.stop_service("w1", "web"), ["workspace", "service", "stop", "--json", "w1", "web"])
        self.check(lambda: p.logs_service("w1", "web"),
                   ["workspace", "service", "logs", "--json", "w1", "web", "--tail-lines=200"])
        self.check(lambda: p.logs_service("w1", "web", tail_lines=5, all=True),
                   ["workspace", "service", "logs", "--json", "w1", "web", "--tail-lines=5", "--all"])

    def test_shells(self) -> None:
        p = self.pyro
        self.check(lambda: p.open_shell("w1"),
                   ["workspace", "shell", "open", "--json", "w1", "--cwd=/workspace", "--cols=120", "--rows=30"])
        self.check(lambda: p.open_shell("w1", cwd="/tmp", cols=80, rows=24, secret_env=["TOKEN"]),
                   ["workspace", "shell", "open", "--json", "w1", "--cwd=/tmp", "--cols=80", "--rows=24",
                    "--secret-env=TOKEN"])
        self.check(lambda: p.read_shell("w1", "s1"),
                   ["workspace", "shell", "read", "--json", "w1", "s1", "--cursor=0", "--max-chars=65536"])
        self.check(lambda: p.read_shell("w1", "s1", cursor=10, max_chars=5),
                   ["workspace", "shell", "read", "--json", "w1", "s1", "--cursor=10", "--max-chars=5"])
        self.check(lambda: p.write_shell("w1", "s1", input="ls -la"),
                   ["workspace", "shell", "write", "--json", "w1", "s1", "--input=ls -la"])
        self.check(lambda: p.write_shell("w1", "s1", input="--help", append_newline=False),
                   ["workspace", "shell", "write", "--json", "w1", "s1", "--input=--help", "--no-newline"])
        self.check(lambda: p.signal_shell("w1", "s1"),
                   ["workspace", "shell", "signal", "--json", "w1", "s1", "--signal=INT"])
        self.check(lambda: p.signal_shell("w1", "s1", signal_name="TERM"),
                   ["workspace", "shell", "signal", "--json", "w1", "s1", "--signal=TERM"])
        self.check(lambda: p.close_shell("w1", "s1"), ["workspace", "shell", "close", "--json", "w1", "s1"])
        self.check(lambda: p.read_shell("w1", "s1", plain=True, wait_for_idle_ms=300),
                   ["workspace", "shell", "read", "--json", "w1", "s1", "--cursor=0", "--max-chars=65536", "--plain",
                    "--wait-for-idle-ms=300"])

    def test_names_and_stop_start(self) -> None:
        p = self.pyro
        self.check(lambda: p.create_workspace(name="api", labels={"team": "infra", "stage": "a=b"}),
                   ["workspace", "create", "--json", "debian:12", "--vcpu-count=1", "--mem-mib=1024", "--name=api",
                    "--label=team=infra", "--label=stage=a=b"])
        self.check(lambda: p.list_workspaces(), ["workspace", "list", "--json"])
        self.check(lambda: p.list_workspaces(labels={"team": "infra"}), ["workspace", "list", "--json", "--label=team=infra"])
        self.check(lambda: p.update_workspace("w1", name="web", labels={"k": "v"}, clear_labels=["old"]),
                   ["workspace", "update", "--json", "w1", "--name=web", "--label=k=v", "--clear-label=old"])
        self.check(lambda: p.stop_workspace("api"), ["workspace", "stop", "--json", "api"])
        self.check(lambda: p.start_workspace("api"), ["workspace", "start", "--json", "api"])
        self.check(lambda: p.fork_workspace("api"), ["workspace", "fork", "--json", "api", "--count=1"])
        self.check(lambda: p.fork_workspace("api", count=3, name="try", with_secrets=True),
                   ["workspace", "fork", "--json", "api", "--count=3", "--name=try", "--with-secrets"])
        with self.assertRaises(TypeError):
            p.list_workspaces(labels=["team=infra"])  # type: ignore[arg-type]

    def test_result_with_nonzero_exit_is_a_result(self) -> None:
        self.fake.set(stdout=json.dumps({"exit_code": 3, "stdout": "hi\n"}), exit_code=3)
        self.assertEqual(self.pyro.run_in_vm("debian:12", "exit 3"), {"exit_code": 3, "stdout": "hi\n"})

    def test_state_dir_sets_pyro_home(self) -> None:
        Pyro(pyro_bin=self.fake.path, state_dir="/tmp/pyro-state").reap_expired()
        self.assertEqual(self.fake.calls()[-1]["pyro_home"], "/tmp/pyro-state")


class LookupTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakePyro()
        self.fake.set(stdout='{"environments": []}')
        self.addCleanup(self.fake.close)
        self.saved = {k: os.environ.get(k) for k in ("PATH", "PYRO_BIN")}
        self.addCleanup(self._restore)

    def _restore(self) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def test_path(self) -> None:
        os.environ.pop("PYRO_BIN", None)
        os.environ["PATH"] = self.fake.dir + os.pathsep + os.environ.get("PATH", "")
        p = Pyro()
        self.assertEqual(p.pyro_bin, self.fake.path)
        self.assertEqual(p.list_environments(), [])

    def test_env_var(self) -> None:
        os.environ["PYRO_BIN"] = self.fake.path
        os.environ["PATH"] = "/nonexistent"
        self.assertEqual(Pyro().pyro_bin, self.fake.path)
        self.assertEqual(Pyro(pyro_bin="/nonexistent/pyro").__class__, Pyro)  # lookup is lazy

    def test_missing(self) -> None:
        os.environ.pop("PYRO_BIN", None)
        os.environ["PATH"] = "/nonexistent"
        with self.assertRaises(UnavailableError) as cm:
            Pyro().list_environments()
        self.assertIn("PYRO_BIN", cm.exception.hint or "")
        with self.assertRaises(UnavailableError):
            Pyro(pyro_bin="/nonexistent/pyro").list_environments()

    def test_create_server_argv(self) -> None:
        self.assertEqual(create_server(self.fake.path).argv(), [self.fake.path, "mcp", "serve"])
        self.assertEqual(Pyro(pyro_bin=self.fake.path).create_server().argv("stdio"),
                         [self.fake.path, "mcp", "serve"])
        with self.assertRaises(ValueError):
            create_server(self.fake.path).argv("sse")
        for profile in ("vm-run", "workspace-core", "workspace-full"):
            self.assertEqual(create_server(self.fake.path, profile=profile).argv(),
                             [self.fake.path, "mcp", "serve", f"--profile={profile}"])
            self.assertEqual(Pyro(pyro_bin=self.fake.path).create_server(profile).argv()[-1], f"--profile={profile}")
        with self.assertRaises(ValueError):
            create_server(self.fake.path, profile="everything")
        self.assertEqual(create_server(self.fake.path, pool=2).argv(), [self.fake.path, "mcp", "serve", "--pool=2"])
        self.assertEqual(Pyro(pyro_bin=self.fake.path).create_server(pool=3).argv()[-1], "--pool=3")
        self.assertEqual(create_server(self.fake.path, pool_workspace=2).argv(), [self.fake.path, "mcp", "serve", "--pool-workspace=2"])
        self.assertEqual(Pyro(pyro_bin=self.fake.path).create_server(pool_workspace=1).argv()[-1], "--pool-workspace=1")

    def test_pools(self) -> None:
        pyro = Pyro(pyro_bin=self.fake.path)
        self.fake.set(stdout=json.dumps({"pools": [{"environment": "debian:12", "ready": 2}], "count": 1}))
        self.assertEqual(pyro.list_pools()[0]["ready"], 2)
        self.assertEqual(self.fake.last_argv(), ["pool", "status", "--json"])
        self.fake.set(stdout=json.dumps({"stopped": [], "count": 0}))
        self.assertEqual(pyro.stop_pools("debian:12-base"), [])
        self.assertEqual(self.fake.last_argv(), ["pool", "stop", "--json", "debian:12-base"])
        pyro.stop_pools()
        self.assertEqual(self.fake.last_argv(), ["pool", "stop", "--json"])
        # start_pool without waiting: the child's argv, then close.
        p = pyro.start_pool("debian:12-base", size=1, mem_mib=512, wait_seconds=0)
        p._proc.wait(timeout=60)  # the fake exits at once; a real pool runs until close
        self.assertEqual(p.close(), {"stopped": [], "count": 0})
        self.assertEqual(self.fake.calls()[-1]["argv"],
                         ["pool", "start", "--json", "--size=1", "--vcpu-count=1", "--mem-mib=512", "debian:12-base"])
        p = pyro.start_pool(size=2, workspace=True, wait_seconds=0)
        p._proc.wait(timeout=60)
        p.close()
        self.assertEqual(self.fake.calls()[-1]["argv"],
                         ["pool", "start", "--json", "--size=2", "--vcpu-count=1", "--mem-mib=1024", "--workspace", "debian:12"])


class ErrorMappingTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakePyro()
        self.addCleanup(self.fake.close)
        self.pyro = Pyro(pyro_bin=self.fake.path)

    def raise_for(self, message: str, category: str, code: int) -> PyroError:
        self.fake.set(stdout=json.dumps({"error": {"message": message, "category": category}}) + "\n",
                      stderr=f"pyro: {message}\n", exit_code=code)
        with self.assertRaises(PyroError) as cm:
            self.pyro.status_vm("x")
        return cm.exception

    def test_categories(self) -> None:
        for category, code, cls in [
            ("not_found", 3, NotFoundError),
            ("already_exists", 4, AlreadyExistsError),
            ("failed_precondition", 5, FailedPreconditionError),
            ("invalid_argument", 2, InvalidArgumentError),
            ("unavailable", 6, UnavailableError),
            ("internal", 1, PyroError),
        ]:
            with self.subTest(category=category):
                e = self.raise_for(f"it broke (hint: fix {category})", category, code)
                self.assertIs(type(e), cls)
                self.assertEqual(e.category, category)
                self.assertEqual(e.message, "it broke")
                self.assertEqual(e.hint, f"fix {category}")
                self.assertEqual(e.exit_code, code)
                self.assertIn("it broke", str(e))
                self.assertIn("pyro: it broke", e.stderr)

    def test_no_hint(self) -> None:
        e = self.raise_for('vm "x" not found', "not_found", 3)
        self.assertEqual((e.message, e.hint), ('vm "x" not found', None))

    def test_error_with_exit_zero_and_result_with_nonzero(self) -> None:
        # The "error" key decides, not the exit code.
        self.fake.set(stdout='{"error": {"message": "m", "category": "unavailable"}}', exit_code=0)
        with self.assertRaises(UnavailableError):
            self.pyro.reap_expired()

    def test_unparsable_output(self) -> None:
        self.fake.set(stdout="", stderr="pyro: boom (hint: do x)\n", exit_code=3)
        with self.assertRaises(NotFoundError) as cm:
            self.pyro.reap_expired()
        self.assertEqual((cm.exception.message, cm.exception.hint), ("boom", "do x"))
        self.fake.set(stdout="", stderr="panic: oops\n", exit_code=2)
        with self.assertRaises(InvalidArgumentError):
            self.pyro.reap_expired()
        self.fake.set(stdout="not json", exit_code=0)
        with self.assertRaises(PyroError) as cm:
            self.pyro.reap_expired()
        self.assertEqual(cm.exception.category, "internal")
        self.fake.set(stdout="", stderr="weird", exit_code=42)
        with self.assertRaises(PyroError) as cm:
            self.pyro.reap_expired()
        self.assertIs(type(cm.exception), PyroError)

    def test_split_hint(self) -> None:
        self.assertEqual(split_hint("a (hint: b)"), ("a", "b"))
        self.assertEqual(split_hint("a"), ("a", None))
        self.assertEqual(split_hint("a (b)"), ("a (b)", None))
        self.assertEqual(split_hint("a (hint: run `x (y)`)"), ("a", "run `x (y)`"))
        self.assertEqual(split_hint("outer: inner (hint: one) (hint: two)"), ("outer: inner (hint: one)", "two"))
        self.assertEqual(split_hint("msg (hint: multi\nline)\n"), ("msg", "multi\nline"))


class PackagingTest(unittest.TestCase):
    """The in-tree build backend makes a wheel with no network and no setuptools."""

    def test_build_wheel(self) -> None:
        import importlib.util
        import tempfile
        import zipfile

        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        spec = importlib.util.spec_from_file_location("pyro_build", os.path.join(root, "_build", "pyro_build.py"))
        assert spec and spec.loader
        backend = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(backend)
        self.assertEqual(backend.get_requires_for_build_wheel(), [])
        with tempfile.TemporaryDirectory() as d:
            name = backend.build_wheel(d)
            self.assertEqual(name, f"pyro_mcp-{pyro_mcp.__version__}-py3-none-any.whl")
            with zipfile.ZipFile(os.path.join(d, name)) as z:
                names = set(z.namelist())
                meta = z.read(f"pyro_mcp-{pyro_mcp.__version__}.dist-info/METADATA").decode()
        for f in ["pyro_mcp/__init__.py", "pyro_mcp/client.py", "pyro_mcp/errors.py", "pyro_mcp/py.typed"]:
            self.assertIn(f, names)
        self.assertFalse(any(n.startswith("tests/") for n in names))
        self.assertIn("Name: pyro-mcp\n", meta)
        self.assertIn(f"Version: {pyro_mcp.__version__}\n", meta)
        self.assertIn("Requires-Python: >=3.10", meta)


if __name__ == "__main__":
    unittest.main()
