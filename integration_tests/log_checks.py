"""Checks the tests make on a server's log (test-only; kept out of the product)."""

from __future__ import annotations

TRT_ENGINE_BUILD = "Building a new TensorRT engine"


def trt_engine_builds(log_text: str) -> list[str]:
    """Log lines where TF-TRT built an engine (TRTEngineOp at request time: the artefact was not
    pre-built for that shape, so the request paid seconds to minutes of build time)."""
    return [line for line in log_text.splitlines() if TRT_ENGINE_BUILD in line]
