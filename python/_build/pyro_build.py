"""A tiny, standard-library-only PEP 517 build backend for pyro-mcp.

Why not setuptools: ``pip install ./python`` must work with no network. With
setuptools as the backend, pip first downloads setuptools (and, for older
setuptools, ``wheel``) into an isolated build environment, which fails offline.
This backend needs nothing but Python itself: it zips ``pyro_mcp/`` into a
pure-Python wheel. Project metadata comes from ``pyproject.toml``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tarfile
import time
import zipfile
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "pyro_mcp"


def _project() -> dict[str, Any]:
    try:
        import tomllib  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        return _project_fallback()
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _project_fallback() -> dict[str, Any]:
    """Enough of pyproject.toml's flat [project] string keys for Python 3.10."""
    out: dict[str, Any] = {}
    section = ""
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        for line in f:
            line = line.strip()
            if line.startswith("["):
                section = line
            elif section == "[project]":
                m = re.match(r'^([\w-]+)\s*=\s*"(.*)"$', line)
                if m:
                    out[m.group(1)] = m.group(2)
    return out


def _names() -> tuple[str, str, str]:
    p = _project()
    name = p["name"]
    return name, re.sub(r"[-_.]+", "_", name).lower(), p["version"]


def _metadata() -> str:
    p = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {p['name']}",
        f"Version: {p['version']}",
        f"Summary: {p.get('description', '')}",
        f"Requires-Python: {p.get('requires-python', '>=3.10')}",
    ]
    for c in p.get("classifiers", []) if isinstance(p.get("classifiers"), list) else []:
        lines.append(f"Classifier: {c}")
    readme = os.path.join(ROOT, "README.md")
    body = ""
    if os.path.exists(readme):
        lines.append("Description-Content-Type: text/markdown")
        with open(readme, encoding="utf-8") as f:
            body = f.read()
    return "\n".join(lines) + "\n\n" + body


def _package_files() -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, PACKAGE)):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for fn in filenames:
            if fn.endswith((".py", ".typed")):
                out.append(os.path.relpath(os.path.join(dirpath, fn), ROOT))
    return sorted(out)


def _write_wheel(wheel_directory: str, files: dict[str, bytes]) -> str:
    _, dist, version = _names()
    info = f"{dist}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = _metadata().encode("utf-8")
    files[f"{info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: pyro_build\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    ).encode()
    record = io.StringIO()
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.write(f"{path},sha256={digest},{len(data)}\n")
    record.write(f"{info}/RECORD,,\n")
    files[f"{info}/RECORD"] = record.getvalue().encode()
    name = f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            zi = zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = 0o644 << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(zi, data)
    return name


def get_requires_for_build_wheel(config_settings: Optional[dict] = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: Optional[dict] = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: Optional[dict] = None) -> list[str]:
    return []


def build_wheel(wheel_directory: str, config_settings: Optional[dict] = None,
                metadata_directory: Optional[str] = None) -> str:
    files = {}
    for rel in _package_files():
        with open(os.path.join(ROOT, rel), "rb") as f:
            files[rel.replace(os.sep, "/")] = f.read()
    return _write_wheel(wheel_directory, files)


def build_editable(wheel_directory: str, config_settings: Optional[dict] = None,
                   metadata_directory: Optional[str] = None) -> str:
    _, dist, _ = _names()
    return _write_wheel(wheel_directory, {f"__editable__.{dist}.pth": (ROOT + "\n").encode()})


def build_sdist(sdist_directory: str, config_settings: Optional[dict] = None) -> str:
    _, dist, version = _names()
    base = f"{dist}-{version}"
    name = base + ".tar.gz"
    rels = ["pyproject.toml", "README.md", "_build/pyro_build.py"] + _package_files()
    for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, "tests")):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rels += [os.path.relpath(os.path.join(dirpath, fn), ROOT) for fn in filenames if fn.endswith(".py")]
    with tarfile.open(os.path.join(sdist_directory, name), "w:gz", format=tarfile.PAX_FORMAT) as tar:
        pkg_info = _metadata().encode("utf-8")
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size, ti.mtime, ti.mode = len(pkg_info), int(time.time()), 0o644
        tar.addfile(ti, io.BytesIO(pkg_info))
        for rel in sorted(set(rels)):
            if os.path.exists(os.path.join(ROOT, rel)):
                tar.add(os.path.join(ROOT, rel), arcname=f"{base}/{rel}", recursive=False)
    return name
