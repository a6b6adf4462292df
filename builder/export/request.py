"""What ``export`` is asked to do: ``ExportOptions``, its cheap validation, and the command line
that rebuilds a version (``reproduce``)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.core import layout
from builder.core.errors import InputError, VersionError
from builder.load.detect import FLOWS, detect_flow
from builder.load.request import LoadRequest
from builder.options import LoaderFlags, as_list

DEFAULT_BATCH_SIZES = (1, 8, 100)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass
class ExportOptions:
    """Everything ``export`` takes; also what ``reproduce`` is rebuilt from."""

    model: str
    name: str
    repo: str
    flow: str | None = None
    version: int | None = None  # None = auto (highest + 1)
    overwrite: bool = False
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    feed: dict[str, str] = field(default_factory=dict)
    input_alias: dict[str, str] = field(default_factory=dict)
    output_alias: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, str] = field(default_factory=dict)
    checkpoint: str | None = None
    tags: list[str] = field(default_factory=lambda: ["serve"])
    signature: str | list[str] | None = None  # None/"" = every signature; "a,b" or a list = a subset
    clear_devices: bool = True
    batch_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_BATCH_SIZES))
    warmup_records: int = 2  # per batch size and signature
    samples: str | None = None
    num_samples: int = 8
    seed: int = 0
    atol: float | None = None
    rtol: float | None = None
    optimize: str = "none"
    precision: str = "fp32"
    freeze: bool | None = None  # None = decided by what the graph holds
    allow_unsafe_ops: bool = False
    trt: dict[str, Any] = field(default_factory=dict)  # TF-TRT options (see builder.optimize.tftrt)
    bake: bool = False  # bf16 hook (issue 12): bake the bf16 rewrite instead of a serving profile
    min_cosine: float | None = None  # bf16 hook (issue 12): overrides the precision's default

    @property
    def signatures(self) -> list[str]:
        return as_list(self.signature, "--signature")

    def loader_flags(self) -> LoaderFlags:
        return LoaderFlags(inputs=list(self.inputs), outputs=list(self.outputs), feed=dict(self.feed),
                           input_alias=dict(self.input_alias), output_alias=dict(self.output_alias),
                           input_shapes=dict(self.input_shapes), tags=list(self.tags or ["serve"]),
                           signatures=self.signatures)

    def load_request(self, flow: str) -> LoadRequest:
        return LoadRequest.from_flags(self.model, flow, self.loader_flags(), checkpoint=self.checkpoint,
                                      clear_devices=self.clear_devices)


def validate_options(o: ExportOptions) -> None:
    """All cheap checks, before any work, so bad flags never cost a model load."""
    if not o.name or not _NAME_RE.match(o.name):
        raise InputError(f"--name {o.name!r}: use letters, digits, '_', '-', '.' (not starting "
                         "with '.'), e.g. --name facenet")
    if not o.repo:
        raise InputError("--repo is required: the model repository directory, e.g. --repo models")
    if Path(o.repo).exists() and not Path(o.repo).is_dir():
        raise InputError(f"--repo {o.repo}: exists and is not a directory")
    if not Path(o.model).exists():
        raise InputError(f"--model {o.model}: no such file or directory")
    if o.flow is not None and o.flow not in FLOWS:
        raise InputError(f"--flow {o.flow}: unknown flow; use one of {', '.join(FLOWS)}")
    _check_numbers(o)
    if o.samples and not Path(o.samples).is_file():
        raise InputError(f"--samples {o.samples}: no such file")
    if o.freeze not in (None, True, False):
        raise InputError(f"--freeze {o.freeze!r}: it is a switch: --freeze, --nofreeze, or leave it out "
                         "(decided by what the graph holds)")
    from builder.optimize import cpu as _opt

    _opt.check_request(o.optimize, o.precision, trt=o.trt or None, bake=o.bake)  # bf16 hook: bake
    if o.bake and o.freeze is False:  # bf16 hook (issue 12)
        raise InputError("--bake rewrites a frozen graph: drop --nofreeze, or drop --bake (the "
                         "serving profile keeps the graph as it is)")
    if o.version is not None and not o.overwrite:
        existing = layout.version_dir(o.repo, o.name, o.version)
        if existing.exists():
            raise VersionError(f"version {o.version} of {o.name} exists ({existing}): pass --overwrite to "
                               "replace it, or --version auto for the next free version")


def _check_numbers(o: ExportOptions) -> None:
    if not o.batch_sizes:
        raise InputError("--batch_sizes is empty: use e.g. --batch_sizes 1,8,100")
    if o.num_samples <= 0:
        raise InputError(f"--num_samples {o.num_samples}: must be positive")
    if o.warmup_records <= 0:
        raise InputError(f"--warmup_records {o.warmup_records}: must be positive")
    for v, flag in ((o.atol, "--atol"), (o.rtol, "--rtol")):
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise InputError(f"{flag} {v!r}: must be a non-negative number")
    if o.min_cosine is not None and not -1 <= o.min_cosine <= 1:  # bf16 hook (issue 12)
        raise InputError(f"--min_cosine {o.min_cosine}: must be between -1 and 1, e.g. 0.999")


def reproduce_command(o: ExportOptions, version: int) -> str:
    """The command line that rebuilds this version (defaults left out)."""
    d = ExportOptions(model="", name="", repo="")
    parts = ["python", "-m", "builder", "export", "--flow", o.flow or detect_flow(o.model),
             "--model", str(Path(o.model).resolve()), "--name", o.name,
             "--repo", str(Path(o.repo).resolve()), "--version", str(version)]
    for key in ("inputs", "outputs", "tags", "batch_sizes"):
        v = getattr(o, key)
        if v != getattr(d, key):
            parts += [f"--{key}", ",".join(map(str, v))]
    if o.signatures:
        parts += ["--signature", ",".join(o.signatures)]
    for key in ("feed", "input_alias", "output_alias", "input_shapes"):
        v = getattr(o, key)
        if v:
            parts += [f"--{key}", ",".join(f"{k}={x}" for k, x in v.items())]
    for key in ("checkpoint", "samples", "num_samples", "seed", "atol", "rtol", "optimize", "precision",
                "warmup_records", "min_cosine"):  # bf16 hook: min_cosine
        v = getattr(o, key)
        if v != getattr(d, key):
            parts += [f"--{key}", str(Path(v).resolve()) if key in ("checkpoint", "samples") else str(v)]
    for key in ("overwrite", "allow_unsafe_ops", "bake"):  # bf16 hook: bake
        if getattr(o, key):
            parts.append(f"--{key}")
    if o.freeze is not None:
        parts.append("--freeze" if o.freeze else "--nofreeze")
    if not o.clear_devices:
        parts.append("--noclear_devices")
    for k, v in sorted(o.trt.items()):
        parts += [f"--{k}", ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)]
    return shlex.join(parts)
