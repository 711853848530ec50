"""The steering table -> the list of :class:`explorer.steer.Steer` the generator takes: the one
validation path for steering.

Every entry point (the Generate button, the Add button, the dashboard's "steer with this
feature", an API client) hands its table to :func:`parse_steers`, which returns steers or raises
one :class:`UserError` naming the row and the cell. The table arrives in whatever shape its
caller had: a pandas DataFrame (the page), ``{"headers": [...], "data": [[...]]}`` or a bare list
of rows (API clients), a list of :class:`Steer`, or ``None``.

The rules, in one place:

- ``layer`` and ``feature`` are whole numbers: a number (``3``, ``3.0``) or digits as text
  (``"3"``, and ``"3.0"``: a spreadsheet shows a number column that way). ``"1e3"``,
  ``"12abc"``, ``"3.5"`` are refused: an id is typed, not computed.
- ``strength`` is a finite number within +-100,000; blank means the steering evaluation's
  recommended strength for the feature when the store has one, else its max activation in the
  store (blank for ``ablate``: 0). ``method`` is add, clamp or ablate (any case); blank
  means add. ``label`` and ``steering estimate`` are for reading only.
- ``source`` is ``res`` (blank too: a residual SAE's feature) or ``tc`` (a transcoder's, when
  the bundle has transcoders); a transcoder feature is steered with ``add`` only, at its layer's
  MLP output (:mod:`explorer.steer`).
- A row whose cells are all blank is skipped (the page keeps an empty row to type into); at most
  :data:`MAX_STEERS` others.

Pure: no Gradio here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from explorer.app.context import Context, UserError, parse_float, parse_int
from explorer.app.render import steer_text
from explorer.steer import MAX_STRENGTH, METHODS, Steer, SteerError
from explorer.store.schema import RES, SHORT, feature_name

MAX_STEERS = 8
STEER_COLUMNS = ("layer", "feature", "strength", "method", "label", "steering estimate", "source")
"""The table's columns; ``source`` last, so rows of cells in the older order still read."""
_WHOLE = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
"""A whole number written as text: ``12``, ``+12``, ``12.0``; not ``1e3``, ``12abc``, ``1_000``."""


def _shown(value: Any) -> str:
    """A cell as a message shows it: its ``repr``, cut at 40 characters (a lone surrogate comes
    out as the escape ``'\\ud800'``, so every message is valid text)."""
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _blank(value: Any) -> bool:
    """An empty cell: ``None`` or blank text. (A DataFrame's NaN is made ``None`` when it is read:
    NaN is how pandas shows an empty number cell, but a NaN a client sends is a bad number.)"""
    return value is None or (isinstance(value, str) and not value.strip())


def whole_number(value: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """A layer, feature id, seed or token count: a whole number (``3``, ``3.0``) or its digits as
    text (``"3"``; ``"3.0"`` too, since a spreadsheet shows a number column that way).

    Text like ``"1e3"``, ``"12abc"`` or ``"3.5"`` is refused: an id is typed, not computed.
    """
    if isinstance(value, str) and value.strip() and not _WHOLE.fullmatch(value.strip()):
        raise UserError(f"{what} must be a whole number such as 12, not {_shown(value)}")
    if isinstance(value, bool):
        raise UserError(f"{what} must be a whole number, not {value}")
    if isinstance(value, int) and value.bit_length() > 64:  # JSON carries any integer
        raise UserError(f"{what} is far too large: {_shown(value)}")
    return parse_int(value, what, lo, hi)


def number(value: Any, what: str, lo: float, hi: float) -> float:
    """A finite number in ``[lo, hi]``; the message quotes odd text safely."""
    if isinstance(value, bool):
        raise UserError(f"{what} must be a number, not {value}")
    try:
        return parse_float(value, what, lo, hi)
    except OverflowError:  # an integer past float's range
        raise UserError(f"{what} is far too large: {_shown(value)}") from None
    except UserError:
        if isinstance(value, (int, float)):
            raise
        raise UserError(
            f"{what} must be a number from {lo:g} to {hi:g}, not {_shown(value)}"
        ) from None


def default_strength(
    ctx: Context, layer: Any, feature: Any, method: str = "add", source: Any = RES
) -> float:
    """The steering evaluation's recommended strength for the feature and method when the store
    has one (``steering.parquet``, :mod:`precompute.steer_eval`: residual SAEs' features), else
    the feature's max activation in the store (10 without the source's data)."""
    source = ctx.source(source)
    layer_n, feature_n = ctx.check_feature(layer, feature, source)
    reader = ctx.reader(source)
    if reader is None:
        return 10.0
    if source == RES:
        recommended = reader.recommended_strength(layer_n, feature_n, method)
        if recommended is not None:
            return round(recommended, 2)
    value = float(ctx.summary_layer(layer_n, source)["max_act"].iat[feature_n])
    return round(value, 2) if value > 0 else 10.0


def parse_row(ctx: Context, cells: dict[str, Any], where: str) -> Steer:
    """One row of the table (``{column: cell}``) as a :class:`Steer`, or :class:`UserError`
    starting with ``where`` (``"row 2"``).

    ``layer`` and ``feature`` are required. A blank ``method`` is ``add``; a blank ``strength``
    is the recommended strength, else the max activation (:func:`default_strength`), as in the
    Add form.
    ``label`` is for reading only: labels are looked up again when the table is shown.
    """
    for name in ("layer", "feature"):
        if _blank(cells.get(name)):
            raise UserError(f"{where}: {name} is missing: enter a whole number")
    layer = whole_number(cells["layer"], f"{where}: layer")
    feature = whole_number(cells["feature"], f"{where}: feature")
    source_cell = cells.get("source")
    try:
        source = ctx.source(None if _blank(source_cell) else str(source_cell))
        layer, feature = ctx.check_feature(layer, feature, source)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None
    method_cell = cells.get("method")
    method = "add" if _blank(method_cell) else str(method_cell).strip().lower()
    if method not in METHODS:
        raise UserError(
            f"{where}: method must be {', '.join(METHODS[:-1])} or {METHODS[-1]}, "
            f"not {_shown(method_cell)}"
        )
    if source != RES and method != "add":
        raise UserError(
            f"{where}: {feature_name(layer, feature, source)} is a transcoder feature: it steers "
            f"with add only (its direction is added to the MLP's output), not {method}"
        )
    if _blank(cells.get("strength")):
        strength = (
            0.0 if method == "ablate" else default_strength(ctx, layer, feature, method, source)
        )
    else:
        strength = number(cells["strength"], f"{where}: strength", -MAX_STRENGTH, MAX_STRENGTH)
    try:
        return Steer(layer, feature, strength, method, source)
    except SteerError as err:  # the checks above should have caught it: still one line
        raise UserError(f"{where}: {err}") from None


def _rows(table: Any) -> tuple[list[str], list[Any]]:
    """``(headers, rows)`` of a table in any of the shapes the module docstring lists."""
    if table is None:
        return list(STEER_COLUMNS), []
    if isinstance(table, pd.DataFrame):
        cells = table.astype(object).where(table.notna(), None)
        return [str(c).strip().lower() for c in table.columns], cells.values.tolist()
    if isinstance(table, dict):
        unknown = sorted(set(table) - {"headers", "data", "metadata"})
        if unknown:
            raise UserError(
                "the steering table must be {'headers': [...], 'data': [[...], ...]}; "
                f"it has {_shown(unknown[0])}"
            )
        headers = table.get("headers")
        data = table.get("data")
        if headers is None:
            headers = list(STEER_COLUMNS)
        if not isinstance(headers, list) or not all(isinstance(h, str) for h in headers):
            raise UserError("the steering table's headers must be a list of column names")
        if data is None:
            data = []
        if not isinstance(data, list):
            raise UserError("the steering table's data must be a list of rows")
        return [h.strip().lower() for h in headers], data
    if isinstance(table, (list, tuple)):
        return list(STEER_COLUMNS), list(table)
    raise UserError(
        "the steering table must be rows of [layer, feature, strength, method], "
        f"not {type(table).__name__}"
    )


def parse_steers(ctx: Context, table: Any) -> list[Steer]:
    """The steering table as the :class:`Steer` list the generator takes: the one check.

    Accepts a DataFrame, ``{"headers": [...], "data": [[...]]}``, a list of rows (cells in the
    order layer, feature, strength, method, label; trailing cells may be left out), a list of
    :class:`Steer` (checked again against this bundle), or ``None`` (no features). A row whose
    cells are all blank is skipped (the page keeps an empty row to type into); any other problem
    raises :class:`UserError` naming the row, e.g. ``row 2: feature must be from 0 to 47, not
    99``. At most :data:`MAX_STEERS` rows.

    >>> parse_steers(ctx, [[2, 5, 40.0, "add"], [2, 7, "", "ablate"]])  # doctest: +SKIP
    [Steer(layer=2, feature=5, strength=40.0, method='add'), Steer(2, 7, 0.0, 'ablate')]
    """
    if isinstance(table, (list, tuple)) and table and all(isinstance(s, Steer) for s in table):
        rows: list[Any] = [
            [s.layer, s.feature, s.strength, s.method, None, None, SHORT[s.source]] for s in table
        ]
        headers = list(STEER_COLUMNS)
    else:
        headers, rows = _rows(table)
    unknown = [h for h in headers if h not in STEER_COLUMNS]
    if unknown:
        raise UserError(
            f"the steering table has an unknown column {_shown(unknown[0])}; "
            f"its columns are {', '.join(STEER_COLUMNS)}"
        )
    if len(set(headers)) < len(headers):
        raise UserError("the steering table names a column twice")
    filled = []
    for i, row in enumerate(rows, 1):
        if not isinstance(row, (list, tuple)):
            raise UserError(f"row {i} must be a list of cells, not {type(row).__name__}")
        if len(row) > len(headers):
            raise UserError(f"row {i} has {len(row)} cells; the table has {len(headers)} columns")
        if all(_blank(c) for c in row):
            continue
        filled.append((i, row))
        if len(filled) > MAX_STEERS:
            n = sum(1 for r in rows if not isinstance(r, (list, tuple)) or not all(map(_blank, r)))
            raise UserError(
                f"at most {MAX_STEERS} steering features at once; this table has {n}: "
                "remove some rows"
            )
    return [parse_row(ctx, dict(zip(headers, row, strict=False)), f"row {i}") for i, row in filled]


def to_table(ctx: Context, steers: Sequence[Steer]) -> pd.DataFrame:
    """The steers as the page's table, each with its feature's current label and its
    likely-to-steer estimate (:mod:`explorer.steerability`)."""
    rows = [
        [
            s.layer, s.feature, s.strength, s.method, ctx.label_of(s.layer, s.feature, s.source),
            steer_text(ctx.steer_estimate(s.layer, s.feature, s.source)), SHORT[s.source],
        ]
        for s in steers
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=list(STEER_COLUMNS))


def add_steer(
    ctx: Context,
    steering: Any,
    layer: Any,
    feature: Any,
    strength: Any = None,
    method: Any = "add",
    source: Any = RES,
) -> list[Steer]:
    """The table's steers with one more feature (blank strength: :func:`default_strength`)."""
    current = parse_steers(ctx, steering)
    if len(current) >= MAX_STEERS:
        raise UserError(f"at most {MAX_STEERS} steering features at once: remove one first")
    cells = {
        "layer": layer, "feature": feature, "strength": strength, "method": method,
        "source": source,
    }  # fmt: skip
    return [*current, parse_row(ctx, cells, "the new feature")]
