"""Run this test suite and write one JSON record per test (for e2e/python_test.go).

Usage (from the python/ directory): ``python3 -m tests.jsonrun RESULTS.json``

The usual verbose unittest report goes to stderr; RESULTS.json gets a list of
``{"id", "outcome": "pass"|"fail"|"skip", "message", "seconds"}``. Exit status
is 0 when nothing failed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import unittest
from typing import Any


class _Result(unittest.TextTestResult):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.records: list[dict[str, Any]] = []
        self._started: dict[str, float] = {}

    def startTest(self, test: unittest.TestCase) -> None:
        self._started[test.id()] = time.monotonic()
        super().startTest(test)

    def _record(self, test: Any, outcome: str, message: str = "") -> None:
        tid = test.id() if hasattr(test, "id") else str(test)
        start = self._started.get(tid)
        self.records.append({
            "id": tid,
            "outcome": outcome,
            "message": message,
            "seconds": round(time.monotonic() - start, 3) if start else 0.0,
        })

    def addSuccess(self, test: unittest.TestCase) -> None:
        super().addSuccess(test)
        self._record(test, "pass")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addFailure(test, err)
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addError(self, test: Any, err: Any) -> None:
        super().addError(test, err)
        self._record(test, "fail", self._exc_info_to_string(err, test))

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        super().addSkip(test, reason)
        self._record(test, "skip", reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:
        super().addExpectedFailure(test, err)
        self._record(test, "pass")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:
        super().addUnexpectedSuccess(test)
        self._record(test, "fail", "unexpected success")

    def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            self._record(subtest, "fail", self._exc_info_to_string(err, test))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    suite = unittest.defaultTestLoader.discover(here, top_level_dir=os.path.dirname(here))
    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2, resultclass=_Result)
    result = runner.run(suite)
    records = result.records  # type: ignore[attr-defined]
    # A test with failing subtests reports success afterwards; keep only its failure.
    failed = {r["id"] for r in records if r["outcome"] == "fail"}
    records = [r for r in records if not (r["outcome"] == "pass" and any(f.startswith(r["id"] + " ") for f in failed))]
    with open(argv[1], "w") as f:
        json.dump(records, f, indent=1)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
