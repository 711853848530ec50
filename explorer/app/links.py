"""Shareable links: the address bar follows the view, and a link reproduces it.

A link is the page's query string; ``tab`` names the tab (``start``, ``microscope``,
``dashboard``, ``steer``, ``browse``, ``label``) and the other keys that tab's view:

- a feature's page: ``?tab=dashboard&layer=9&feature=123`` (``?layer=9&feature=123`` too); a
  transcoder feature's: ``?tab=dashboard&source=tc&layer=9&feature=456`` (no ``source``: the
  residual SAEs' feature, ``res``, as every link before sources);
- the microscope: ``?tab=microscope&text=…&token=3&shade=9:123`` (the chosen token, the feature
  shading the text, or ``shade=strongest``), with ``source=tc`` (the transcoders' layers, shade
  ``tc9:123``), ``layers=5,9``, ``heatmap=max activation``, ``density=0.5`` and ``rank=sum``
  where they differ from the page's defaults;
- steering: ``?tab=steer&prompt=…&steer=9:123:40:add&temperature=0.7&max_new_tokens=40&seed=1&
  frequency_penalty=0`` (several ``steer`` items separated by commas; ``tc9:123:40:add`` a
  transcoder feature) generates when opened, as it always did; ``run=0`` marks a set-up not
  generated yet, which opens without generating;
- browse: ``?tab=browse&q=cat&browse_page=2`` with ``browse_source`` (``res`` or ``tc``),
  ``browse_layer``, ``sort``, ``desc=0``, ``hide_dense=0`` and ``hide_dead=0`` where they differ
  from the defaults (``page`` is Gradio's own key: a page of a multipage app);
- the label form: ``?tab=label&layer=9&feature=123`` (``source=tc`` too);
- an attribution graph: ``?tab=circuits&prompt=…&target=%20Paris&pins=9_456_3,12_88_5&
  threshold=0.6`` (``target`` left out for the top prediction; pins are node ids of the graph
  file, ``layer_feature_position``), drawn when opened.

Parsing is strict: a key given twice, a number that is not a plain decimal (``1e3``, ``12abc``),
an unknown method: each is named in one warning and the link's other parts still apply. Pure
functions (no Gradio): :mod:`explorer.app.address` reads and writes the address bar.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from explorer.steer import METHODS
from explorer.store.schema import BY_SHORT, RES, SHORT

MAX_TEXT = 2000  # characters of a text or prompt kept in a link
MAX_QUERY = 200  # characters of a browse search kept in a link (the search's own limit)
_INT = re.compile(r"[0-9]{1,9}")
_NUMBER = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,9})?")
_SHADE = re.compile(r"strongest|(?:res|tc)?[0-9]{1,9}:[0-9]{1,9}")
_SOURCE = re.compile(r"(res|tc)?([0-9]{1,9})")  # a steer item's layer: ``9``, ``tc9``
SOURCE_NAMES = {"res": RES, "tc": BY_SHORT["tc"], "transcoder": BY_SHORT["tc"]}
"""A link's ``source`` values -> the source (links write the short names)."""
_FLAG = {"0": False, "1": True}
_PIN = re.compile(r"(E|[0-9]{1,3})_-?[0-9]{1,9}_[0-9]{1,4}")
MAX_TARGET = 100  # characters of a graph's typed target kept in a link
MAX_PINS = 32
SETTINGS = ("temperature", "max_new_tokens", "seed", "frequency_penalty")
MICRO_KEYS = ("token", "shade", "layers", "heatmap", "density", "rank")
BROWSE_KEYS = (
    "q", "browse_page", "browse_layer", "sort", "desc", "hide_dense", "hide_dead", "browse_source",
)  # fmt: skip
CIRCUIT_KEYS = ("target", "pins", "threshold")
KNOWN = (
    "tab", "source", "layer", "feature", "text", "prompt", "steer", *SETTINGS, "run", *MICRO_KEYS,
    *BROWSE_KEYS, *CIRCUIT_KEYS,
)  # fmt: skip
# The browse table's criteria when the page opens (a link names only those that differ).
BROWSE_DEFAULTS: dict[str, Any] = {
    "layer": "all", "query": "", "sort_by": "density", "descending": True, "hide_dense": True,
    "hide_dead": True, "page": 1, "source": "all",
}  # fmt: skip
Steer = tuple[int, int, float, str, str]
"""A steer item of a link: ``(layer, feature, strength, method, source)``."""


@dataclass
class Link:
    """What a link asks for; ``problems`` are one line each, for one warning.

    ``micro`` holds the microscope's view beyond its text (``token``, ``shade``, ``layers``,
    ``metric``, ``density``, ``aggregate``), ``browse`` the browse table's criteria (the names of
    :data:`BROWSE_DEFAULTS`), ``circuit`` an attribution graph's ``target``, ``pins`` and
    ``threshold`` (its prompt is ``prompt``), each only what the link names; ``run`` is ``False``
    for a steering set-up not to generate. ``source`` is the source of ``feature`` and of the
    microscope's layers (``res`` when the link names none).
    """

    tab: str | None = None
    feature: tuple[int, int] | None = None
    source: str = RES
    text: str | None = None
    prompt: str | None = None
    steers: list[Steer] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)
    run: bool = True
    micro: dict[str, Any] = field(default_factory=dict)
    browse: dict[str, Any] = field(default_factory=dict)
    circuit: dict[str, Any] = field(default_factory=dict)
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
    if "source" in seen:
        link.source = _source(seen["source"], "source", link) or RES
    if "layer" in seen or "feature" in seen:
        layer, feature = (
            _int(seen.get("layer"), "layer", link),
            _int(seen.get("feature"), "feature", link),
        )
        if layer is not None and feature is not None:
            link.feature = (layer, feature)
    for key in ("text", "prompt"):
        if key in seen:
            setattr(link, key, _cut(seen[key], key, MAX_TEXT, link))
    if "steer" in seen:
        for item in seen["steer"].split(","):
            parsed = _steer(item, link)
            if parsed is not None:
                link.steers.append(parsed)
    for key in SETTINGS:
        if key in seen:
            number = _number(seen[key], key, link)
            if number is not None:
                link.settings[key] = number
    if "run" in seen:
        link.run = _flag(seen["run"], "run", link) is not False
    _micro(seen, link)
    _browse(seen, link)
    _circuit(seen, link)
    tab = seen.get("tab")
    if tab is not None:
        link.tab = tab
    return link


def _micro(seen: dict[str, str], link: Link) -> None:
    if "token" in seen:
        link.micro["token"] = _int(seen["token"], "token", link)
    if "shade" in seen:
        value = seen["shade"].strip()
        if _SHADE.fullmatch(value):
            link.micro["shade"] = value
        else:
            link.problems.append(
                f"shade must be layer:feature or strongest (tc9:123: a transcoder's feature), "
                f"not {value[:40]!r}"
            )
    if "layers" in seen:
        parts = [_int(p, "layers", link) for p in seen["layers"].split(",")]
        if all(p is not None for p in parts):
            link.micro["layers"] = parts
    for key, name in (("heatmap", "metric"), ("rank", "aggregate")):
        if key in seen:
            link.micro[name] = seen[key][:40]
    if "density" in seen:
        link.micro["density"] = _number(seen["density"], "density", link)
    for key in [k for k, v in link.micro.items() if v is None]:
        del link.micro[key]


def _browse(seen: dict[str, str], link: Link) -> None:
    if "q" in seen:
        link.browse["query"] = _cut(seen["q"], "the search", MAX_QUERY, link)
    if "browse_page" in seen:
        link.browse["page"] = _int(seen["browse_page"], "browse_page", link)
    if "browse_layer" in seen:
        value = seen["browse_layer"].strip()
        link.browse["layer"] = "all" if value == "all" else _int(value, "browse_layer", link)
    if "sort" in seen:
        link.browse["sort_by"] = seen["sort"][:40]
    if "browse_source" in seen:
        value = seen["browse_source"].strip()
        found = "all" if value == "all" else _source(value, "browse_source", link)
        link.browse["source"] = SHORT[found] if found not in (None, "all") else found
    for key, name in (
        ("desc", "descending"),
        ("hide_dense", "hide_dense"),
        ("hide_dead", "hide_dead"),
    ):
        if key in seen:
            link.browse[name] = _flag(seen[key], key, link)
    for key in [k for k, v in link.browse.items() if v is None]:
        del link.browse[key]


def _source(value: str, what: str, link: Link) -> str | None:
    """``res``, ``tc`` or ``transcoder`` -> the source; anything else is a problem."""
    found = SOURCE_NAMES.get(value.strip())
    if found is None:
        link.problems.append(f"{what} must be res or tc, not {value[:40]!r}")
    return found


def _circuit(seen: dict[str, str], link: Link) -> None:
    if "target" in seen:
        link.circuit["target"] = _cut(seen["target"], "target", MAX_TARGET, link)
    if "pins" in seen:
        pins = [p.strip() for p in seen["pins"].split(",") if p.strip()]
        bad = [p for p in pins if not _PIN.fullmatch(p)]
        if bad:
            link.problems.append(f"pins must be node ids like 9_456_3, not {bad[0][:40]!r}")
        link.circuit["pins"] = [p for p in pins if _PIN.fullmatch(p)][:MAX_PINS]
    if "threshold" in seen:
        value = _number(seen["threshold"], "threshold", link)
        if value is not None and not 0 < value <= 1:
            link.problems.append("threshold must be above 0 and at most 1")
            value = None
        if value is not None:
            link.circuit["threshold"] = value


def _cut(value: str, what: str, limit: int, link: Link) -> str:
    if len(value) > limit:
        link.problems.append(f"{what} is longer than {limit} characters: cut")
    return value[:limit]


def _int(value: str | None, what: str, link: Link) -> int | None:
    if value is None:
        link.problems.append(f"{what} is missing")
        return None
    if not _INT.fullmatch(value.strip()):
        link.problems.append(f"{what} must be a whole number like 123, not {value[:40]!r}")
        return None
    return int(value)


def _number(value: str, what: str, link: Link) -> float | None:
    if _NUMBER.fullmatch(value.strip()):
        return float(value)
    link.problems.append(f"{what} must be a plain number, not {value.strip()[:40]!r}")
    return None


def _flag(value: str, what: str, link: Link) -> bool | None:
    if value.strip() in _FLAG:
        return _FLAG[value.strip()]
    link.problems.append(f"{what} must be 0 or 1, not {value[:40]!r}")
    return None


def _steer(item: str, link: Link) -> Steer | None:
    parts = item.strip().split(":")
    if len(parts) != 4:
        link.problems.append(f"steer item {item[:40]!r} is not layer:feature:strength:method")
        return None
    layer, feature, strength, method = (p.strip() for p in parts)
    at = _SOURCE.fullmatch(layer)
    if not (at and _INT.fullmatch(feature) and _NUMBER.fullmatch(strength)):
        link.problems.append(f"steer item {item[:40]!r} has a number that is not plain")
        return None
    if method not in METHODS:
        link.problems.append(f"steer item {item[:40]!r}: method must be add, clamp or ablate")
        return None
    source = SOURCE_NAMES[at[1] or "res"]
    return int(at[2]), int(feature), float(strength), method, source


def _query(items: dict[str, Any]) -> str:
    return "?" + urlencode(items)


def tab_query(tab: str) -> str:
    """``?tab=start``: a tab with nothing of its own to show yet."""
    return _query({"tab": tab})


def feature_query(layer: int, feature: int, tab: str = "dashboard", source: str = RES) -> str:
    """``?tab=dashboard&layer=9&feature=123`` (``tab="label"``: the label form on it); a
    transcoder feature's names its source: ``?tab=dashboard&source=tc&layer=9&feature=456``."""
    query: dict[str, Any] = {"tab": tab}
    if SOURCE_NAMES.get(source, source) != RES:
        query["source"] = SHORT[SOURCE_NAMES.get(source, source)]
    return _query({**query, "layer": layer, "feature": feature})


def text_query(text: str) -> str:
    return _query({"tab": "microscope", "text": text[:MAX_TEXT]})


def microscope_query(view: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The microscope's view (``text``, ``token``, ``shade`` and its settings) as a query; a
    setting equal to ``defaults``'s is left out."""
    query: dict[str, Any] = {"tab": "microscope", "text": str(view["text"])[:MAX_TEXT]}
    source = SOURCE_NAMES.get(view.get("source") or RES, RES)
    if source != RES:
        query["source"] = SHORT[source]
    for key in ("token", "shade"):
        if view.get(key) is not None:
            query[key] = view[key]
    names = {"layers": "layers", "metric": "heatmap", "density": "density", "aggregate": "rank"}
    for name, key in names.items():
        value = view.get(name)
        if value is None or value == defaults.get(name):
            continue
        if name == "layers":
            value = ",".join(str(n) for n in value)
        elif name == "density":
            value = f"{float(value):g}"
        query[key] = value
    return _query(query)


def browse_query(criteria: dict[str, Any]) -> str:
    """The browse table's criteria (:data:`BROWSE_DEFAULTS`'s names) as a query; a criterion
    equal to its default is left out."""
    keys = {"query": "q", "page": "browse_page", "source": "browse_source",
            "layer": "browse_layer", "sort_by": "sort", "descending": "desc",
            "hide_dense": "hide_dense", "hide_dead": "hide_dead"}  # fmt: skip
    query: dict[str, Any] = {"tab": "browse"}
    for name, key in keys.items():
        value = criteria.get(name, BROWSE_DEFAULTS[name])
        if value in (None, "") or value == BROWSE_DEFAULTS[name]:
            continue
        query[key] = int(value) if isinstance(value, bool) else value
    return _query(query)


def circuit_query(view: dict[str, Any]) -> str:
    """An attribution graph's view (``prompt``, ``target``, ``pins``, ``threshold``) as a
    query; a blank target (the top prediction) and no pins are left out."""
    query: dict[str, Any] = {"tab": "circuits", "prompt": str(view["prompt"])[:MAX_TEXT]}
    if view.get("target"):
        query["target"] = str(view["target"])[:MAX_TARGET]
    if view.get("pins"):
        query["pins"] = ",".join(view["pins"])
    if view.get("threshold") is not None:
        query["threshold"] = f"{float(view['threshold']):g}"
    return _query(query)


def steer_query(
    prompt: str, steers: Iterable[tuple[Any, ...]], run: bool = True, **settings: Any
) -> str:
    """The Steering tab's set-up as a query (steers as ``layer:feature:strength:method``, a
    fifth element the source: ``tc9:123:40:add`` for a transcoder's); ``run=False`` adds
    ``run=0``: a set-up not generated yet."""
    items = ",".join(
        f"{_prefix(s[4] if len(s) > 4 else RES)}{s[0]}:{s[1]}:{s[2]:g}:{s[3]}" for s in steers
    )
    query: dict[str, Any] = {"tab": "steer", "prompt": prompt[:MAX_TEXT]}
    if items:
        query["steer"] = items
    query.update({k: f"{v:g}" for k, v in settings.items()})
    if not run:
        query["run"] = 0
    return _query(query)


def _prefix(source: str) -> str:
    """A steer item's or shade's source prefix: none for ``res``, ``tc`` for a transcoder."""
    found = SOURCE_NAMES.get(source, source)
    return "" if found == RES else SHORT[found]
