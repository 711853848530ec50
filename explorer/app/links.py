"""Shareable links: the address bar follows the view, and a link reproduces it.

A link is the page's query string. ``?layer=9&feature=123`` opens a feature's dashboard;
``?text=…`` puts a text in the microscope; ``?prompt=…&steer=9:123:40:add&temperature=0.7&
max_new_tokens=40&seed=1&frequency_penalty=0`` sets up the Steering tab (several ``steer`` items
are separated by commas). Parsing is strict: a key given twice, a number that is not a plain
decimal (``1e3``, ``12abc``), an unknown method: each is named in one warning and the link's
other parts still apply. Pure functions (no Gradio): the layout reads and writes the address bar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from explorer.steer import METHODS

MAX_TEXT = 2000  # characters of a text or prompt kept in a link
_INT = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,9})?")
KNOWN = (
    "tab", "layer", "feature", "text", "prompt", "steer", "temperature", "max_new_tokens", "seed",
    "frequency_penalty",
)  # fmt: skip


@dataclass
class Link:
    """What a link asks for; ``problems`` are one line each, for one warning."""

    tab: str | None = None
    feature: tuple[int, int] | None = None
    text: str | None = None
    prompt: str | None = None
    steers: list[tuple[int, int, float, str]] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.feature or self.text or self.prompt or self.steers or self.tab)


def parse(items: Iterable[tuple[str, str]]) -> Link:
    """A :class:`Link` from the query's (key, value) pairs, in order (repeats included)."""
    link = Link()
    seen: dict[str, str] = {}
    for key, value in items:
        if key in seen:
            link.problems.append(f"{key!r} is given more than once (the first one is used)")
            continue
        seen[key] = value
    unknown = [k for k in seen if k not in KNOWN]
    if unknown:
        link.problems.append("unknown keys: " + ", ".join(repr(k[:40]) for k in unknown[:5]))
    if "layer" in seen or "feature" in seen:
        layer, feature = (
            _int(seen.get("layer"), "layer", link),
            _int(seen.get("feature"), "feature", link),
        )
        if layer is not None and feature is not None:
            link.feature = (layer, feature)
    for key in ("text", "prompt"):
        if key in seen:
            value = seen[key]
            if len(value) > MAX_TEXT:
                link.problems.append(f"{key} is longer than {MAX_TEXT} characters: cut")
                value = value[:MAX_TEXT]
            setattr(link, key, value)
    if "steer" in seen:
        for item in seen["steer"].split(","):
            parsed = _steer(item, link)
            if parsed is not None:
                link.steers.append(parsed)
    for key in ("temperature", "max_new_tokens", "seed", "frequency_penalty"):
        if key in seen:
            value = seen[key].strip()
            if _NUMBER.fullmatch(value):
                link.settings[key] = float(value)
            else:
                link.problems.append(f"{key} must be a plain number, not {value[:40]!r}")
    tab = seen.get("tab")
    if tab is not None:
        link.tab = tab
    return link


def _int(value: str | None, what: str, link: Link) -> int | None:
    if value is None:
        link.problems.append(f"{what} is missing")
        return None
    if not _INT.fullmatch(value.strip()):
        link.problems.append(f"{what} must be a whole number like 123, not {value[:40]!r}")
        return None
    return int(value)


def _steer(item: str, link: Link) -> tuple[int, int, float, str] | None:
    parts = item.strip().split(":")
    if len(parts) != 4:
        link.problems.append(f"steer item {item[:40]!r} is not layer:feature:strength:method")
        return None
    layer, feature, strength, method = (p.strip() for p in parts)
    if not (_INT.fullmatch(layer) and _INT.fullmatch(feature) and _NUMBER.fullmatch(strength)):
        link.problems.append(f"steer item {item[:40]!r} has a number that is not plain")
        return None
    if method not in METHODS:
        link.problems.append(f"steer item {item[:40]!r}: method must be add, clamp or ablate")
        return None
    return int(layer), int(feature), float(strength), method


def feature_query(layer: int, feature: int) -> str:
    """``?tab=dashboard&layer=9&feature=123``."""
    return "?" + urlencode({"tab": "dashboard", "layer": layer, "feature": feature})


def text_query(text: str) -> str:
    return "?" + urlencode({"tab": "microscope", "text": text[:MAX_TEXT]})


def steer_query(prompt: str, steers: Iterable[tuple[Any, Any, Any, Any]], **settings: Any) -> str:
    """The Steering tab's set-up as a query (steers as ``layer:feature:strength:method``)."""
    items = ",".join(f"{a}:{b}:{c:g}:{d}" for a, b, c, d in steers)
    query: dict[str, Any] = {"tab": "steer", "prompt": prompt[:MAX_TEXT]}
    if items:
        query["steer"] = items
    query.update({k: f"{v:g}" for k, v in settings.items()})
    return "?" + urlencode(query)
