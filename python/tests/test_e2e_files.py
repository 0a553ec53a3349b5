"""File list/read/write, patch apply, summary and the stopped-disk tools
against a real guest (PYRO_E2E=1; see test_e2e.py)."""

from __future__ import annotations

import os
import tempfile
import unittest

from pyro_mcp import FailedPreconditionError, InvalidArgumentError, NotFoundError, Pyro

from .test_e2e import BASE_ENV, E2E_SKIP, ensure_env, isolated_state_dir

PATCH = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n"


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class FilesTest(unittest.TestCase):
    def test_files_patch_summary_disk(self) -> None:
        ensure_env(BASE_ENV)
        p = Pyro(state_dir=isolated_state_dir(self))
        wid = p.create_workspace(BASE_ENV)["workspace_id"]
        self.addCleanup(self._delete, p, wid)

        w = p.write_workspace_file(wid, "notes.txt", text="one\ntwo\n")
        self.assertEqual((w["bytes_written"], w["changed"]), (8, True))
        self.assertFalse(p.write_workspace_file(wid, "notes.txt", text="one\ntwo\n")["changed"])
        self.assertTrue(p.apply_workspace_patch(wid, patch=PATCH)["changed"])
        self.assertEqual(p.read_workspace_file(wid, "notes.txt")["content"], "one\nTWO\n")
        # The same patch no longer applies: refused, naming the hunk, nothing changed.
        with self.assertRaises(FailedPreconditionError) as cm:
            p.apply_workspace_patch(wid, patch=PATCH)
        self.assertIn("hunk 1", str(cm.exception))
        self.assertEqual(p.read_workspace_file(wid, "notes.txt")["content"], "one\nTWO\n")

        with self.assertRaises(InvalidArgumentError):
            p.read_workspace_file(wid, "/etc/hostname")
        with self.assertRaises(InvalidArgumentError):
            p.read_workspace_file(wid, "notes.txt", max_bytes=0)
        paths = [e["path"] for e in p.list_workspace_files(wid)["entries"]]
        self.assertIn("/workspace/notes.txt", paths)

        self.assertEqual(p.exec_workspace(wid, command="exit 3")["exit_code"], 3)
        s = p.summarize_workspace(wid)
        self.assertEqual(s["commands"][-1]["exit_code"], 3)
        self.assertIn("notes.txt", [c["path"] for c in s["changes"]])  # relative, like workspace diff

        # Disk tools need the workspace stopped and never boot it.
        with self.assertRaises(FailedPreconditionError):
            p.list_workspace_disk(wid)
        p.stop_workspace(wid)
        self.assertEqual(p.read_workspace_disk(wid, "notes.txt")["content"], "one\nTWO\n")
        self.assertIn("/workspace/notes.txt", [e["path"] for e in p.list_workspace_disk(wid)["entries"]])
        out = os.path.join(tempfile.mkdtemp(), "ws.ext4")
        self.addCleanup(lambda: os.path.exists(out) and os.remove(out))
        p.export_workspace_disk(wid, output_path=out)
        self.assertGreater(os.path.getsize(out), 0)
        self.assertEqual(p.status_workspace(wid)["state"], "stopped")

    @staticmethod
    def _delete(p: Pyro, wid: str) -> None:
        try:
            p.delete_workspace(wid)
        except NotFoundError:
            pass
