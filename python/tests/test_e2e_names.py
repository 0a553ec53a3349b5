"""Workspace names, labels, list, update, stop/start and chat shell reads
against a real guest (PYRO_E2E=1; see test_e2e.py)."""

from __future__ import annotations

import unittest

from pyro_mcp import AlreadyExistsError, FailedPreconditionError, InvalidArgumentError, NotFoundError, Pyro

from .test_e2e import BASE_ENV, E2E_SKIP, ensure_env, isolated_state_dir


@unittest.skipIf(E2E_SKIP, E2E_SKIP or "")
class NamesTest(unittest.TestCase):
    def test_names_labels_stop_start(self) -> None:
        ensure_env(BASE_ENV)
        p = Pyro(state_dir=isolated_state_dir(self))
        ws = p.create_workspace(BASE_ENV, name="py-ws", labels={"lang": "python"})
        wid = ws["workspace_id"]
        self.addCleanup(self._delete, p, wid)
        self.assertEqual((ws["name"], ws["labels"]), ("py-ws", {"lang": "python"}))

        with self.assertRaises(AlreadyExistsError):
            p.create_workspace(BASE_ENV, name="py-ws")
        with self.assertRaises(InvalidArgumentError):
            p.update_workspace("py-ws", name="bad name")
        listed = p.list_workspaces(labels={"lang": "python"})
        self.assertEqual([w["workspace_id"] for w in listed["workspaces"]], [wid])
        self.assertEqual(p.list_workspaces(labels={"lang": "go"})["count"], 0)

        r = p.exec_workspace("py-ws", command="echo kept > f")
        self.assertEqual((r["exit_code"], r["workspace_id"]), (0, wid))
        ws = p.update_workspace("py-ws", name="py-ws2", labels={"stage": "dev"}, clear_labels=["lang"])
        self.assertEqual((ws["name"], ws["labels"]), ("py-ws2", {"stage": "dev"}))
        with self.assertRaises(NotFoundError):
            p.status_workspace("py-ws")

        sh = p.open_shell("py-ws2")
        p.write_shell("py-ws2", sh["shell_id"], input=r"printf '\033[1mB\033[0m-\rA\n'")
        out = p.read_shell("py-ws2", sh["shell_id"], plain=True, wait_for_idle_ms=1000)["output"]
        self.assertIn("\nA-\n", out)  # "B-", then CR and "A" over the B
        self.assertNotIn("\x1b", out)
        self.assertNotIn("\r", out)

        self.assertEqual(p.stop_workspace("py-ws2")["state"], "stopped")
        with self.assertRaises(FailedPreconditionError):
            p.stop_workspace("py-ws2")
        with self.assertRaises(FailedPreconditionError) as cm:
            p.exec_workspace("py-ws2", command="true")
        self.assertIn("workspace start", cm.exception.hint or str(cm.exception))
        self.assertEqual(p.start_workspace("py-ws2")["state"], "running")
        self.assertEqual(p.exec_workspace(wid, command="cat f")["stdout"], "kept\n")

    @staticmethod
    def _delete(p: Pyro, wid: str) -> None:
        try:
            p.delete_workspace(wid)
        except NotFoundError:
            pass


if __name__ == "__main__":
    unittest.main()
