"""Small checks shared by the loaders of user files (fleets, recipes, manifests).

Each raises the caller's :class:`EdgeweaveError` subclass with a message that names the
field, says what was found and what is expected, so a typo or a wrong type in a YAML/JSON
file ends in one line instead of a traceback deep inside the code that used the value.
Kept free of heavy imports: the planner and the CLI use it before torch is loaded.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from edgeweave.errors import ConfigError, EdgeweaveError


def one_line(err: BaseException | str) -> str:
    """A foreign exception's text on one line (YAML errors span several, with indentation)."""
    return " ".join(str(err).split())


def first_mismatch(err: BaseException, limit: int = 300) -> str:
    """The first "size mismatch ..." line of a torch ``load_state_dict`` error (it lists every
    tensor, one per line, after a header), else the error on one line; at most ``limit``."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = next((ln for ln in lines if "mismatch" in ln), " ".join(lines))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def kind(value: Any) -> str:
    """What a value is, in the words of JSON/YAML (users write documents, not Python)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def suggest(name: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or nothing."""
    if not isinstance(name, str):
        return ""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def refuse_unknown(keys: Iterable[Any], allowed: Iterable[str], where: str,
                   error: type[EdgeweaveError] = ConfigError) -> None:
    """Refuse keys outside ``allowed``: a misspelt key would otherwise be silently ignored."""
    allowed = sorted(allowed)
    for k in keys:
        if k not in allowed:
            raise error(f"{where}: unknown key {show(k)}{suggest(k, allowed)}; allowed keys: "
                        f"{', '.join(allowed)}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # YAML/JSON true is not 1


def is_number(value: Any) -> bool:
    """An int or a float (not a boolean, not a numeric string), finite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def number(value: Any, what: str, example: str,
           error: type[EdgeweaveError] = ConfigError) -> float:
    if not is_number(value):
        finite = " finite" if isinstance(value, float) else ""
        fix = "write it unquoted" if isinstance(value, str) else "give one"
        raise error(f"{what} must be a{finite} number, got {kind(value)} {show(value)}: "
                    f"{fix}, e.g. {example}")
    return float(value)


def mapping(value: Any, what: str, example: str,
            error: type[EdgeweaveError] = ConfigError) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise error(f"{what} must be a mapping, got {kind(value)} {show(value)}; e.g. {example}")
    return value
