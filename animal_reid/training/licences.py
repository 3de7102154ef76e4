"""Which of a corpus's source licences binds the weights trained on it: the most restrictive one.

Licences in source declarations are free text ("CC BY 4.0", "research use only", "no redistribution without
permission of the authors", "unknown (none stated by the source)"). :func:`restriction` ranks one by what it allows
with the weights derived from it, most restrictive first:

0. no licence stated, or redistribution forbidden ("unknown", "none stated", "no redistribution", "all rights
   reserved", "permission"): nothing may be redistributed without asking the authors;
1. research or non-commercial use only ("research", "non-commercial", "NC");
2. share-alike ("SA", "share alike", "GPL");
3. attribution (CC BY, ODC-By);
4. permissive (MIT, Apache, BSD, CC0, public domain).

A text that matches none ranks 0 (an unreadable licence is treated as no licence). Terms are checked from the most
restrictive down, so "competition data: research use only, no redistribution" ranks 0.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

LEVELS = (
    "no licence for redistribution (ask the authors)",
    "research / non-commercial use only",
    "share-alike",
    "attribution",
    "permissive",
)
_RULES = (
    (
        0,
        r"unknown|none stated|no licen|no redistribution|not be redistributed|all rights reserved|permission",
    ),
    (1, r"research|non-?commercial|\bnc\b|-nc\b|academic"),
    (2, r"\bsa\b|-sa\b|share[- ]?alike|\bgpl\b|copyleft"),
    (3, r"\bby\b|attribution|odc-by"),
    (4, r"\bmit\b|apache|\bbsd\b|cc0|public domain|unlicense|permissive"),
)


def restriction(licence: str) -> int:
    """The level (index into :data:`LEVELS`, 0 most restrictive) of one licence text."""
    text = (licence or "").lower()
    for level, pattern in _RULES:
        if re.search(pattern, text):
            return level
    return 0


def most_restrictive(sources: Iterable[dict]) -> tuple[str, list[str]] | None:
    """(the binding level's words, the names of the sources at that level) over ``sources`` (dicts with
    ``name`` and ``license``); None when there are none."""
    ranked = [(restriction(s.get("license", "")), s.get("name", "?")) for s in sources]
    if not ranked:
        return None
    level = min(r for r, _ in ranked)
    return LEVELS[level], sorted(name for r, name in ranked if r == level)
