"""Per-call hooks on a shared model: each call sees only its own hooks, even from many threads.

transformer-lens hooks live on the model's modules, so a hook added by one request fires for every
request running at the same time, and ``run_with_hooks`` / ``reset_hooks`` of one request remove
another's. The app serves many users from one model, so instead each hook point gets one permanent
dispatcher, installed once, and what it runs is looked up in a :class:`contextvars.ContextVar`.
A call sets that variable around its own forward pass (:func:`routed`); a forward pass with no
route set runs the model unchanged.

The variable is set and reset around one forward pass, never across a ``yield``: Gradio runs each
step of a streaming handler in whatever worker thread is free, with a copy of the context.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

HookFn = Callable[[Any, Any], Any]
"""``fn(activation, hook) -> new activation or None``, transformer-lens's hook signature."""

_ROUTE: ContextVar[Mapping[str, HookFn] | None] = ContextVar("gse_hook_route", default=None)
_INSTALL_LOCK = threading.Lock()
_INSTALLED_ATTR = "_gse_routed_hooks"


def _dispatch(act: Any, hook: Any) -> Any:
    route = _ROUTE.get()
    if not route:
        return None
    fn = route.get(hook.name)
    return None if fn is None else fn(act, hook)


def install(model: Any, names: list[str]) -> None:
    """Add the permanent dispatcher to each hook point in ``names`` (once per model and name)."""
    with _INSTALL_LOCK:
        done: set[str] = getattr(model, _INSTALLED_ATTR, set())
        for name in names:
            if name not in done:
                model.add_perma_hook(name, _dispatch)
                done.add(name)
        setattr(model, _INSTALLED_ATTR, done)


@contextmanager
def routed(model: Any, hooks: Mapping[str, HookFn]) -> Iterator[None]:
    """Run ``hooks`` (``{hook_name: fn}``) on forward passes of ``model`` inside this block only.

    Only this thread's (context's) forward passes see them. Hook points are installed on first use.
    """
    install(model, list(hooks))
    token = _ROUTE.set(dict(hooks))
    try:
        yield
    finally:
        _ROUTE.reset(token)
