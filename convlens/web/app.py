"""The explorer's ASGI app: ``create_app(run) -> Starlette``; ``serve(run, host, port)`` runs it on uvicorn.

Every page is served as HTML and as its JSON twin under ``/api`` (see :mod:`convlens.web.pages`).
Links are relative (``rel`` of :mod:`convlens.web.responses`: ``"./"`` on ``/``, ``"../"`` one level down,
...), so the app works under any proxy prefix or notebook port forwarding without being told the prefix;
``--root-path`` is passed to uvicorn for the ASGI ``root_path`` and is otherwise not needed. Static files
come from the package's ``static/`` folder only (Starlette's ``StaticFiles`` refuses paths outside it);
every other file is served by an id that a page function checks against what the run has.
"""
from __future__ import annotations

import importlib
import inspect
import os
import warnings
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import ConvLensError, LayerNotFoundError
from .errors import NotFound, WebError
from .explorer import Explorer
from .pages import MODULES, PAGES, RAW
from .responses import JSON, rel, to_json

HERE = Path(__file__).parent
LOCAL = ("127.0.0.1", "localhost", "::1")


def create_app(run, *, data: str | None = None) -> Starlette:
    """The explorer of ``run`` (a run directory or a Run). ``data``: the images to show (default: the run's
    test split)."""
    for module in MODULES:
        importlib.import_module(f"{__package__}.pages.{module}")
    ex = run if isinstance(run, Explorer) else Explorer(run, data=data)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    env.filters["json"] = to_json

    def html(request: Request, template: str, page: dict, status: int = 200) -> HTMLResponse:
        text = env.get_template(template).render(page=page, rel=rel(request), run=ex.name, request=request)
        return HTMLResponse(text, status_code=status)

    def endpoints(p):
        def as_html(request: Request):
            return html(request, p.template, p.fn(ex, request))

        def as_json(request: Request):
            return JSON(p.fn(ex, request))
        return as_html, as_json

    routes = []
    for p in PAGES:
        as_html, as_json = endpoints(p)
        routes += [Route(p.path, as_html, name=p.name), Route("/api" + p.path if p.path != "/" else "/api",
                                                              as_json, name=f"api_{p.name}")]

    def raw_endpoint(fn):
        if inspect.iscoroutinefunction(fn):  # a raw route that reads the request body as it streams (uploads)
            async def endpoint(request):
                return await fn(ex, request)
            return endpoint
        return lambda request: fn(ex, request)

    for r in RAW:
        routes.append(Route(r.path, raw_endpoint(r.fn), name=r.name, methods=list(r.methods)))

    def job_status(request: Request):
        job = ex.jobs.get(request.path_params["id"])
        if job is None:
            raise NotFound(f"no job {request.path_params['id']!r} (jobs are kept while the server runs)")
        return JSON(job.to_dict())

    def jobs(request: Request):
        return JSON({"jobs": [j.to_dict() for j in ex.jobs.all()]})

    routes += [Route("/api/jobs/{id}", job_status, name="job"), Route("/api/jobs", jobs, name="jobs"),
               Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]

    def error(request: Request, exc: Exception):
        if isinstance(exc, HTTPException):
            exc = (NotFound(f"no page {request.url.path!r}") if exc.status_code == 404 else
                   WebError(str(exc.detail)) if exc.status_code < 500 else exc)
        elif isinstance(exc, LayerNotFoundError):
            exc = NotFound(str(exc))
        elif isinstance(exc, ConvLensError):
            exc = WebError(str(exc))
        if not isinstance(exc, WebError):
            exc.status_code = getattr(exc, "status_code", 500)
            return Response(str(exc), status_code=exc.status_code)
        path = request.scope["path"][len(request.scope.get("root_path", "")):]
        if path.startswith("/api/") or path == "/api":
            return JSON(exc.to_dict(), status_code=exc.status)
        return html(request, "error.html", exc.to_dict()["error"], status=exc.status)

    app = Starlette(routes=routes, exception_handlers={HTTPException: error, WebError: error,
                                                       ConvLensError: error})
    app.state.explorer = ex
    return app


def serve(run, *, host: str = "127.0.0.1", port: int = 8000, data: str | None = None, root_path: str = "",
          log_level: str = "warning") -> None:
    """Serve the explorer of ``run`` until interrupted (uvicorn)."""
    import uvicorn

    if host not in LOCAL:
        warnings.warn(f"the explorer is bound to {host}, reachable from other machines: it serves your model, "
                      "its data and uploads to anyone who can connect, without authentication", stacklevel=2)
    app = create_app(run, data=data)
    uvicorn.run(app, host=host, port=port, root_path=root_path, log_level=log_level)
    busy = [job for job in app.state.explorer.jobs.all() if job.state in ("queued", "running")]
    if busy:  # a job thread inside torch cannot be stopped cleanly at interpreter exit: leave at once
        print(f"stopped; {len(busy)} unfinished job(s) abandoned ({', '.join(j.title for j in busy)}): "
              "nothing of theirs was saved, the next visit starts them again", flush=True)
        os._exit(0)
