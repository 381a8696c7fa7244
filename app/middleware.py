"""Middleware that must run outside Starlette's own error handling."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.types import ASGIApp


def wrap_middleware_stack(app: Starlette, middleware: Callable[[ASGIApp], ASGIApp]) -> None:
    """Make `middleware` wrap `app`'s whole middleware stack, ServerErrorMiddleware included.

    `add_middleware` places middleware inside Starlette's ServerErrorMiddleware, which sends
    the 500 for an unhandled exception itself, so that response would bypass it. This wraps
    the stack that Starlette builds on the first request instead. Each later call adds a layer
    outside the earlier ones.
    """
    build_stack = app.build_middleware_stack

    def build_wrapped_stack() -> ASGIApp:
        return middleware(build_stack())

    app.build_middleware_stack = build_wrapped_stack  # type: ignore[method-assign]
