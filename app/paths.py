"""The path a request is routed on, for the checks made before or outside the router."""

from __future__ import annotations

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    """Return the path that the app routes on: `scope["path"]` without the server's root path.

    A server started with a root path (`uvicorn --root-path /sso`) puts it in front of every
    path, and the router strips it, so each check on a path must strip it too.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path
