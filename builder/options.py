"""Flag coercion, in one place: python-fire hands over "1,8", (1, 8), 1 or True for the same flag.

Every command turns its raw flag values into typed ones here, so a bad value gets the same
one-line error everywhere ("--keep 'x' is not an integer: use e.g. --keep 3") and no module
re-implements "is this an int / a list / a switch".
"""

from __future__ import annotations

from collections.abc import Iterable

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
