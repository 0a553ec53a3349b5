"""pyro_mcp: the Python SDK for pyro, safe disposable Linux microVMs for AI agents.

Quick start::

    from pyro_mcp import Pyro

    pyro = Pyro()
    result = pyro.run_in_vm("debian:12", "python3 -c 'print(6*7)'")
    print(result["exit_code"], result["stdout"])

The SDK drives the ``pyro`` binary (``$PYRO_BIN`` or ``pyro`` on ``PATH``)
through its ``--json`` command line, one subprocess per call; see
:mod:`pyro_mcp.client` for why. Results are plain dicts with the same field
names as the JSON; failures raise :class:`PyroError` subclasses.

To serve MCP over stdio (e.g. as an MCP client's server command)::

    python -c 'from pyro_mcp import create_server; create_server().run()'
"""

from .client import Command, Pyro, PyroPool, PyroServer, SecretEnv, Secrets, create_server
from .errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PyroError,
    UnavailableError,
)

__version__ = "2.0.0"

__all__ = [
    "Pyro",
    "PyroServer",
    "PyroPool",
    "create_server",
    "PyroError",
    "NotFoundError",
    "AlreadyExistsError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "UnavailableError",
    "Command",
    "SecretEnv",
    "Secrets",
    "__version__",
]
