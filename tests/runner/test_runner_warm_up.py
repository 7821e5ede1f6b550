"""The warm-up request a runner sends its app before it is ready runs no route of the app."""

from __future__ import annotations

from typing import Any

import fastapi

from kubefal_runner import serving


async def test_the_warm_up_goes_through_the_app_but_reaches_no_route() -> None:
    app = fastapi.FastAPI()
    routed: list[str] = []
    seen: list[str] = []

    @app.api_route("/{anything:path}", methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"])
    async def catch_all(anything: str) -> dict[str, str]:
        routed.append(anything)
        return {"ok": anything}

    @app.middleware("http")
    async def record(request: fastapi.Request, call_next: Any) -> Any:
        response = await call_next(request)
        seen.append(f"{request.method} {response.status_code}")
        return response

    await serving.warm_up(app)

    assert seen == [f"{serving.WARM_UP_METHOD} 405"]
    assert routed == []


async def test_a_warm_up_that_fails_does_not_fail_the_start() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("the app cannot answer yet")

    await serving.warm_up(broken)  # returns: the failure is only logged
