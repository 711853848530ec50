"""The Gradio-facing side of handlers: a :class:`UserError` becomes a message for the user
(``gr.Error``), anything unexpected is logged with its traceback on the server and the user sees
one line saying so; toasts and status lines carry escaped text only (Gradio renders both as
HTML, so a user's ``<a href=…>`` in a message would otherwise become a live link)."""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable
from typing import Any

import gradio as gr

from explorer.app.context import UserError

logger = logging.getLogger(__name__)


def _as_message(fn: Callable[..., Any], err: Exception) -> Exception:
    """The ``gr.Error`` a user sees for ``err``: its message if it is theirs, else one line."""
    if isinstance(err, gr.Error):
        return err
    if isinstance(err, UserError):
        return gr.Error(html.escape(str(err)), print_exception=False)
    logger.error("unexpected error in %s", fn.__name__, exc_info=err)
    return gr.Error(
        "something went wrong on the server (it is logged); try again or with other input",
        print_exception=False,
    )


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


def ui(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show :class:`UserError` as a message and unexpected errors as one line (logged in full).

    The wrapper keeps ``fn``'s name, which is the API endpoint's name for an event given no
    ``api_name``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise _as_message(fn, err) from None

    return wrapper


def ui_stream(fn: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`ui` for a generator (a streaming handler)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            yield from fn(*args, **kwargs)
        except Exception as err:
            raise _as_message(fn, err) from None

    return wrapper
