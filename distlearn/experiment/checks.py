"""The key and value checks every config section shares: unknown keys, values out of range."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..options import did_you_mean

__all__ = ["check_keys", "check_values"]


def check_keys(mapping: dict, known: Sequence[str], at: str, problems: list[str],
                elsewhere: Mapping[str, Sequence[str]] | None = None) -> None:
    """Report the keys of the mapping at key path ``at`` ("" for the top level) not in ``known``.

    ``elsewhere``: key name -> the full paths where the config has (or takes) a key of that name,
    for a key written at the wrong level (``n_epochs=5`` for ``learner_configs.learner_parameters.n_epochs=5``).
    """
    prefix, what = (f"{at}.", f"key of {at}") if at else ("", "top-level key")
    for k in mapping:
        if k not in known:
            hint = did_you_mean(str(k), {n: prefix + n for n in known})
            paths = [p for p in (elsewhere or {}).get(str(k), ()) if p != f"{prefix}{k}"]
            if not hint and paths:
                hint = f" — did you mean {' or '.join(repr(p) for p in paths[:3])}?"
            problems.append(f"{prefix}{k}: unknown {what}{hint} (expected: {', '.join(known)})")


def check_values(mapping: dict, checks: dict[str, tuple[Any, str]], at: str, problems: list[str]) -> set[str]:
    """Apply ``{key: (is_valid, expected)}`` to the keys present; returns the keys found wrong."""
    wrong = [k for k, (valid, _) in checks.items() if k in mapping and not valid(mapping[k])]
    for k in wrong:
        v = mapping[k]
        bare_no = k == "mixed_precision" and v is False
        hint = ' — quote it: mixed_precision: "no" (a bare no is YAML for false)' if bare_no else ""
        if isinstance(v, str) and not hint:  # a misspelled choice: the closest of the quoted ones
            hint = did_you_mean(v, re.findall(r"'([^']+)'", checks[k][1]))
        problems.append(f"{at}.{k}: expected {checks[k][1]}, got {v!r}{hint}")
    return set(wrong)
