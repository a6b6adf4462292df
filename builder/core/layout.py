"""The ``<repo>/<name>/<version>`` layout TF Serving polls, owned in one place.

TF Serving loads any child of a model's base path whose name parses as an integer (``00000123``
is version 123, loaded from that directory), the moment it appears, with no completeness check.
So versions are always staged under a non-numeric name and renamed into place; every reader here
applies the server's naming rule (``parse_version_name``) and ignores other names as it does.
"""

from __future__ import annotations

import ctypes
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path

from builder.core.errors import InputError, VersionError

STAGING_PREFIX = ".staging-"

_VERSION_RE = re.compile(r"^[ \t\n\v\f\r]*\+?([0-9]+)[ \t\n\v\f\r]*\Z")
_INT64_MAX = 2**63 - 1


def parse_version_name(name: str) -> int | None:
    """The version a directory name stands for, or None when TF Serving would ignore it.

    TF Serving (``file_system_storage_path_source.cc``) parses each child of a base path with
    ``absl::SimpleAtoi`` into an int64: ``00000123`` is version 123 (its own testdata uses that
    name), ``+7`` is 7, surrounding ASCII whitespace is allowed, anything else is not a version.
    Negative numbers also parse there but name no exportable version, so they are ignored here.
    """
    m = _VERSION_RE.match(name)
    if m is None:
        return None
    value = int(m.group(1))
    return value if value <= _INT64_MAX else None


# A model name is a directory under the repository, the TF Serving model name (REST path
# /v1/models/NAME) and part of OCI tags: letters, digits, '_', '-', '.', not starting with '.'
# (hidden and staging directories start with '.') or '-'/'_' (read as flags / OCI-invalid).
_MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


def validate_model_name(name: str, flag: str = "--name") -> str:
    """The one model-name rule (export, deploy, publish, pull): returns ``name`` or raises an
    InputError naming the flag."""
    if not name or not _MODEL_NAME_RE.match(name):
        raise InputError(f"{flag} {name!r}: use letters, digits, '_', '-', '.' (not starting "
                         f"with '.'), e.g. {flag} facenet")
    return name


def is_version_name(name: str) -> bool:
    """True for names TF Serving treats as versions (see ``parse_version_name``)."""
    return parse_version_name(name) is not None


def version_paths(model_dir: str | os.PathLike, warn: Callable[[str], None] | None = None) -> dict[int, Path]:
    """Version -> the directory it is loaded from, for every version directory under a base path.

    Why a mapping and not ``base/str(v)``: the directory keeps its own name (``00000123`` is
    loaded from ``00000123``). Two names for one version (``1`` and ``01``) are a user mistake
    TF Serving resolves with a warning, the later child winning; children are taken in byte
    order (as ``config/lifecycle.discover_versions`` models it), so ``1`` wins over ``01`` and
    every command picks the same one. Entries that vanish while listed (a version being
    deleted) are skipped.
    """
    p = Path(model_dir)
    try:
        children = sorted(p.iterdir())
    except OSError:
        return {}
    found: dict[int, list[Path]] = {}
    for c in children:
        v = parse_version_name(c.name)
        if v is None:
            continue
        try:
            if c.is_dir():
                found.setdefault(v, []).append(c)
        except OSError:
            continue
    out = {}
    for v, paths in sorted(found.items()):
        chosen = max(paths, key=lambda c: c.name.encode())
        if len(paths) > 1 and warn is not None:
            ignored = ", ".join(c.name for c in paths if c is not chosen)
            warn(f"Duplicate version directories detected. Version {v} will be loaded from "
                 f"{chosen}, {ignored} will be ignored.")
        out[v] = chosen
    return out


def list_versions(model_dir: str | os.PathLike) -> list[int]:
    """Version numbers under a model base path, ascending (TF Serving's naming rule)."""
    return sorted(version_paths(model_dir))


def list_models(repo: str | os.PathLike) -> list[str]:
    """Model names in a repository: directories that are not hidden/staging entries."""
    p = Path(repo)
    if not p.is_dir():
        return []
    return sorted(c.name for c in p.iterdir() if c.is_dir() and not c.name.startswith("."))


def version_dir(repo: str | os.PathLike, name: str, version: int) -> Path:
    """Where version ``version`` of ``name`` lives: the existing directory that names it (which
    may be ``00000123``), else the canonical ``str(version)`` path for a new one."""
    model_dir = Path(repo) / name
    return version_paths(model_dir).get(int(version), model_dir / str(int(version)))


def parse_version(value: object) -> int | None:
    """``auto``/None -> None; otherwise a positive integer, or a VersionError naming the flag."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    try:
        v = int(str(value).strip())
    except ValueError:
        raise VersionError(
            f"--version {value!r} is not a version: use a positive integer or 'auto'"
        ) from None
    if v <= 0 or v >= 2**63:
        raise VersionError(f"--version {v} is out of range: use an integer in 1..2^63-1 or 'auto'")
    return v


def next_version(model_dir: str | os.PathLike) -> int:
    versions = list_versions(model_dir)
    return (versions[-1] + 1) if versions else 1


def new_staging_dir(model_dir: str | os.PathLike, tag: str = "") -> Path:
    """A fresh non-numeric directory beside the versions; the server ignores it."""
    p = Path(model_dir)
    p.mkdir(parents=True, exist_ok=True)
    d = p / f"{STAGING_PREFIX}{tag}{'-' if tag else ''}{os.getpid()}-{secrets.token_hex(4)}"
    d.mkdir()
    return d


def clean_stale_staging(model_dir: str | os.PathLike) -> list[Path]:
    """Remove staging dirs left by processes that died (SIGKILL cannot run cleanup)."""
    removed = []
    p = Path(model_dir)
    if not p.is_dir():
        return removed
    for c in p.iterdir():
        if not c.name.startswith(STAGING_PREFIX):
            continue
        m = re.search(r"(\d+)-[0-9a-f]{8}$", c.name)
        pid = int(m.group(1)) if m else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        shutil.rmtree(c, ignore_errors=True)
        removed.append(c)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write via a temp file in the same directory and rename: readers see old or new, never half."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()


def exchange_dirs(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``, so replacing a
    version (``--overwrite``) never leaves a moment where a polling server sees it missing.
    Returns False where the call is unavailable (other OS, old libc, filesystem without it);
    callers then fall back to two renames."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn(at_fdcwd, os.fsencode(os.fspath(a)), at_fdcwd, os.fsencode(os.fspath(b)), rename_exchange) == 0
