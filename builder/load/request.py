"""What a flow is asked to load: one typed request instead of a mutable dict of flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from builder.load.graphs import parse_shape
from builder.options import LoaderFlags


@dataclass(frozen=True)
class LoadRequest:
    """A source model and what to make of it. ``signatures`` empty = keep every signature."""

    path: Path
    flow: str
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    feeds: dict[str, str] = field(default_factory=dict)
    input_alias: dict[str, str] = field(default_factory=dict)
    output_alias: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, list[int | None]] = field(default_factory=dict)
    tags: tuple[str, ...] = ("serve",)
    signatures: tuple[str, ...] = ()
    checkpoint: str | None = None
    clear_devices: bool = True

    @classmethod
    def from_flags(cls, path: str | Path, flow: str, flags: LoaderFlags, *,
                   checkpoint: str | None = None, clear_devices: bool = True) -> LoadRequest:
        return cls(
            path=Path(path), flow=flow, inputs=tuple(flags.inputs), outputs=tuple(flags.outputs),
            feeds=dict(flags.feed), input_alias=dict(flags.input_alias),
            output_alias=dict(flags.output_alias),
            input_shapes={k: parse_shape(v, f"--input_shapes {k}") for k, v in flags.input_shapes.items()},
            tags=tuple(flags.tags or ["serve"]), signatures=tuple(flags.signatures),
            checkpoint=checkpoint, clear_devices=clear_devices,
        )

    @property
    def surgery(self) -> bool:
        """True when the graph itself must change (feeds folded, cut, pruned, reshaped); aliases
        and a signature subset are SignatureDef edits, not surgery."""
        return bool(self.inputs or self.outputs or self.feeds or self.input_shapes)

    @property
    def label(self) -> str:
        return self.path.name
