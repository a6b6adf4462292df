"""The thin fire CLI: every command lives in the module that does the work.

User errors (``BuilderError``) print one line and exit 2; anything else is a bug and exits 1
with its traceback. ``--verbose`` shows tracebacks for user errors too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback

from builder.core.errors import BuilderError

# command name -> (module, function). A module that does not exist yet is left out of the CLI.
COMMANDS: dict[str, tuple[str, str]] = {
    "example": ("builder.example.facenet", "example_command"),
    "export": ("builder.export.pipeline", "export_command"),
    "config": ("builder.config.models_config", "config_command"),
    "inspect": ("builder.config.inspection", "inspect_command"),
    "preflight": ("builder.config.preflight", "preflight_command"),
    "serve": ("builder.serve.server", "serve_command"),
    "publish": ("builder.publish.api", "publish_command"),
    "pull": ("builder.publish.api", "pull_command"),
    "verify": ("builder.publish.api", "verify_command"),
    "deploy": ("builder.deploy.kubernetes", "deploy_command"),
    "benchmark": ("builder.bench.benchmark", "benchmark_command"),
}


def _commands() -> dict:
    out = {}
    for name, (mod, fn) in COMMANDS.items():
        if importlib.util.find_spec(mod) is None:
            continue
        out[name] = getattr(importlib.import_module(mod), fn)
    return out


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m builder`` and the ``tfs-builder`` console script."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    # `from` is a Python keyword, so `pull --from REF` reaches the function as `from_`
    args = ["--from_" if a == "--from" else ("--from_=" + a[7:] if a.startswith("--from=") else a)
            for a in args]
    verbose = False
    for flag in ("--verbose", "-v"):
        if flag in args:
            args.remove(flag)
            verbose = True
    if not verbose:
        _quiet_tensorflow()
    try:
        result = fire.Fire(_commands(), command=args, name="builder")
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
    del result
    return 0
