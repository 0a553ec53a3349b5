"""A fake ``pyro`` binary for argument-mapping tests (no VM involved).

It records its argv, its /proc/self/cmdline, its stdin and PYRO_HOME as one JSON line in $FAKE_PYRO_LOG, prints
$FAKE_PYRO_STDOUT (default ``{"ok": true}``) and $FAKE_PYRO_STDERR, and exits
with $FAKE_PYRO_EXIT (default 0).
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from typing import Any, Optional

SCRIPT = r'''
import json, os, sys
with open(os.environ["FAKE_PYRO_LOG"], "a") as f:
    f.write(json.dumps({"argv": sys.argv[1:], "pyro_home": os.environ.get("PYRO_HOME"),
                        "stdin_tty": os.isatty(0),
                        "stdin": "" if os.isatty(0) else sys.stdin.buffer.read().decode("utf-8", "replace"),
                        "cmdline": open("/proc/self/cmdline", "rb").read().decode("utf-8", "replace")}) + "\n")
sys.stdout.write(os.environ.get("FAKE_PYRO_STDOUT", '{"ok": true}'))
sys.stderr.write(os.environ.get("FAKE_PYRO_STDERR", ""))
sys.exit(int(os.environ.get("FAKE_PYRO_EXIT", "0")))
'''


class FakePyro:
    """A temp directory holding an executable ``pyro`` and its call log."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-pyro-")
        self.dir = self._tmp.name
        self.path = os.path.join(self.dir, "pyro")
        self.log = os.path.join(self.dir, "calls.jsonl")
        with open(self.path, "w") as f:
            f.write(f"#!{sys.executable}\n{SCRIPT}")
        os.chmod(self.path, os.stat(self.path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        self._saved: dict[str, Optional[str]] = {}

    def set(self, stdout: Optional[str] = None, stderr: str = "", exit_code: int = 0) -> None:
        """Choose what the next calls print and return."""
        self._setenv("FAKE_PYRO_LOG", self.log)
        self._setenv("FAKE_PYRO_STDOUT", stdout if stdout is not None else '{"ok": true}')
        self._setenv("FAKE_PYRO_STDERR", stderr)
        self._setenv("FAKE_PYRO_EXIT", str(exit_code))

    def calls(self) -> list[dict[str, Any]]:
        """Every recorded call so far."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [json.loads(line) for line in f if line.strip()]

    def last_argv(self) -> list[str]:
        """The argv (without the program) of the latest call."""
        return self.calls()[-1]["argv"]

    def reset(self) -> None:
        if os.path.exists(self.log):
            os.remove(self.log)

    def _setenv(self, key: str, value: str) -> None:
        if key not in self._saved:
            self._saved[key] = os.environ.get(key)
        os.environ[key] = value

    def close(self) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._tmp.cleanup()
