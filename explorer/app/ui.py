"""The Gradio-facing wrappers of handlers: a :class:`UserError` becomes a message for the user
(``gr.Error``), anything unexpected is logged with its traceback on the server and the user sees
one line saying so."""

from __future__ import annotations

import functools
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
        return gr.Error(str(err), print_exception=False)
    logger.error("unexpected error in %s", fn.__name__, exc_info=err)
    return gr.Error(
        "something went wrong on the server (it is logged); try again or with other input",
        print_exception=False,
    )


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
