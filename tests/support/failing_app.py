"""An ASGI app whose startup fails, as an app whose database went away would: a uvicorn worker
serving it ends with uvicorn's STARTUP_FAILURE (3)."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Fail every lifespan startup; there is nothing else to serve."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
