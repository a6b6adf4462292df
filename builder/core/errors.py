"""One exception tree, so the CLI can tell a user's mistake from a bug in the builder.

Every ``BuilderError`` is something the user can fix: the CLI prints its one-line message and
exits 2 without a traceback. Anything else that escapes is an internal bug: exit 1 with the
traceback, because only a developer can act on it.
"""

from __future__ import annotations


class BuilderError(Exception):
    """A user-fixable problem. The message must name the file/node/flag and how to fix it."""

    exit_code = 2


class InputError(BuilderError):
    """A missing, unreadable or corrupt input file, or a flag with a bad value."""


class GraphError(BuilderError):
    """The graph does not fit the request: unknown node, unfed placeholder, unsafe op, ..."""


class VersionError(BuilderError):
    """A version that exists already, or is not a positive integer."""


class ParityError(BuilderError):
    """The exported model does not reproduce the source model's outputs within tolerance."""


class ConfigError(BuilderError):
    """A models.config / serving config that cannot be written as asked (bad label, policy...)."""


class CompatibilityError(BuilderError):
    """An artefact paired with a serving image or runtime that cannot load it."""


class UnavailableError(BuilderError):
    """A step that needs hardware or software this machine lacks (GPU, TensorRT, Docker)."""


class PublishError(BuilderError):
    """Publishing, pulling or verifying a version failed; the target keeps its previous state."""


class ServingError(BuilderError):
    """A serving check failed: the server did not come up, or answered wrongly."""


class ServerStartError(ServingError):
    """``python -m builder serve`` could not start, for a reason ``tensorflow_model_server`` would
    not start either (a label refused before any model loads, the latest version of a model
    failing every load attempt). The message is TF Serving's ("Failed to start server. Error:
    ..."). Exit 1 like a server process that dies at start-up (TF Serving exits non-zero too):
    supervisors and CI steps key on the process failing, and the fix is in the model or config
    the message names, not in the command line."""

    exit_code = 1


class OutputError(BuilderError):
    """The model repository cannot be written (a path under a file, read-only, disk full)."""


def first_line(e: BaseException) -> str:
    """The informative line of a (often many-line) TensorFlow or library error.

    User-facing errors are one line; TensorFlow's messages are dozens (graph-execution banners,
    "Detected at node", stack frames). This keeps the first line that says what went wrong, so
    every module that wraps a TensorFlow error into a ``BuilderError`` words it the same way.
    """
    text = getattr(e, "message", None) or str(e)
    noise = ("Graph execution error", "Detected at node", "Traceback", "File ", "[[", "Original stack",
             "Node:", "Op:")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(noise)]
    line = (useful or lines or [type(e).__name__])[0]
    return line if len(line) <= 240 else line[:237] + "..."
