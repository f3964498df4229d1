"""The local web server of ``alignkit label`` and ``alignkit moral-graph``: Starlette routes served by uvicorn.

Why Starlette + uvicorn: both are small, widely used and actively maintained (Encode), need no build step,
and serve static package files and a JSON API in a few lines. Handlers are ``async`` and run on one event
loop, so labels are written one at a time without locks; each write is a small fsynced append.

Safety: the server binds to 127.0.0.1 by default; pages get a strict Content-Security-Policy (scripts and
styles only from the package's own files, no inline code) and put every untrusted text in the DOM with
``textContent``, so a response holding ``<script>`` is shown as text. The API accepts only JSON bodies, which a
foreign web page cannot send cross-origin without a CORS preflight this server never approves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from alignkit.label.session import LabelSession

STATIC = Path(__file__).parent / "static"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response


async def json_body(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ValueError("the API takes application/json bodies")
    try:
        body = json.loads(await request.body())
    except json.JSONDecodeError as error:
        raise ValueError(f"the request body is not JSON ({error.msg})") from None
    if not isinstance(body, dict):
        raise ValueError("the request body must be a JSON object")
    return body


def api(handler: Any) -> Any:
    """A JSON endpoint whose ValueErrors become 400 answers with the message (shown on the page)."""

    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=400)

    return endpoint


def label_routes(session: LabelSession) -> list[Route]:
    async def state(request: Request) -> dict[str, Any]:
        return session.view(session.annotator(request.query_params.get("annotator")))

    async def label(request: Request) -> dict[str, Any]:
        body = await json_body(request)
        annotator = session.annotator(body.get("annotator"))
        agreement = body.get("agreement")
        if agreement is not None and not isinstance(agreement, int | float):
            raise ValueError("agreement must be a number")
        reason = body.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise ValueError("reason must be text")
        session.label(annotator, str(body.get("pair_id")), str(body.get("decision")), reason,
                      None if agreement is None else float(agreement))
        return session.view(annotator)  # answered only once the label is on disk

    async def undo(request: Request) -> dict[str, Any]:
        annotator = session.annotator((await json_body(request)).get("annotator"))
        removed = session.undo(annotator)
        return {**session.view(annotator), "undone": removed is not None}

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "label.html")

    return [Route("/", page), Route("/api/label/state", api(state)),
            Route("/api/label/decide", api(label), methods=["POST"]),
            Route("/api/label/undo", api(undo), methods=["POST"])]


def build_app(label: LabelSession | None = None, moral: Any = None) -> Starlette:
    """The app serving the labelling page at ``/`` and/or the Moral Graph page at ``/moral``."""
    routes: list[Any] = []
    if label is not None:
        routes += label_routes(label)
    if moral is not None:
        from alignkit.label.moral_api import moral_routes

        routes += moral_routes(moral)
        if label is None:
            routes.append(Route("/", lambda request: RedirectResponse("/moral")))
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])


def serve(app: Starlette, host: str, port: int, path: str, log: Any = print) -> None:
    """Serve until interrupted, after printing the address."""
    import uvicorn

    log(f"serving on http://{host}:{port}{path}  (Ctrl+C to stop)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
