"""Operations: liveness and readiness probes, and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from taskplatform.api.openapi import problems
from taskplatform.api.problems import error_response
from taskplatform.exceptions import BackendUnavailable
from taskplatform.metrics import CONTENT_TYPE

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    summary="Liveness: the process serves requests",
    responses={200: {"content": {"application/json": {"example": {"status": "ok"}}}}},
)
async def healthz() -> dict[str, str]:
    """Answer 200 while the process runs; checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Readiness: the queue and the store answer",
    responses={
        200: {"content": {"application/json": {"example": {"status": "ready"}}}},
        **problems(BackendUnavailable),
    },
)
async def readyz(request: Request) -> Response:
    """Answer 200 when both backends answer, else 503 ``backend_unavailable`` naming the failure
    (never a secret)."""
    try:
        await request.app.state.service.ready()
    except BackendUnavailable as exc:
        return error_response(exc)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    summary="Prometheus metrics: tasks created, dequeued and finished, callbacks, queue depths",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text format (see the README for every metric).",
            "content": {
                CONTENT_TYPE: {
                    "example": (
                        "# TYPE taskplatform_tasks_created_total counter\n"
                        'taskplatform_tasks_created_total{queue="default"} 42.0\n'
                    )
                }
            },
        }
    },
)
async def metrics(request: Request) -> Response:
    """Answer this server's metrics; the queue gauges are read from the backends now."""
    body = await request.app.state.service.metrics_exposition()
    return Response(body, media_type=CONTENT_TYPE)
