"""Numerical parity: the exported SavedModel must reproduce the source model's outputs.

Every output is compared and every mismatch collected, then one error with a table is raised
(as optimum's exporters do), so a user sees the whole picture at once. Tolerances depend on the
precision the artefact was built for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.core.errors import InputError, ParityError
from builder.core.model import TensorInfo

# (atol, rtol, min_cosine) per precision. FP32 artefacts are expected to match bit-for-bit or
# nearly; reduced precisions are judged mostly by direction (cosine) with a looser atol.
DEFAULT_TOLERANCES: dict[str, tuple[float, float, float | None]] = {
    "fp32": (1e-5, 0.0, None),
    "bf16": (2e-2, 0.0, 0.999),
    "fp16": (1e-2, 0.0, 0.999),
    "int8": (5e-2, 0.0, 0.99),
}


@dataclass
class OutputParity:
    alias: str
    max_abs_diff: float
    max_rel_diff: float
    min_cosine: float
    passed: bool
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "max_rel_diff": self.max_rel_diff,
            "min_cosine": self.min_cosine,
            "passed": self.passed,
            **({"problem": self.problem} if self.problem else {}),
        }


@dataclass
class ParityReport:
    atol: float
    rtol: float
    min_cosine_required: float | None
    samples: int
    outputs: list[OutputParity] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def as_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": max((o.max_abs_diff for o in self.outputs), default=0.0),
            "max_rel_diff": max((o.max_rel_diff for o in self.outputs), default=0.0),
            "min_cosine": min((o.min_cosine for o in self.outputs), default=1.0),
            "samples": self.samples,
            "atol": self.atol,
            "rtol": self.rtol,
            "min_cosine_required": self.min_cosine_required,
            "passed": self.passed,
            "outputs": {o.alias: o.as_json() for o in self.outputs},
        }

    def table(self) -> str:
        rows = [("output", "max_abs_diff", "max_rel_diff", "min_cosine", "status")]
        for o in self.outputs:
            rows.append((o.alias, f"{o.max_abs_diff:.3g}", f"{o.max_rel_diff:.3g}",
                         f"{o.min_cosine:.6f}", "ok" if o.passed else f"FAIL {o.problem}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    def raise_if_failed(self, what: str) -> None:
        if self.passed:
            return
        failing = [o.alias for o in self.outputs if not o.passed]
        raise ParityError(
            f"parity failed for {what}: {len(failing)} of {len(self.outputs)} outputs differ from "
            f"the source model beyond atol={self.atol:g} rtol={self.rtol:g}"
            f"{'' if self.min_cosine_required is None else f' min_cosine={self.min_cosine_required}'}"
            f" (raise --atol/--rtol only if this is expected); nothing was promoted\n{self.table()}"
        )


def tolerances(precision: str, atol: float | None, rtol: float | None,
               table: dict[str, tuple[float, float, float | None]] | None = None
               ) -> tuple[float, float, float | None]:
    """(atol, rtol, min_cosine) for a precision; explicit --atol/--rtol win. ``table`` lets an
    optimiser supply its own defaults (TF-TRT FP32 runs TF32 on Ampere+, so 1e-5 is too tight)."""
    table = table or DEFAULT_TOLERANCES
    base = table.get(precision, table.get("fp32", DEFAULT_TOLERANCES["fp32"]))
    return (base[0] if atol is None else float(atol), base[1] if rtol is None else float(rtol),
            base[2])


def compare(
    expected: dict[str, np.ndarray],
    actual: dict[str, np.ndarray],
    *,
    atol: float,
    rtol: float,
    min_cosine: float | None = None,
    samples: int = 0,
) -> ParityReport:
    """Compare every output; never stops at the first mismatch."""
    report = ParityReport(atol, rtol, min_cosine, samples)
    for alias in sorted(expected):
        e = np.asarray(expected[alias])
        if alias not in actual:
            report.outputs.append(OutputParity(alias, float("inf"), float("inf"), -1.0, False,
                                               "missing in export"))
            continue
        a = np.asarray(actual[alias])
        if a.shape != e.shape:
            report.outputs.append(OutputParity(alias, float("inf"), float("inf"), -1.0, False,
                                               f"shape {a.shape} != {e.shape}"))
            continue
        if e.dtype.kind in "OSUb" or e.dtype.kind in "iu":
            same = bool(np.array_equal(a, e))
            report.outputs.append(OutputParity(alias, 0.0 if same else float("inf"),
                                               0.0 if same else float("inf"), 1.0 if same else -1.0,
                                               same, "" if same else "values differ"))
            continue
        e64, a64 = e.astype(np.float64), a.astype(np.float64)
        both_nan = np.isnan(e64) & np.isnan(a64)
        diff = np.where(both_nan, 0.0, np.abs(a64 - e64))
        diff = np.nan_to_num(diff, nan=np.inf)
        max_abs = float(diff.max()) if diff.size else 0.0
        rel = diff / np.maximum(np.abs(e64), 1e-12)
        max_rel = float(np.where(diff == 0, 0.0, rel).max()) if diff.size else 0.0
        cos = _min_cosine(e64, a64)
        ok = bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(e64))))
        problem = "" if ok else "abs/rel diff"
        if min_cosine is not None and cos < min_cosine:
            ok, problem = False, f"cosine {cos:.6f} < {min_cosine}"
        report.outputs.append(OutputParity(alias, max_abs, max_rel, cos, ok, problem))
    return report


def _min_cosine(e: np.ndarray, a: np.ndarray) -> float:
    if e.size == 0:
        return 1.0
    e2 = e.reshape(e.shape[0], -1) if e.ndim > 1 else e.reshape(1, -1)
    a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    e2, a2 = np.nan_to_num(e2), np.nan_to_num(a2)
    num = (e2 * a2).sum(axis=1)
    den = np.linalg.norm(e2, axis=1) * np.linalg.norm(a2, axis=1)
    cos = np.where(den == 0, np.where(np.all(e2 == a2, axis=1), 1.0, 0.0), num / np.where(den == 0, 1, den))
    return float(np.clip(cos.min(), -1.0, 1.0))


# --------------------------------------------------------------------------- sample inputs


def load_samples(path: str | os.PathLike, inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """Inputs from an .npz keyed by signature alias (or by tensor/node name)."""
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"--samples {p}: not a readable .npz file ({e})") from None
    out = {}
    for t in inputs:
        for key in (t.alias, f"in/{t.alias}", t.tensor, t.tensor.rsplit(":", 1)[0]):
            if key in data.files:
                out[t.alias] = _coerce(data[key], t, p)
                break
        else:
            raise InputError(
                f"--samples {p}: no array for input {t.alias!r} (has: {', '.join(data.files)}); "
                f"save it under the key {t.alias!r}"
            )
    batch = {v.shape[0] if v.ndim else None for v in out.values()}
    if len(batch) > 1:
        raise InputError(f"--samples {p}: inputs have different batch sizes {sorted(map(str, batch))}")
    return out


def _coerce(arr: np.ndarray, t: TensorInfo, p: Path) -> np.ndarray:
    if t.dtype == "string":
        return arr.astype(object) if arr.dtype.kind in "SU" else arr
    want = np.dtype(t.dtype)
    if arr.dtype != want:
        if np.can_cast(arr.dtype, want, casting="same_kind"):
            arr = arr.astype(want)
        else:
            raise InputError(f"--samples {p}: {t.alias!r} is {arr.dtype}, the model wants {want}")
    if t.shape and arr.ndim != len(t.shape):
        raise InputError(f"--samples {p}: {t.alias!r} has shape {arr.shape}, the model wants "
                         f"{['?' if d is None else d for d in t.shape]}")
    for got, need in zip(arr.shape[1:], t.shape[1:]):
        if need is not None and got != need:
            raise InputError(f"--samples {p}: {t.alias!r} has shape {arr.shape}, the model wants "
                             f"{['?' if d is None else d for d in t.shape]}")
    return arr


def generate_samples(inputs: list[TensorInfo], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs from the signature; unknown non-batch dims need ``--samples``."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in inputs:
        node = t.tensor.rsplit(":", 1)[0]
        if not t.shape:
            raise InputError(f"input {t.alias!r} ({t.tensor}) has unknown shape: pass e.g. --input_shapes "
                             f"{node}=?x160x160x3, or --samples FILE.npz")
        dims = t.shape[1:]
        if any(d is None for d in dims):
            raise InputError(
                f"input {t.alias!r} has unknown dimensions {['?' if d is None else d for d in t.shape]}:"
                f" pass --input_shapes {node}=?x... with every non-batch size, or --samples FILE.npz"
            )
        shape = (count, *dims)
        if t.dtype == "string":
            raise InputError(f"input {t.alias!r} is a string tensor: pass --samples FILE.npz")
        dt = np.dtype(t.dtype)
        if dt.kind == "f":
            out[t.alias] = rng.standard_normal(shape).astype(dt)
        elif dt.kind in "iu":
            out[t.alias] = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            out[t.alias] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise InputError(f"input {t.alias!r} has dtype {t.dtype}: pass --samples FILE.npz")
    return out


def run_saved_model(path: str | os.PathLike, inputs: dict[str, np.ndarray],
                    signature: str = "serving_default", tags: tuple[str, ...] = ("serve",),
                    batch: int = 0) -> dict[str, np.ndarray]:
    """Load with the loader TF Serving uses (TF1 ``loader.load``) in a fresh graph, and run."""
    import tensorflow as tf

    with tf.Graph().as_default() as g, tf.compat.v1.Session(graph=g) as sess:
        mg = tf.compat.v1.saved_model.loader.load(sess, list(tags), str(path))
        sig = mg.signature_def[signature]
        fetches = {k: g.get_tensor_by_name(v.name) for k, v in sig.outputs.items()}
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        step = batch or n or 1
        parts: list[dict[str, np.ndarray]] = []
        for s in range(0, max(n, 1), step):
            feed = {g.get_tensor_by_name(sig.inputs[k].name): v[s:s + step] for k, v in inputs.items()}
            parts.append(sess.run(fetches, feed_dict=feed))
        return {k: np.concatenate([p[k] for p in parts]) if parts[0][k].ndim else parts[0][k]
                for k in fetches}
