"""One label row: its fields, their limits, and the checks every value passes before it is
stored (layer and feature numbers, one-line and multi-line text, confidence, times)."""

from __future__ import annotations

import hashlib
import operator
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime

SCHEMA_VERSION = 2
CONFIDENCES = ("low", "medium", "high")
# The exported columns, in order; ``id`` and ``batch`` are local to a database and not exported.
COLUMNS = ("scope", "layer", "feature", "label", "notes", "confidence", "labeller", "created_at")
# Exported after COLUMNS when the scope has a retracted row (in JSON: on retracted rows only).
RETRACTION_COLUMNS = ("retracted_at", "retracted_by", "retract_reason")
# The only columns whose cells may span lines in a CSV (see ``formats.read_csv``).
MULTILINE_COLUMNS = ("notes", "retract_reason")
REQUIRED_COLUMNS = ("layer", "feature", "label")
MAX_LABEL_CHARS = 200
MAX_NOTES_CHARS = 4000
MAX_LABELLER_CHARS = 100
MAX_IMPORT_BYTES = 10 * 1024 * 1024
MAX_IMPORT_ROWS = 100_000
MAX_REPORTED_ERRORS = 20
_MAX_INDEX = 2**31 - 1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")  # Unicode category Cc
_CONTROL_BUT_TAB_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]+")


class LabelError(ValueError):
    """Bad input or an unusable label database; the message is one sentence for the end user."""


@dataclass(frozen=True)
class Label:
    """One row of label history.

    Args:
        id: Row id, increasing with insertion; the newest row of a feature is its current label.
        scope: The SAE set the label belongs to (e.g. the preset name).
        layer: Layer of the SAE.
        feature: Feature index within that SAE (``0 <= feature < width``).
        label: Short name, one line, at most 200 characters.
        notes: Free text, may span lines, at most 4000 characters.
        confidence: ``"low"``, ``"medium"`` or ``"high"``.
        labeller: Who wrote it (free text, may be empty).
        created_at: ISO-8601 UTC, e.g. ``2026-11-23T10:00:00.123456Z`` (fraction only if non-zero).
        batch: The import that added the row to this database (``None`` for :meth:`Labels.add`).
            Local to the database like ``id``: not exported, and not compared (a restored row
            equals its original).
        retracted_at: When the row was retracted (``None`` if it was not): it stays in the
            history but is no longer anyone's current label.
        retracted_by: Who retracted it (free text, may be empty).
        retract_reason: Why (free text, may span lines).
    """

    id: int
    scope: str
    layer: int
    feature: int
    label: str
    notes: str
    confidence: str
    labeller: str
    created_at: str
    batch: str | None = field(default=None, compare=False)
    retracted_at: str | None = None
    retracted_by: str = ""
    retract_reason: str = ""

    @property
    def retracted(self) -> bool:
        return self.retracted_at is not None


@dataclass(frozen=True)
class ImportReport:
    """What an import did.

    Args:
        added: Rows inserted.
        duplicates: Valid rows skipped because an identical row was already in the history (or
            earlier in the same file).
        errors: One line per problem (``"row 7: feature 99999 is past layer 9's width (4096)"``),
            at most 20 plus a final line counting the rest; ignored columns are reported here too.
        skipped: Rows not imported because they were invalid.
        batch: The id recorded on every added row (for :meth:`Labels.retract_batch`), or None
            when nothing was added. Not compared: two imports differ in it by design.
    """

    added: int
    duplicates: int
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    batch: str | None = field(default=None, compare=False)

    def summary(self) -> str:
        """One sentence for the UI: ``'Added 3 labels; 1 duplicate, 2 rows with errors.'``."""
        return (
            f"Added {self.added} label{'s' * (self.added != 1)}; {self.duplicates} "
            f"duplicate{'s' * (self.duplicates != 1)}, {self.skipped} "
            f"row{'s' * (self.skipped != 1)} with errors."
        )


def show(value: object) -> str:
    """``repr`` clipped for messages, so a hostile 1 MB cell does not become a 1 MB error."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def now() -> str:
    return format_time(datetime.now(UTC))


def new_batch_id() -> str:
    """An import's id: its UTC time and 8 random hex digits, ``20260102T030405Z-9f8e7d6c``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def content_hash(
    layer: int, feature: int, label: str, notes: str, confidence: str, labeller: str
) -> int:
    """A signed 64-bit hash of a row's content (all but scope and time), stored with the row.

    Only a locator for the duplicate check, which then compares the columns themselves, so a
    collision costs a comparison, never a lost row. Fields are joined with NUL, which
    :func:`check_text` removes from every value.
    """
    data = f"{layer}\x00{feature}\x00{label}\x00{notes}\x00{confidence}\x00{labeller}"
    digest = hashlib.blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def format_time(moment: datetime) -> str:
    """``2026-11-23T10:00:00Z``, or with microseconds when they are not zero."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


def parse_time(value: object) -> str | None:
    """An ISO-8601 time in our canonical form (naive means UTC), or None if it is not one."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return format_time(moment)
    except (ValueError, OverflowError):
        return None


def check_index(name: str, value: object) -> int:
    """A layer or feature number: an int (not bool) or a string of ASCII digits, ``>= 0``.

    A sign is parsed so that ``"-1"`` gets the message about negatives, not about digits.
    """
    number: int | None = None
    if isinstance(value, str):
        digits = value.strip()
        if re.fullmatch(r"[+-]?[0-9]{1,12}", digits):
            number = int(digits)
    elif not isinstance(value, bool):
        try:
            number = operator.index(value)  # type: ignore[arg-type]  # numpy ints too
        except TypeError:
            pass
    if number is None:
        raise LabelError(f"{name} must be a whole number, not {show(value)}")
    if number < 0:
        raise LabelError(f"{name} must be 0 or more, not {number}")
    if number > _MAX_INDEX:
        raise LabelError(f"{name} {number} is too large")
    return number


def check_text(name: str, value: object, limit: int, *, multiline: bool = False) -> str:
    """Stripped text without control characters (newline and tab kept when ``multiline``).

    In one-line fields a run of control characters becomes one space. Nothing else is changed:
    no Unicode normalisation, no HTML escaping.
    """
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise LabelError(f"{name} must be text, not {type(value).__name__}")
    if multiline:
        value = _CONTROL_BUT_TAB_NEWLINE.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))
    else:
        value = _CONTROL.sub(" ", value)
    value = value.strip()
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LabelError(f"{name} contains invalid Unicode (a lone surrogate)") from None
    if len(value) > limit:
        raise LabelError(f"{name} is {len(value)} characters long; the limit is {limit}")
    return value


def check_confidence(value: object) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "medium"
    if isinstance(value, str) and value.strip().lower() in CONFIDENCES:
        return value.strip().lower()
    raise LabelError(f"confidence must be low, medium or high, not {show(value)}")


def casefold(value: object) -> str | None:
    return value.casefold() if isinstance(value, str) else None
