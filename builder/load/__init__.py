"""Every input flow ends in a staged, servable SavedModel (``StagedModel``).

``load(request, out)`` detects nothing itself: ``detect.detect_flow`` chose the flow, and the
flow module (checkpoint, frozen, savedmodel, keras) writes the SavedModel into ``out`` and
keeps the source open for the parity check. ``surgery`` is the graph editing the flows share;
``freeze`` turns a staged model into constants when that is wanted.
"""

from __future__ import annotations

from pathlib import Path

from builder.core.model import StagedModel
from builder.load.request import LoadRequest


def load(req: LoadRequest, out: Path) -> StagedModel:
    """Stage ``req``'s model as a SavedModel in ``out`` (which must not exist yet)."""
    from builder.load import checkpoint, frozen, keras, savedmodel
    from builder.load.detect import check_flow_matches, resolve_model_path

    check_flow_matches(resolve_model_path(req.path), req.flow)
    flows = {"checkpoint": checkpoint.load, "frozen": frozen.load, "savedmodel": savedmodel.load,
             "keras": keras.load}
    return flows[req.flow](req, out)
