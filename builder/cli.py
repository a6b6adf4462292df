"""The thin fire CLI: every command lives in the module that does the work.

User errors (``BuilderError``) print one line and exit 2; anything else is a bug and exits 1
with its traceback. ``--verbose`` shows tracebacks for user errors too.

Only the chosen command's module is imported (``python -m builder export ...`` never pays for
the server or the benchmark); ``--help`` without a command imports them all, since fire reads
each command's docstring for the listing, and none of them imports TensorFlow at module level.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable

from builder.core import log
from builder.core.errors import BuilderError

# command name -> (module, function)
COMMANDS: dict[str, tuple[str, str]] = {
    "example": ("builder.example.facenet", "example_command"),
    "export": ("builder.export.pipeline", "export_command"),
    "config": ("builder.config.models_config", "config_command"),
    "inspect": ("builder.config.inspection", "inspect_command"),
    "preflight": ("builder.config.preflight", "preflight_command"),
    "serve": ("builder.serve.local", "serve_command"),
    "publish": ("builder.publish.api", "publish_command"),
    "pull": ("builder.publish.api", "pull_command"),
    "verify": ("builder.publish.api", "verify_command"),
    "deploy": ("builder.deploy.command", "deploy_command"),
    "benchmark": ("builder.bench.benchmark", "benchmark_command"),
}


def load_commands(args: list[str]) -> dict[str, Callable[..., object]]:
    """The chosen command only (first argument), or every command for the listing."""
    chosen = [args[0]] if args and args[0] in COMMANDS else list(COMMANDS)
    out = {}
    for name in chosen:
        mod, fn = COMMANDS[name]
        out[name] = getattr(importlib.import_module(mod), fn)
    return out


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _normalise(argv: list[str] | None) -> tuple[list[str], bool]:
    """``--from`` -> ``--from_`` (a Python keyword cannot be a parameter); strip ``--verbose``."""
    args = list(sys.argv[1:] if argv is None else argv)
    args = ["--from_" if a == "--from" else ("--from_=" + a[7:] if a.startswith("--from=") else a)
            for a in args]
    verbose = False
    for flag in ("--verbose", "-v"):
        if flag in args:
            args.remove(flag)
            verbose = True
    return args, verbose


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m builder`` and the ``tfs-builder`` console script."""
    import fire

    args, verbose = _normalise(argv)
    if not verbose:
        _quiet_tensorflow()
    log.setup(verbose)
    try:
        fire.Fire(load_commands(args), command=args, name="builder")
    except BuilderError as e:
        if verbose:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted: nothing was promoted", file=sys.stderr)
        return 130
    except fire.core.FireExit as e:  # --help, or fire's own usage errors
        return int(e.code or 0)
    except Exception:  # noqa: BLE001 - the one place that turns bugs into exit 1
        traceback.print_exc()
        print("internal error: this is a bug in tfs-builder, please report it with the "
              "traceback above", file=sys.stderr)
        return 1
    return 0
