"""Small argument helpers: python-fire hands over "1,8", (1, 8), 1 or True for the same flag."""

from __future__ import annotations

from collections.abc import Iterable

from builder.core.errors import InputError


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
