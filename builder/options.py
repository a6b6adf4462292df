"""Flag coercion, in one place: python-fire hands over "1,8", (1, 8), 1 or True for the same flag.

Every command turns its raw flag values into typed ones here, so a bad value gets the same
one-line error everywhere ("--keep 'x' is not an integer: use e.g. --keep 3") and no module
re-implements "is this an int / a list / a switch". The shared flag groups live here too:
``LoaderFlags`` is the group every command that loads a source model takes (export,
benchmark); ``@with_loader_flags`` adds it to a command.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from builder.core.errors import InputError

_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def as_list(value: object, flag: str = "") -> list[str]:
    """Flatten a comma list / tuple / scalar flag value into stripped strings."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        items: Iterable[object] = value
    else:
        items = [value]
    out: list[str] = []
    for item in items:
        if isinstance(item, (list, tuple)):
            out.extend(as_list(item, flag))
            continue
        if isinstance(item, bool):
            out.append("true" if item else "false")
            continue
        out.extend(s.strip() for s in str(item).split(",") if s.strip())
    return out


def as_int_list(value: object, flag: str) -> list[int]:
    """Positive integers from a comma list, with an error that names the flag."""
    out = []
    for s in as_list(value, flag):
        try:
            n = int(s)
        except ValueError:
            raise InputError(f"{flag} {s!r} is not an integer: use e.g. {flag} 1,8,100") from None
        if n <= 0:
            raise InputError(f"{flag} {n} must be positive: use e.g. {flag} 1,8,100")
        out.append(n)
    return sorted(set(out))


def as_mapping(value: object, flag: str, sep: str = "=") -> dict[str, str]:
    """``a=1,b=2`` (or a tuple of such) -> {"a": "1", "b": "2"}; fire may pre-parse dicts too."""
    if isinstance(value, dict):
        return {str(k): _scalar(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in as_list(value, flag):
        if sep not in item:
            raise InputError(f"{flag} {item!r} is not KEY{sep}VALUE: use e.g. {flag} input{sep}images")
        k, v = item.split(sep, 1)
        if not k.strip():
            raise InputError(f"{flag} {item!r} has an empty key: use e.g. {flag} input{sep}images")
        out[k.strip()] = v.strip()
    return out


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _hint(flag: str, example: object) -> str:
    return "" if example is None else f": use e.g. {flag} {example}"


def as_int(value: object, flag: str, *, minimum: int | None = None, maximum: int | None = None,
           example: object = None) -> int:
    """An integer flag (fire gives int or str); a switch value (True) is not an integer.

    With both bounds the error says the range ("--seed -1 is not an integer in 0..2147483647"),
    with only ``minimum`` it says the floor ("--replicas 0 must be >= 1").
    """
    if isinstance(value, bool) or value is None or isinstance(value, float) and not value.is_integer():
        raise InputError(f"{flag} {value!r} is not an integer{_hint(flag, example)}")
    try:
        n = int(value) if isinstance(value, (int, float)) else int(str(value).strip())
    except ValueError:
        raise InputError(f"{flag} {value!r} is not an integer{_hint(flag, example)}") from None
    if minimum is not None and maximum is not None and not minimum <= n <= maximum:
        raise InputError(f"{flag} {n} is not an integer in {minimum}..{maximum}{_hint(flag, example)}")
    if minimum is not None and n < minimum:
        raise InputError(f"{flag} {n} must be >= {minimum}{_hint(flag, example)}")
    if maximum is not None and n > maximum:
        raise InputError(f"{flag} {n} must be <= {maximum}{_hint(flag, example)}")
    return n


def as_float(value: object, flag: str, *, positive: bool = False, example: object = None) -> float:
    """A number flag; ``positive`` refuses 0 and below (timeouts, time budgets)."""
    if isinstance(value, bool) or value is None:
        raise InputError(f"{flag} {value!r} is not a number{_hint(flag, example)}")
    try:
        x = float(value) if isinstance(value, (int, float)) else float(str(value).strip())
    except ValueError:
        raise InputError(f"{flag} {value!r} is not a number{_hint(flag, example)}") from None
    if positive and not x > 0:
        raise InputError(f"{flag} {x:g} must be a positive number{_hint(flag, example)}")
    return x


def as_bool(value: object, flag: str) -> bool:
    """A switch: fire gives True/False for ``--flag`` / ``--noflag`` / ``--flag=false``; the
    words true/false/yes/no/1/0 are accepted too, anything else names both spellings."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise InputError(f"{flag} {value!r}: it is a switch, use {flag} or --no{flag.lstrip('-')}")


def as_bool_or_auto(value: object, flag: str) -> bool | None:
    """``auto`` (or empty) -> None, so the command decides; otherwise a switch value."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("auto", "", "none"):
        return None
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise InputError(f"{flag} {value!r}: use auto, true or false")


def as_optional_str(value: object) -> str | None:
    """Empty or None -> None, else the stripped text (fire passes "" for an unset str flag)."""
    if value is None:
        return None
    s = str(value).strip()
    return s or None


# --------------------------------------------------------------------------- the loader flag group


@dataclass
class LoaderFlags:
    """The flags every command that loads a source model takes (export, benchmark, ...), coerced
    once. ``signatures`` empty means every signature of a SavedModel."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    feed: dict[str, str] = field(default_factory=dict)
    input_alias: dict[str, str] = field(default_factory=dict)
    output_alias: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=lambda: ["serve"])
    signatures: list[str] = field(default_factory=list)

    @classmethod
    def from_cli(cls, inputs: object = None, outputs: object = None, feed: object = None,
                 input_alias: object = None, output_alias: object = None,
                 input_shapes: object = None, tags: object = "serve",
                 signature: object = None) -> LoaderFlags:
        """python-fire's raw values ("a,b", ("a", "b"), {"k": v}) -> typed flags."""
        return cls(
            inputs=as_list(inputs, "--inputs"),
            outputs=as_list(outputs, "--outputs"),
            feed=as_mapping(feed, "--feed"),
            input_alias=as_mapping(input_alias, "--input_alias"),
            output_alias=as_mapping(output_alias, "--output_alias"),
            input_shapes=as_mapping(input_shapes, "--input_shapes"),
            tags=as_list(tags, "--tags") or ["serve"],
            signatures=as_list(signature, "--signature"),
        )


# name -> (CLI default, help text). The order is the order in --help.
LOADER_FLAGS: dict[str, tuple[object, str]] = {
    "inputs": (None, "Input tensors/nodes, comma separated (e.g. input). Any tensor may be an input; "
                     "the graph is cut there so input pipelines fall away. By default the SavedModel "
                     "signatures' inputs, or the only unfed placeholder."),
    "outputs": (None, "Output tensors/nodes, comma separated (e.g. embeddings); the graph is pruned "
                      "to them. By default the SavedModel signatures' outputs."),
    "feed": (None, "Fixed placeholder values folded into constants, e.g. phase_train=false."),
    "input_alias": (None, "Signature keys for inputs, e.g. input=images; the left side may be a node "
                          "name, a tensor name or a signature key."),
    "output_alias": (None, "Signature keys for outputs, e.g. embeddings=embeddings (node, tensor or "
                           "signature key)."),
    "input_shapes": (None, "Shapes of cut inputs whose shape the graph lost (typical when the graph "
                           "is cut inside a queue-fed input pipeline), e.g. input=?x160x160x3 (? = "
                           "any). It sets the served shape."),
    "tags": ("serve", "SavedModel tags to load (savedmodel flow), comma separated. Default serve."),
    "signature": (None, "SavedModel signatures to keep, comma separated (default: all of them, "
                        "each with its method name); with --inputs/--outputs the one signature "
                        "to rewrite (default serving_default)."),
}


def with_loader_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a CLI command the loader flag group: the flags are appended to its signature (so
    python-fire offers them), documented under ``{loader_flags}`` in its docstring's Args, and
    handed to the function as one ``loader: LoaderFlags`` argument. The help texts avoid ": "
    because python-fire reads "word: text" on a continuation line as a new argument."""
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "loader"]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
               for name, (default, _) in LOADER_FLAGS.items()]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        raw = {name: kwargs.pop(name, default) for name, (default, _) in LOADER_FLAGS.items()}
        return fn(*args, loader=LoaderFlags.from_cli(**raw), **kwargs)

    command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    docs = "\n".join(_wrap_arg(name, text) for name, (_, text) in LOADER_FLAGS.items())
    command.__doc__ = (fn.__doc__ or "").replace("      {loader_flags}", docs)
    return command


def _wrap_arg(name: str, text: str, width: int = 96) -> str:
    words, lines, line = text.split(), [], f"      {name}:"
    for w in words:
        if len(line) + 1 + len(w) > width:
            lines.append(line)
            line = "        " + w
        else:
            line += " " + w
    return "\n".join([*lines, line])
