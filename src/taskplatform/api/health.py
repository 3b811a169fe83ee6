"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from taskplatform.exceptions import BackendUnavailable

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process serves requests")
async def healthz() -> dict[str, str]:
    """Answer 200 while the process runs; checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the queue and the store answer",
    responses={503: {"description": "A backend does not answer."}},
)
async def readyz(request: Request) -> JSONResponse:
    """Answer 200 when both backends answer, else 503 naming the failure (never a secret)."""
    try:
        await request.app.state.service.ready()
    except BackendUnavailable as exc:
        return JSONResponse({"status": "unavailable", "detail": exc.detail}, status_code=503)
    return JSONResponse({"status": "ready"})
