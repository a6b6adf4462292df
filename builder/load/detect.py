"""Which flow a ``--model`` path is, detected the way FaceNet's ``load_model`` does (or forced
with ``--flow``); a TF Serving model directory (``NAME/00000123/saved_model.pb``) counts as its
newest version, as TF Serving itself picks it."""

from __future__ import annotations

import os
from pathlib import Path

from builder.core.errors import InputError

FLOWS = ("checkpoint", "frozen", "savedmodel", "keras")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def serving_versions(path: Path) -> list[Path]:
    """Child directories TF Serving would load as versions (all digits, int64), that hold a
    SavedModel, oldest first by number (``00000123`` is version 123)."""
    if not path.is_dir():
        return []
    found = []
    for c in path.iterdir():
        if c.is_dir() and c.name.isdigit() and int(c.name) < 2**63 and is_saved_model_dir(c):
            found.append(c)
    return sorted(found, key=lambda c: int(c.name))


def is_saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``--model`` as given, or the newest version directory when it is a TF Serving model dir."""
    p = Path(path)
    if p.is_dir() and not is_saved_model_dir(p) and not list(p.glob("*.meta")):
        versions = serving_versions(p)
        if versions:
            return versions[-1]
    return p


def detect_flow(path: str | os.PathLike) -> str:
    """Guess the flow from what is at ``path``; the error says which ``--flow`` to pass."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--model {p}: no such file or directory")
    if p.is_file():
        if p.suffix in KERAS_SUFFIXES:
            return "keras"
        if p.suffix == ".meta":
            return "checkpoint"
        return "frozen"
    if is_saved_model_dir(p) or serving_versions(p):
        return "savedmodel"
    if list(p.glob("*.meta")):
        return "checkpoint"
    raise InputError(
        f"--model {p}: cannot tell the flow (no saved_model.pb, no numeric version directory, no "
        f"*.meta file): pass --flow {'|'.join(FLOWS)} or point --model at the model file"
    )


def check_flow_matches(path: Path, flow: str) -> None:
    """A forced ``--flow`` that cannot read ``path`` is the user's mistake: say which flow can."""
    want = {
        "checkpoint": path.suffix == ".meta" or (path.is_dir() and bool(list(path.glob("*.meta")))),
        "frozen": path.is_file() and path.suffix not in (*KERAS_SUFFIXES, ".meta"),
        "savedmodel": path.is_dir() and is_saved_model_dir(path),
        "keras": path.is_file() and path.suffix in KERAS_SUFFIXES,
    }
    if flow not in FLOWS:
        raise InputError(f"--flow {flow}: unknown flow; use one of {', '.join(FLOWS)}")
    if want[flow]:
        return
    try:
        guess = detect_flow(path)
    except InputError:
        guess = None
    what = {"checkpoint": "a *.meta file or a directory holding one", "frozen": "a .pb/.pbtxt file",
            "savedmodel": "a SavedModel directory (saved_model.pb)", "keras": "a .keras/.h5 file"}[flow]
    hint = f"; it looks like --flow {guess}" if guess and guess != flow else ""
    raise InputError(f"--flow {flow} needs {what}, but --model {path} is not{hint}")
