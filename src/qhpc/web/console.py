"""The web console at ``/dashboard``: server-rendered pages, live panels, JSON, assets.

Pages are rendered here with Jinja2 (autoescape on for ``.html``) from the view
models of :mod:`qhpc.web.views`; a small script (``static/console.js``) polls
``/dashboard/api/...`` every second and swaps in each panel the server rendered
again, so a page follows the broker without a reload and without a second way
of drawing it. Every asset comes from this package (no external network, no
build step). Sign-in, the cookie and CSRF are :mod:`qhpc.web.auth`'s.

The app mounts this with :func:`mount_console` (``api/app.py``); the routes find the
broker on ``app.state`` as the REST routes do.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib import resources as package_files
from typing import Annotated, Any, cast
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from qhpc.broker import Broker
from qhpc.security import AuthError, Role
from qhpc.web import plots, views
from qhpc.web.auth import (
    CONSOLE_PATH,
    COOKIE,
    CSRF_FIELD,
    LOGIN_SECONDS,
    CrossSiteRequest,
    Login,
    Logins,
    check_csrf,
    check_origin,
    cookie_header,
)

#: the largest sign-in or action form read (a token is ~50 bytes)
FORM_LIMIT = 8192
#: the utilisation timeline: its span, its bars, and how long one drawing is reused
TIMELINE_SECONDS = 3600.0
TIMELINE_BUCKETS = 30
TIMELINE_REUSE_SECONDS = 5.0
#: every console response: no framing, no sniffing, scripts and styles from here only
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_STATIC = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
#: the overview's panels, each a template under panels/
PANELS = ("cards", "queues", "timeline", "usage", "sessions", "programs", "jobs")


class _Hardened(APIRoute):
    """A route whose every response carries :data:`SECURITY_HEADERS` and is not cached."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def hardened(request: Request) -> Response:
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            response.headers.setdefault("Cache-Control", "no-store")
            return response

        return hardened


router = APIRouter(prefix=CONSOLE_PATH, include_in_schema=False, route_class=_Hardened)


# -- the console's state and its rendering ------------------------------------------------


@dataclass
class _Drawing:
    at: float
    series: dict[str, list[float]]


class ConsoleState:
    """What the console keeps per app: the logins and the last utilisation drawing."""

    def __init__(self, broker: Broker) -> None:
        self.logins = Logins(broker.clock)
        self._timeline: _Drawing | None = None

    def timeline(self, broker: Broker) -> dict[str, list[float]]:
        """Busy fractions per resource; recomputed from usage at most every few seconds
        (every open page asks each second, the answer is the same for everyone)."""
        drawing = self._timeline
        if drawing is None or time.monotonic() - drawing.at > TIMELINE_REUSE_SECONDS:
            now = broker.clock()
            records = broker.records.usage(since=now - TIMELINE_SECONDS)
            series = views.utilisation(
                records, broker.resources.names(), now, TIMELINE_SECONDS, TIMELINE_BUCKETS
            )
            drawing = self._timeline = _Drawing(time.monotonic(), series)
        return drawing.series


def mount_console(app: FastAPI) -> None:
    """Serve the console under ``/dashboard`` in ``app`` (whose state holds the broker)."""
    app.state.console = ConsoleState(cast(Broker, app.state.broker))
    app.include_router(router)


def _when(at: float | None) -> str:
    if at is None:
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    value = max(value, 0.0)
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


_templates = Environment(
    loader=PackageLoader("qhpc.web", "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(
    when=_when, seconds=_seconds, percent=lambda f: f"{100 * f:.0f} %", short=lambda s: s[:8]
)


def _html(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("login", None)
    return HTMLResponse(_templates.get_template(template).render(**context), status_code=status)


def _error(status: int, message: str, login: Login | None = None) -> HTMLResponse:
    return _html("error.html", status, message=message, code=status, login=login)


def _panels(overview: views.Overview, login: Login) -> dict[str, str]:
    context = _panel_context(overview, login)
    return {name: _render(f"panels/{name}.html", context) for name in PANELS}


def _render(template: str, context: dict[str, Any]) -> str:
    return _templates.get_template(template).render(**context)


def _panel_context(overview: views.Overview, login: Login) -> dict[str, Any]:
    timeline = plots.utilisation_timeline(overview.timeline, overview.timeline_bucket_seconds)
    return {
        "o": overview, "csrf": login.csrf, "login": login, "timeline_svg": timeline,
        "usage_svg": plots.usage_against_share(overview.accounts),
    }  # fmt: skip


def _broker(request: Request) -> Broker:
    return cast(Broker, request.app.state.broker)


def _state(request: Request) -> ConsoleState:
    return cast(ConsoleState, request.app.state.console)


def _login(request: Request) -> Login | None:
    return _state(request).logins.current(_broker(request), request.cookies.get(COOKIE))


def _to_login() -> RedirectResponse:
    return RedirectResponse(f"{CONSOLE_PATH}/login", status_code=303)


def _unauthorised() -> JSONResponse:
    return JSONResponse({"detail": "not signed in to the console (or the login ended)"}, 401)


def _overview(request: Request, login: Login) -> views.Overview:
    broker = _broker(request)
    timeline = _state(request).timeline(broker)
    bucket = TIMELINE_SECONDS / TIMELINE_BUCKETS
    return views.overview(broker, login.principal, timeline, bucket)


async def _form(request: Request) -> dict[str, str]:
    """A small url-encoded form (first value of each field); ValueError if it is not one."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > FORM_LIMIT):
        raise ValueError("the form is too large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_LIMIT:
            raise ValueError("the form is too large")
    try:
        text = body.decode("ascii")
        fields = parse_qs(text, keep_blank_values=True, max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("the form could not be read") from None
    return {name: values[0] for name, values in fields.items()}


# -- sign-in and sign-out -------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, bye: bool = False) -> Response:
    if _login(request) is not None:
        return RedirectResponse(CONSOLE_PATH, status_code=303)
    return _html("login.html", message="You are signed out." if bye else None, error=None)


@router.post("/login")
async def sign_in(request: Request) -> Response:
    try:
        check_origin(request)
    except CrossSiteRequest as refused:
        return _html("login.html", 403, message=None, error=f"Sign-in refused: {refused}.")
    try:
        form = await _form(request)
    except ValueError as unreadable:
        return _html("login.html", 400, message=None, error=f"Sign-in refused: {unreadable}.")
    secret = form.get("token", "").strip()
    if not secret:
        return _html("login.html", 400, message=None, error="Paste your qhpc token to sign in.")
    try:
        cookie, login = await run_in_threadpool(
            _state(request).logins.sign_in, _broker(request), secret
        )
    except AuthError as refused:
        status = 403 if "session tokens" in str(refused) else 401
        return _html("login.html", status, message=None, error=f"Sign-in refused: {refused}.")
    previous = request.cookies.get(COOKIE)
    if previous is not None:  # signing in again ends the login this browser had
        _state(request).logins.end(previous)
    response = RedirectResponse(CONSOLE_PATH, status_code=303)
    max_age = int(max(min(login.expires_at - login.created_at, LOGIN_SECONDS), 1))
    response.headers.append("set-cookie", cookie_header(request, cookie, max_age))
    return response


@router.post("/logout")
async def sign_out(request: Request) -> Response:
    login = await run_in_threadpool(_login, request)
    refused = await _refuse_post(request, login)
    if refused is not None:
        return refused
    cookie = request.cookies.get(COOKIE)
    if cookie is not None:
        _state(request).logins.end(cookie)
    response = RedirectResponse(f"{CONSOLE_PATH}/login?bye=true", status_code=303)
    response.headers.append("set-cookie", cookie_header(request, "", 0))
    return response


async def _refuse_post(request: Request, login: Login | None) -> Response | None:
    """The 403 for a POST that is not the console's own (origin, then CSRF token)."""
    if login is None:
        return _error(403, "Sign in first: this action needs a console login.")
    try:
        check_origin(request)
        check_csrf(login, request, await _form(request))
    except CrossSiteRequest as refused:
        return _error(403, f"Refused: {refused}.", login)
    except ValueError as unreadable:
        return _error(400, f"Refused: {unreadable}.", login)
    return None


# -- pages ----------------------------------------------------------------------------------


@router.get("")
def overview_page(request: Request) -> Response:
    login = _login(request)
    if login is None:
        return _to_login()
    overview = _overview(request, login)
    context = _panel_context(overview, login)
    return _html("overview.html", **context, panels=PANELS)


@router.get("/jobs/{job_id}")
def job_page(request: Request, job_id: str) -> Response:
    login = _login(request)
    if login is None:
        return _to_login()
    broker = _broker(request)
    job = views.visible_job(broker, login.principal, job_id) if _ID.match(job_id) else None
    if job is None:  # another's job reads exactly like a missing one
        return _error(404, "No such job.", login)
    detail = views.job_detail(broker, job)
    return _html("job.html", d=detail, login=login, csrf=login.csrf)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Response:
    login = await run_in_threadpool(_login, request)
    refused = await _refuse_post(request, login)
    if refused is not None:
        return refused
    assert login is not None
    broker = _broker(request)
    job = None
    if _ID.match(job_id):
        job = await run_in_threadpool(views.visible_job, broker, login.principal, job_id)
    if job is None:
        return _error(404, "No such job.", login)
    if job.state in ("queued", "running"):
        await run_in_threadpool(broker.cancel, job_id)
    return RedirectResponse(f"{CONSOLE_PATH}/jobs/{job.job_id}", status_code=303)


@router.get("/accounts")
def accounts_page(request: Request) -> Response:
    login = _login(request)
    if login is None:
        return _to_login()
    if login.principal.role is not Role.ADMIN:
        return _error(403, "This page is for admins.", login)
    broker = _broker(request)
    rows = views.accounts(broker, login.principal, broker.clock())
    return _html(
        "accounts.html", rows=rows, usage_svg=plots.usage_against_share(rows), login=login,
        csrf=login.csrf,
    )  # fmt: skip


# -- JSON: what the pages poll ------------------------------------------------------------


@router.get("/api/overview")
def overview_json(request: Request) -> Response:
    login = _login(request)
    if login is None:
        return _unauthorised()
    overview = _overview(request, login)
    return JSONResponse({**views.as_json(overview), "panels": _panels(overview, login)})


@router.get("/api/jobs/{job_id}")
def job_json(request: Request, job_id: str) -> Response:
    login = _login(request)
    if login is None:
        return _unauthorised()
    broker = _broker(request)
    job = views.visible_job(broker, login.principal, job_id) if _ID.match(job_id) else None
    if job is None:
        return JSONResponse({"detail": "no such job"}, 404)
    detail = views.job_detail(broker, job)
    html = _render("panels/job.html", {"d": detail, "csrf": login.csrf})
    return JSONResponse({**views.as_json(detail), "panels": {"job": html}})


_Offset = Annotated[int, Query(ge=0, le=2**40)]


@router.get("/api/jobs/{job_id}/logs")
def logs_json(
    request: Request, job_id: str, stdout_offset: _Offset = 0, stderr_offset: _Offset = 0
) -> Response:
    login = _login(request)
    if login is None:
        return _unauthorised()
    broker = _broker(request)
    job = views.visible_job(broker, login.principal, job_id) if _ID.match(job_id) else None
    if job is None:
        return JSONResponse({"detail": "no such job"}, 404)
    if job.kind != "hybrid":
        return JSONResponse({"detail": "only hybrid jobs have logs"}, 409)
    logs = broker.programs.logs(job_id, stdout_offset, stderr_offset)
    return JSONResponse(
        {
            "stdout": logs.stdout, "stderr": logs.stderr, "stdout_offset": logs.stdout_offset,
            "stderr_offset": logs.stderr_offset, "final": logs.final,
        }
    )  # fmt: skip


@router.get("/api/accounts")
def accounts_json(request: Request) -> Response:
    login = _login(request)
    if login is None:
        return _unauthorised()
    if login.principal.role is not Role.ADMIN:
        return JSONResponse({"detail": "this view is for admins"}, 403)
    broker = _broker(request)
    rows = views.accounts(broker, login.principal, broker.clock())
    return JSONResponse({"accounts": [views.as_json(r) for r in rows]})


# -- assets -------------------------------------------------------------------------------


@router.get("/static/{name}")
def asset(name: str) -> Response:
    media = _STATIC.get(name)
    if media is None:
        return Response("no such file", 404, media_type="text/plain")
    data = package_files.files("qhpc.web").joinpath("static", name).read_bytes()
    return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})


__all__ = ["CSRF_FIELD", "PANELS", "ConsoleState", "mount_console", "router"]
