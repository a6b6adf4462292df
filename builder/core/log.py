"""The one progress/log channel: ``logging`` under the ``builder`` logger, one stderr handler.

WHY one channel: a command's *result* (the table, "published: ...", "wrote ...") goes to stdout
so scripts can read it; everything that says what is happening meanwhile (step lines, docker
build output, retention decisions, benchmark progress) goes here, to stderr, in the same plain
one-line format (the message only, no level or timestamp, as the commands always printed it).
Modules log with ``log.get(__name__).info(...)``; only entry points (``builder.cli``, the
scripts) call :func:`setup`, so importing a module never configures logging behind a library
user's back.
"""

from __future__ import annotations

import logging
import sys

ROOT = "builder"
FORMAT = "%(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (pytest's capture, ``redirect_stderr``), and
    flushes every line so progress shows up live in CI logs."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201 - logging's own attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ assigns it
        pass


def get(name: str) -> logging.Logger:
    """The logger for a module (pass ``__name__``); every ``builder.*`` logger reaches the one
    handler through ``builder``."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def setup(verbose: bool = False) -> logging.Logger:
    """Install the one handler (idempotent): INFO and up, DEBUG with ``verbose``."""
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False  # the root logger (TensorFlow's absl handler) must not print it twice
    return root
