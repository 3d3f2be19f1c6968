"""The dashboard's web app (Starlette): one page, a JSON API it polls, the vendored static files, ``/metrics``.

Read-only: every route answers GET (and HEAD) only. With an access token, every request must carry it (``?token=``
once, which sets a cookie and redirects; or ``Authorization: Bearer``, for scrapers and scripts). Without one, only
loopback host names are answered (a page elsewhere cannot reach it through DNS rebinding).

>>> import tempfile
>>> from starlette.testclient import TestClient
>>> client = TestClient(create_app(tempfile.mkdtemp(), None, token="s3cret"))
>>> client.get("/api/overview").status_code, client.get("/api/overview?token=s3cret").status_code
(401, 200)
"""

from __future__ import annotations

import hmac
import html
import json
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from edge.delivery.fleet_db import is_postgres_url, redacted
from simulations.dashboard.data import DashboardData, finite

HERE = Path(__file__).parent
STATIC = HERE / "static"
TEMPLATES = HERE / "templates"
COOKIE = "fedge_ui_token"
LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]
#: the page loads only its own files: no CDN, no inline script
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def _json(payload: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(finite(payload), status_code=status_code, headers={"Cache-Control": "no-store"})


class _TokenGate(BaseHTTPMiddleware):
    """Every request needs the token: as ``?token=`` (then a cookie), a cookie, or ``Authorization: Bearer``."""

    def __init__(self, app, token: str) -> None:
        super().__init__(app)
        self.token = token.encode()

    def _ok(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented.encode(), self.token)

    async def dispatch(self, request: Request, call_next):
        query = request.query_params.get("token")
        auth = request.headers.get("authorization", "")
        bearer = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        if self._ok(query):
            if request.url.path.startswith("/api/") or request.url.path == "/metrics":
                return await call_next(request)
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(params) if params else "")
            response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, query, httponly=True, samesite="strict", path="/")
            return response
        if self._ok(bearer) or self._ok(request.cookies.get(COOKIE)):
            return await call_next(request)
        return PlainTextResponse(
            "this dashboard needs its access token: open it once as /?token=TOKEN (the token given to `fedge ui "
            "--token` or FEDGE_UI_TOKEN), or send 'Authorization: Bearer TOKEN'\n",
            status_code=401,
            headers={"WWW-Authenticate": 'Bearer realm="fedge ui"'},
        )


class _SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next):
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def create_app(
    runs_dir: str | Path = "runs",
    fleet_db: str | Path | None = None,
    token: str | None = None,
    *,
    poll_ms: int = 1500,
) -> Starlette:
    """The dashboard over ``runs_dir`` and ``fleet_db`` (see :class:`~simulations.dashboard.data.DashboardData`).

    With ``token``, every request must carry it; without, only requests addressed to a loopback name are answered.
    ``poll_ms``: how often the page asks for fresh data.
    """
    data = DashboardData(runs_dir, fleet_db)
    page = string.Template((TEMPLATES / "index.html").read_text(encoding="utf-8"))

    async def index(request: Request) -> Response:
        fleet = "the selected run's edge/fleet.db" if fleet_db is None else redacted(str(fleet_db))
        body = page.safe_substitute(
            runs_dir=html.escape(str(runs_dir)),
            fleet_db=html.escape(fleet),
            poll_ms=int(poll_ms),
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    async def overview(request: Request) -> Response:
        return _json(data.overview(request.query_params.get("run")))

    async def runs(request: Request) -> Response:
        return _json({"runs": data.runs()})

    async def run(request: Request) -> Response:
        detail = data.run(request.path_params["run_id"])
        if detail is None:
            return _json({"error": f"no run {request.path_params['run_id']!r} under {runs_dir}"}, 404)
        return _json(detail)

    async def fleet(request: Request) -> Response:
        return _json(data.fleet(data.fleet_db_for(request.query_params.get("run"))))

    async def metrics(request: Request) -> Response:
        from edge.delivery.metrics import CONTENT_TYPE, FleetMetrics, MetricsError, metrics_text

        db = data.fleet_db_for(request.query_params.get("run"))
        if db is None:
            return PlainTextResponse("no fleet database yet: run the demo, or start with --fleet DB\n", 404)

        def rollouts() -> list[dict[str, Any]]:
            if is_postgres_url(db):  # the demo's rollouts.json lies beside its fleet.db; a database has none
                return []
            try:
                payload = json.loads((db.parent / "rollouts.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return []
            return [r for r in payload if isinstance(r, dict)] if isinstance(payload, list) else []

        try:
            text = metrics_text(FleetMetrics(db, rollouts=rollouts))
        except MetricsError as e:
            return PlainTextResponse(f"{e}\n", 503)
        return Response(text, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

    middleware = [Middleware(_SecurityHeaders)]
    if token:
        middleware.append(Middleware(_TokenGate, token=token))
    else:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES))
    routes = [
        Route("/", index),
        Route("/api/overview", overview),
        Route("/api/runs", runs),
        Route("/api/runs/{run_id}", run),
        Route("/api/fleet", fleet),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, middleware=middleware)
