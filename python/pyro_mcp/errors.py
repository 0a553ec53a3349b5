"""Exceptions raised by the pyro Python SDK.

Every failure of the ``pyro`` binary carries one category (the same categories
the Go SDK, the CLI exit codes and the MCP tool errors use). Each category maps
to one subclass of :class:`PyroError`, so callers branch with ``except
NotFoundError:`` rather than by matching message text.
"""

from __future__ import annotations

import re
from typing import Optional

__all__ = [
    "PyroError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "UnavailableError",
    "error_from_payload",
    "split_hint",
]


class PyroError(Exception):
    """A failure reported by pyro.

    Attributes:
        message: the error text without the hint.
        category: ``"not_found"``, ``"already_exists"``, ``"failed_precondition"``,
            ``"invalid_argument"``, ``"unavailable"`` or ``"internal"``.
        hint: an action a person can take to fix it, or ``None``.
        exit_code: the ``pyro`` process exit code, when known.
        stderr: what the ``pyro`` process wrote on stderr, when known.
    """

    #: The category this class stands for (subclasses override it).
    default_category: str = "internal"

    def __init__(
        self,
        message: str,
        *,
        category: Optional[str] = None,
        hint: Optional[str] = None,
        exit_code: Optional[int] = None,
        stderr: str = "",
    ) -> None:
        self.message: str = message
        self.category: str = category or self.default_category
        self.hint: Optional[str] = hint
        self.exit_code: Optional[int] = exit_code
        self.stderr: str = stderr
        text = message if not hint else f"{message} (hint: {hint})"
        super().__init__(text)


class NotFoundError(PyroError):
    """The named environment, VM, workspace, snapshot, service or shell does not exist."""

    default_category = "not_found"


class AlreadyExistsError(PyroError):
    """Something with that name already exists (e.g. a snapshot or service name)."""

    default_category = "already_exists"


class FailedPreconditionError(PyroError):
    """The object is not in a state that allows the operation (e.g. VM not running)."""

    default_category = "failed_precondition"


class InvalidArgumentError(PyroError):
    """A parameter was rejected (bad name, bad path, bad flag value...)."""

    default_category = "invalid_argument"


class UnavailableError(PyroError):
    """The host cannot do it right now (no guest can boot, a guest did not answer...)."""

    default_category = "unavailable"


_BY_CATEGORY: dict[str, type[PyroError]] = {
    "not_found": NotFoundError,
    "already_exists": AlreadyExistsError,
    "failed_precondition": FailedPreconditionError,
    "invalid_argument": InvalidArgumentError,
    "unavailable": UnavailableError,
}

# pyro's CLI exit codes for its own failures (not a guest command's exit code).
_BY_EXIT_CODE: dict[int, str] = {
    2: "invalid_argument",
    3: "not_found",
    4: "already_exists",
    5: "failed_precondition",
    6: "unavailable",
}

_HINT_RE = re.compile(r"\s*\(hint: (?P<hint>.*)\)\s*$", re.DOTALL)


def split_hint(text: str) -> tuple[str, Optional[str]]:
    """Split pyro's ``"message (hint: do this)"`` form into ``(message, hint)``.

    Only a trailing ``(hint: ...)`` is taken; when an error wraps another
    hinted error, the inner hints stay in the message and the outermost (last)
    one becomes the hint.
    """
    text = text.strip()
    if not text.endswith(")"):
        return text, None
    # Find the last "(hint: " whose parenthesis closes at the very end.
    idx = text.rfind("(hint: ")
    while idx != -1:
        m = _HINT_RE.match(text, idx)
        if m and _balanced(m.group("hint")):
            return text[:idx].rstrip(), m.group("hint")
        idx = text.rfind("(hint: ", 0, idx)
    return text, None


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def error_class(category: str) -> type[PyroError]:
    """The exception class for a category name (``PyroError`` for unknown ones)."""
    return _BY_CATEGORY.get(category, PyroError)


def error_from_payload(
    payload: dict, *, exit_code: Optional[int] = None, stderr: str = ""
) -> PyroError:
    """Build the exception for one ``{"message": ..., "category": ...}`` object."""
    raw = str(payload.get("message", "")) or "pyro failed"
    category = str(payload.get("category") or "")
    if not category and exit_code is not None:
        category = _BY_EXIT_CODE.get(exit_code, "internal")
    category = category or "internal"
    message, hint = split_hint(raw)
    return error_class(category)(
        message, category=category, hint=hint, exit_code=exit_code, stderr=stderr
    )


def error_from_exit(exit_code: int, stderr: str, stdout: str = "") -> PyroError:
    """Build the exception for a ``pyro`` run that printed no JSON object."""
    text = stderr.strip() or stdout.strip() or f"pyro exited with code {exit_code}"
    if text.startswith("pyro: "):
        text = text[len("pyro: ") :]
    category = _BY_EXIT_CODE.get(exit_code, "internal")
    message, hint = split_hint(text)
    return error_class(category)(
        message, category=category, hint=hint, exit_code=exit_code, stderr=stderr
    )
