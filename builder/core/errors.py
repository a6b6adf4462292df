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


class OutputError(BuilderError):
    """The model repository cannot be written (a path under a file, read-only, disk full)."""
