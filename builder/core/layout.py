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

# strings::safe_strto64 (TF Serving 2.11-2.17's ParseVersionNumber): C-locale isspace around an
# optional '-' and ASCII digits. No '+': that arrived with absl::SimpleAtoi in 2.19.
_STRTO64_RE = re.compile(r"^[ \t\n\v\f\r]*(-?[0-9]+)[ \t\n\v\f\r]*\Z")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def tf_serving_version_number(name: str) -> int | None:
    """The int64 TF Serving 2.17 reads from a base-path child, negative numbers included.

    ``file_system_storage_path_source.cc`` ``ParseVersionNumber`` at tag 2.17.0 is
    ``strings::safe_strto64``: surrounding whitespace is skipped (`` 1`` is 1), one leading ``-``
    is allowed (``-1`` is version -1, which the server loads like any other), ``+`` is not, and
    the value must fit an int64. Only ``parse_version_name`` decides what is a version here; this
    is the raw reading, so callers can warn about names the two rules treat differently.
    """
    m = _STRTO64_RE.match(name)
    if m is None:
        return None
    value = int(m.group(1))
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def parse_version_name(name: str) -> int | None:
    """The version a base-path child stands for, or None when it is not a version: THE rule for
    every command, the local server and preflight (one definition, no second parser).

    A non-negative int64 as TF Serving 2.17 parses it (``tf_serving_version_number``):
    ``00000123`` is version 123 (TF Serving's own testdata uses that name), `` 5 `` is 5, ``+7``
    is not a version. Negative names (``-1``) are the one deliberate difference: TF Serving
    loads them as negative versions, but REST cannot address them (``/versions/(\\d+)`` in
    http_rest_api_util.cc), they never win ``latest`` over a non-negative version, and no
    builder command writes one; readers ignore them and the local server warns (see
    ``negative_version_warning``).
    """
    value = tf_serving_version_number(name)
    return value if value is not None and value >= 0 else None


def negative_version_warning(base_path: str | os.PathLike, name: str) -> str | None:
    """The warning for a child TF Serving would load as a negative version (None otherwise)."""
    value = tf_serving_version_number(name)
    if value is None or value >= 0:
        return None
    return (f"{Path(base_path) / name}: TF Serving 2.17 loads this directory as version {value}; "
            "the builder ignores negative versions (REST cannot address them): rename it to a "
            "non-negative number or remove it")


def index_by_version(names: list[str]) -> tuple[dict[int, str], list[tuple[int, str, str]]]:
    """Children names -> {version: the name it is loaded from}, plus (version, kept, ignored) for
    each duplicate. TF Serving's ``IndexChildrenByVersion``: children are visited in byte order
    (a ``std::set``) and a later name for the same version replaces the earlier one, so for
    ``01`` and ``1`` the name ``1`` wins."""
    by_version: dict[int, str] = {}
    duplicates: list[tuple[int, str, str]] = []
    for name in sorted(names, key=lambda n: n.encode()):
        v = parse_version_name(name)
        if v is None:
            continue
        if v in by_version:
            duplicates.append((v, name, by_version[v]))
        by_version[v] = name
    return by_version, duplicates


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
    TF Serving resolves with a warning, the later child in byte order winning
    (``index_by_version``), so every command picks the same one. Only directories count here
    (the builder's own readers); the local server lists files too, as TF Serving does
    (``config/lifecycle.discover_versions``). Entries that vanish while listed (a version being
    deleted) are skipped.
    """
    p = Path(model_dir)
    try:
        children = list(p.iterdir())
    except OSError:
        return {}
    dirs = []
    for c in children:
        try:
            if parse_version_name(c.name) is not None and c.is_dir():
                dirs.append(c.name)
        except OSError:
            continue
    by_version, duplicates = index_by_version(dirs)
    if warn is not None:
        for v, kept, ignored in duplicates:
            warn(f"Duplicate version directories detected. Version {v} will be loaded from "
                 f"{p / kept}, {ignored} will be ignored.")
    return {v: p / name for v, name in sorted(by_version.items())}


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
