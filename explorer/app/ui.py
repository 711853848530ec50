"""The Gradio-facing side of handlers: a refused or failed action keeps the screen.

On the page, a :class:`UserError` becomes a warning toast (its message) and anything unexpected
is logged with its traceback on the server while the user sees one line saying so; either way
the handler's outputs are left as they were (``gr.skip()``), so no output is wiped or covered by
Gradio's red "Error" badge. An API call (no component triggered it) gets the same message as an
error instead, as a client expects. Toasts and status lines carry escaped text only (Gradio
renders both as HTML, so a user's ``<a href=…>`` in a message would otherwise become a live link).
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from explorer.app.context import UserError

logger = logging.getLogger(__name__)

FAILED = "something went wrong on the server (it is logged); try again or with other input"
_EVENT = "gse_event"  # the parameter :func:`ui` adds: Gradio passes the call's event data in it


def _message(fn: Callable[..., Any], err: Exception) -> str:
    """What a user reads for ``err`` (plain text): its message if it is theirs, else one line."""
    if isinstance(err, gr.Error):
        return str(err.message)
    if isinstance(err, UserError):
        return str(err)
    logger.error("unexpected error in %s", fn.__name__, exc_info=err)
    return FAILED


def warn(message: str) -> None:
    """A warning toast whose text stays text (Gradio renders toasts as HTML)."""
    gr.Warning(html.escape(message))


def status(message: str) -> str:
    """A status line's HTML: the message escaped, so nothing in it becomes markup (the one path
    for every status line; its component is a :func:`status_box`)."""
    return f'<div class="gse-status">{html.escape(message)}</div>' if message else ""


status_line = status  # for modules where ``status`` names a component


def status_box(elem_id: str | None = None) -> gr.HTML:
    """The component a status line goes to (HTML that :func:`status` fills: never Markdown,
    which would turn a user's ``[text](url)`` into a link)."""
    return gr.HTML(elem_id=elem_id)


def from_page(event: Any) -> bool:
    """Whether a call came from the page: a component triggered it (an API call names none)."""
    return isinstance(event, gr.EventData) and event.target is not None


def refuse(fn: Callable[..., Any], err: Exception, event: Any) -> Any:
    """The answer to a refused or failed call: on the page a toast and every output kept
    (``gr.skip()``); through the API the message as an error."""
    message = _message(fn, err)
    if from_page(event):
        warn(message)
        return gr.skip()
    raise gr.Error(html.escape(message), print_exception=False) from None


def _split(args: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """The handler's own arguments and the event data Gradio appended (last, if any)."""
    if args and type(args[-1]) is gr.EventData:
        return args[:-1], args[-1]
    return args, None


def _with_event(fn: Callable[..., Any], wrapper: Callable[..., Any]) -> Callable[..., Any]:
    """``wrapper`` with ``fn``'s signature plus a last parameter annotated ``gr.EventData``:
    Gradio fills it (after the inputs and any request or login), never shows it in the API."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())
    if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
        raise TypeError(f"{fn.__name__}: an event's handler names each of its parameters")
    extra = inspect.Parameter(
        _EVENT, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.EventData
    )
    wrapper.__signature__ = sig.replace(parameters=[*params, extra])  # type: ignore[attr-defined]
    wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), _EVENT: gr.EventData}
    return wrapper


def ui(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` for an event: a :class:`UserError` or an unexpected error keeps the screen (see the
    module). ``fn``'s name and parameters are kept: they are the API endpoint's."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        own, event = _split(args)
        event = kwargs.pop(_EVENT, event)
        try:
            return fn(*own, **kwargs)
        except Exception as err:
            return refuse(fn, err, event)

    return _with_event(fn, wrapper)


# Clicks a button once its tab is on the page (Gradio mounts a tab's components when it is first
# shown, so right after a tab switch the button may not exist yet: retry for up to 10 s).
_CLICK = """const gseClick = (id, tries = 100) => {
  const b = document.querySelector(id);
  if (b) { b.click(); } else if (tries > 0) { setTimeout(() => gseClick(id, tries - 1), 100); }
};"""


def click_js(selector: str) -> str:
    """An event's ``js``: click the button ``selector`` as a user would (see ``_CLICK``)."""
    return "() => {" + _CLICK + f" gseClick({selector!r}); return []; }}"
