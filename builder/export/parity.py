"""Numerical parity: every kept signature of the export must reproduce the source's outputs.

Each signature runs on the source (as the user ran it) and on the export loaded the way TF
Serving loads it (``tf.compat.v1.saved_model.loader.load``), on the same inputs. Every output is
compared and every mismatch collected, then one error with a table is raised (as optimum's
exporters do), so a user sees the whole picture at once.

Tolerances: the FP32 default scales with each output (``atol = 1e-5 x max|reference|``) and adds
a cosine criterion, so outputs of magnitude 1e-11 (random-weight logits) or 1e-3 (a softmax
over 1,000 classes) are really checked; an explicit ``--atol`` is absolute. Reduced precisions
are judged mostly by direction (cosine) with a looser absolute tolerance.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from builder.core.errors import ParityError
from builder.core.model import Signature, TensorInfo

# (atol, rtol, min_cosine) per precision; fp32's atol is relative to the output's magnitude
DEFAULT_TOLERANCES: dict[str, tuple[float, float, float | None]] = {
    "fp32": (1e-5, 0.0, 0.99999),
    "bf16": (2e-2, 0.0, 0.999),
    "fp16": (1e-2, 0.0, 0.999),
    "int8": (5e-2, 0.0, 0.99),
}
_TINY = 1e-30  # the scale of an all-zero reference: its export must be ~0 too


@dataclass
class Tolerance:
    atol: float
    rtol: float
    min_cosine: float | None
    scaled: bool = False  # atol is relative to max|reference| of each output

    def atol_for(self, reference: np.ndarray) -> float:
        if not self.scaled:
            return self.atol
        finite = np.abs(reference[np.isfinite(reference)]) if reference.size else np.zeros(0)
        return self.atol * max(float(finite.max()) if finite.size else 0.0, _TINY)

    def as_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine,
                "atol_scaled_to_output": self.scaled}


def tolerances(precision: str, atol: float | None, rtol: float | None,
               table: dict[str, tuple[float, float, float | None]] | None = None) -> Tolerance:
    """Tolerance for a precision; explicit --atol/--rtol win (and are absolute). ``table`` lets
    an optimiser supply its own defaults (TF-TRT FP32 runs TF32 on Ampere+, so 1e-5 is too
    tight): those are absolute too."""
    base = (table or DEFAULT_TOLERANCES).get(precision, DEFAULT_TOLERANCES.get(precision, DEFAULT_TOLERANCES["fp32"]))
    scaled = table is None and precision == "fp32" and atol is None
    return Tolerance(base[0] if atol is None else float(atol), base[1] if rtol is None else float(rtol),
                     base[2], scaled)


@dataclass
class OutputParity:
    alias: str
    max_abs_diff: float
    max_rel_diff: float
    min_cosine: float
    passed: bool
    atol: float = 0.0  # the absolute tolerance applied (scaled to the output by default)
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "max_rel_diff": self.max_rel_diff,
                "min_cosine": self.min_cosine, "atol": self.atol, "passed": self.passed,
                **({"problem": self.problem} if self.problem else {})}


@dataclass
class ParityReport:
    tolerance: Tolerance
    samples: int
    outputs: list[OutputParity] = field(default_factory=list)
    second_size: str = ""  # what the second sample set did ("passed", "skipped: ...", "")

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def atol(self) -> float:
        return max((o.atol for o in self.outputs), default=self.tolerance.atol)

    def as_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": max((o.max_abs_diff for o in self.outputs), default=0.0),
            "max_rel_diff": max((o.max_rel_diff for o in self.outputs), default=0.0),
            "min_cosine": min((o.min_cosine for o in self.outputs), default=1.0),
            "samples": self.samples,
            "atol": self.atol,
            "rtol": self.tolerance.rtol,
            "min_cosine_required": self.tolerance.min_cosine,
            "tolerance": self.tolerance.as_json(),
            "passed": self.passed,
            **({"second_size": self.second_size} if self.second_size else {}),
            "outputs": {o.alias: o.as_json() for o in self.outputs},
        }

    def table(self, prefix: str = "") -> list[tuple[str, ...]]:
        return [(prefix + o.alias, f"{o.max_abs_diff:.3g}", f"{o.atol:.3g}", f"{o.max_rel_diff:.3g}",
                 f"{o.min_cosine:.6f}", "ok" if o.passed else f"FAIL {o.problem}") for o in self.outputs]

    def raise_if_failed(self, what: str) -> None:
        raise_if_failed({"": self}, what)


def raise_if_failed(reports: dict[str, ParityReport], what: str) -> None:
    """One ParityError with a table of every output of every signature, if any failed."""
    failing = [(k, o.alias) for k, r in reports.items() for o in r.outputs if not o.passed]
    if not failing:
        return
    total = sum(len(r.outputs) for r in reports.values())
    rows = [("output", "max_abs_diff", "atol", "max_rel_diff", "min_cosine", "status")]
    multi = len(reports) > 1
    for key, r in reports.items():
        rows += r.table(f"{key}/" if multi and key else "")
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    tol = next(iter(reports.values())).tolerance
    how = f"atol={tol.atol:g}{' x max|output|' if tol.scaled else ''} rtol={tol.rtol:g}" + (
        "" if tol.min_cosine is None else f" min_cosine={tol.min_cosine}")
    raise ParityError(f"parity failed for {what}: {len(failing)} of {total} outputs differ from the "
                      f"source model beyond {how} (raise --atol/--rtol only if this is expected); nothing "
                      f"was promoted\n{table}")


def compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray], tol: Tolerance | None = None,
            samples: int = 0, *, atol: float | None = None, rtol: float | None = None,
            min_cosine: float | None = None) -> ParityReport:
    """Compare every output; never stops at the first mismatch. ``atol``/``rtol``/``min_cosine``
    build an absolute Tolerance when ``tol`` is not given."""
    tol = tol or Tolerance(atol or 0.0, rtol or 0.0, min_cosine)
    report = ParityReport(tol, samples)
    for alias in sorted(expected):
        report.outputs.append(_compare_one(alias, np.asarray(expected[alias]), actual.get(alias), tol))
    return report


def merge(first: ParityReport, second: ParityReport) -> ParityReport:
    """One report from two runs (the second sample size): per output the worse of each figure."""
    out = ParityReport(first.tolerance, first.samples, second_size="passed" if second.passed else "failed")
    by_alias = {o.alias: o for o in second.outputs}
    for a in first.outputs:
        b = by_alias.get(a.alias, a)
        problem = a.problem or (f"{b.problem} (second sample size)" if b.problem else "")
        out.outputs.append(OutputParity(a.alias, max(a.max_abs_diff, b.max_abs_diff),
                                        max(a.max_rel_diff, b.max_rel_diff), min(a.min_cosine, b.min_cosine),
                                        a.passed and b.passed, a.atol, problem))
    return out


def _compare_one(alias: str, e: np.ndarray, a: Any, tol: Tolerance) -> OutputParity:
    if a is None:
        return OutputParity(alias, float("inf"), float("inf"), -1.0, False, 0.0, "missing in export")
    a = np.asarray(a)
    if a.shape != e.shape:
        return OutputParity(alias, float("inf"), float("inf"), -1.0, False, 0.0, f"shape {a.shape} != {e.shape}")
    if e.dtype.kind in "OSUbiu":
        same = bool(np.array_equal(a, e))
        inf = 0.0 if same else float("inf")
        return OutputParity(alias, inf, inf, 1.0 if same else -1.0, same, 0.0, "" if same else "values differ")
    e64, a64 = e.astype(np.float64), a.astype(np.float64)
    both_nan = np.isnan(e64) & np.isnan(a64)
    diff = np.nan_to_num(np.where(both_nan, 0.0, np.abs(a64 - e64)), nan=np.inf)
    max_abs = float(diff.max()) if diff.size else 0.0
    rel = diff / np.maximum(np.abs(e64), 1e-30)
    max_rel = float(np.where(diff == 0, 0.0, rel).max()) if diff.size else 0.0
    cos = row_min_cosine(e64, a64)
    atol = tol.atol_for(e64)
    ok = bool(np.all(diff <= atol + tol.rtol * np.abs(np.nan_to_num(e64))))
    problem = "" if ok else "abs/rel diff"
    if tol.min_cosine is not None and cos < tol.min_cosine:
        ok, problem = False, f"cosine {cos:.6f} < {tol.min_cosine}"
    return OutputParity(alias, max_abs, max_rel, cos, ok, atol, problem)


def row_min_cosine(e: np.ndarray, a: np.ndarray) -> float:
    """The smallest cosine similarity between matching rows (1 for two all-zero rows)."""
    if e.size == 0:
        return 1.0
    e2 = e.reshape(e.shape[0], -1) if e.ndim > 1 else e.reshape(1, -1)
    a2 = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)
    e2, a2 = np.nan_to_num(e2), np.nan_to_num(a2)
    num = (e2 * a2).sum(axis=1)
    den = np.linalg.norm(e2, axis=1) * np.linalg.norm(a2, axis=1)
    cos = np.where(den == 0, np.where(np.all(e2 == a2, axis=1), 1.0, 0.0), num / np.where(den == 0, 1, den))
    return float(np.clip(cos.min(), -1.0, 1.0))


# --------------------------------------------------------------------------- running the export


def run_export(path: str | os.PathLike, tags: list[str], signatures: dict[str, Signature],
               sample_sets: list[dict[str, dict[str, np.ndarray]]]) -> list[dict[str, dict[str, np.ndarray]]]:
    """Load the export once, the way TF Serving does, and run every signature on every sample
    set; returns outputs in the same structure. TF errors propagate (the caller words them)."""
    from builder.load.signatures import ServingSession

    session = ServingSession(path, tags, f"the exported SavedModel {path}")
    try:
        return [{key: session.run(signatures[key], inputs) for key, inputs in s.items()} for s in sample_sets]
    finally:
        session.close()


def run_saved_model(path: str | os.PathLike, inputs: dict[str, np.ndarray],
                    signature: str = "serving_default", tags: tuple[str, ...] = ("serve",)) -> dict[str, np.ndarray]:
    """One signature of a SavedModel, loaded with the loader TF Serving uses, in a fresh graph."""
    from builder.load.signatures import ServingSession, signatures_of

    session = ServingSession(path, tags, str(path))
    try:
        return session.run(signatures_of(session.meta_graph)[signature], inputs)
    finally:
        session.close()


# --------------------------------------------------------------------------- one-signature helpers


def generate_samples(inputs: list[TensorInfo], count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Synthesised inputs for a bare list of inputs (no graph hints), for callers outside the
    export (benchmark). Unknown dimensions get ``samples.DEFAULT_DIM``."""
    from builder.core.errors import InputError
    from builder.export import samples

    sig = Signature("serving_default", "tensorflow/serving/predict", list(inputs), [])
    try:
        return samples.synthesise(sig, samples.GraphHints(), count, samples.DEFAULT_DIM, seed)
    except samples.Unsynthesisable as e:
        bad = next(t for t in inputs if samples.fails(t, samples.GraphHints()))
        hint = f"--input_shapes {bad.tensor.split(':')[0]}=?x... or " if bad.shape is None else ""
        raise InputError(f"input {bad.alias!r} ({bad.tensor}) cannot be synthesised ({e}): pass "
                         f"{hint}--samples FILE") from None


def load_samples(path: str | os.PathLike, inputs: list[TensorInfo]) -> dict[str, np.ndarray]:
    """``--samples`` for a bare list of inputs (one serving_default signature)."""
    from builder.export import samples

    sig = Signature("serving_default", "tensorflow/serving/predict", list(inputs), [])
    return samples.read_samples(path, {"serving_default": sig})["serving_default"]
