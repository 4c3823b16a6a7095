"""The web app (FastAPI) and `serve`: the page's files and its JSON API on a local port."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import CnnlabError, ImageError, RunError
from .explorer import Explorer, request_options
from .images import MAX_BODY_BYTES

try:    # the optional `explore` extra; FastAPI resolves the (string) annotations in this module
    from fastapi import Request
except ImportError:                     # pragma: no cover - `cnnlab explore` says how to install
    Request = None  # type: ignore[misc,assignment]

if TYPE_CHECKING:
    from fastapi import FastAPI, Response

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8179                     # EE5179; `--port 0` picks a free one
MAX_JSON_BYTES = 12 * 1024 * 1024       # a canvas/photo data URL is base64: 4/3 of the bytes
STATIC_FILES = {"explore.html": "text/html; charset=utf-8",
                "explore.js": "text/javascript; charset=utf-8",
                "explore.css": "text/css; charset=utf-8"}
INSTALL_HINT = "pip install 'cnnlab[explore]'"


# ---------------------------------------------------------------------------------------------
# The web app
# ---------------------------------------------------------------------------------------------

class _TooLarge(Exception):
    pass


async def _read_body(request, limit: int) -> bytes:
    """The request body, refused as soon as it is known to exceed `limit` (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def create_app(runs: list[Path], data_dir: str | Path | None = None,
               allowed_hosts: tuple[str, ...] | None = None) -> FastAPI:
    """The FastAPI app serving the page and its JSON API for one or two runs.

    `allowed_hosts`: Host header names to answer (any port); `serve` passes the loopback names
    when it binds 127.0.0.1, so a web page that rebinds its own DNS name to 127.0.0.1 gets no
    answer. Cross-site POSTs (an Origin header naming another site) are refused either way."""
    try:
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
    except ImportError:
        raise CnnlabError(f"the explorer needs its optional dependencies: {INSTALL_HINT}") from None

    explorer = Explorer(runs, data_dir=data_dir)
    explorer.info()                 # layer tables and filters once, and any API mismatch at start
    explorer.preload_test_set()
    app = FastAPI(title="cnnlab explore", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.explorer = explorer

    def error(status: int, msg: str) -> JSONResponse:
        return JSONResponse({"error": msg}, status_code=status)

    @app.middleware("http")
    async def same_site_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        host = request.headers.get("host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if allowed_hosts is not None and name not in allowed_hosts:
            return error(400, f"unexpected Host {host!r}: open the explorer at the address it printed")
        origin = request.headers.get("origin")
        if request.method == "POST" and origin is not None and origin.split("://", 1)[-1] != host:
            return error(403, "cross-site request refused")
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(_TooLarge)
    async def too_large(request: Request, exc: _TooLarge) -> JSONResponse:
        return error(413, f"the upload is larger than {MAX_BODY_BYTES // (1024 * 1024)} MiB; "
                          f"choose a smaller image")

    @app.exception_handler(CnnlabError)
    async def user_error(request: Request, exc: CnnlabError) -> JSONResponse:
        return error(400, str(exc))

    async def json_body(request: Request) -> dict:
        raw = await _read_body(request, MAX_JSON_BYTES)
        from ..schema import parse_json
        # depth-limited before json.loads (which would recurse: '[' * 200000 → RecursionError → 500)
        obj = parse_json(raw or b"{}", "the request body", ImageError, max_bytes=MAX_JSON_BYTES)
        if not isinstance(obj, dict):
            raise ImageError("the request body must be a JSON object")
        return obj

    @app.get("/", response_model=None)
    async def page() -> Response:
        return _static_response("explore.html", Response)

    @app.get("/static/{name}", response_model=None)
    async def static(name: str) -> Response:
        if name not in STATIC_FILES:            # a fixed list: no path from the browser is opened
            return error(404, "not found")
        return _static_response(name, Response)

    @app.get("/api/info", response_model=None)
    async def api_info() -> dict[str, Any]:
        return explorer.request("GET", "/api/info", None)

    @app.post("/api/analyze", response_model=None)
    async def api_analyze(request: Request) -> dict[str, Any]:
        req = await json_body(request)
        request_options(req)                    # a bad option is refused before any work
        return await run_in_threadpool(explorer.request, "POST", "/api/analyze", req)

    @app.post("/api/upload", response_model=None)
    async def api_upload(request: Request, target: int | None = None, patch: int = 3) -> dict[str, Any]:
        data = await _read_body(request, MAX_BODY_BYTES)
        if not data:
            raise ImageError("the upload is empty; choose an image file")

        def work() -> dict[str, Any]:
            u8 = explorer.image_from_bytes(data)
            return explorer.analyze(u8, {"kind": "upload"}, target, patch)
        return await run_in_threadpool(work)

    # Beliefs take seconds to minutes the first time: a POST (Origin-checked), never a GET.
    @app.post("/api/beliefs/{index}", response_model=None)
    async def api_beliefs(request: Request, index: int) -> dict[str, Any]:
        await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", f"/api/beliefs/{index}", {})

    # Measured on the first request when the cache does not hold it yet (seconds): a POST.
    @app.post("/api/calibration", response_model=None)
    async def api_calibration(request: Request) -> dict[str, Any]:
        await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", "/api/calibration", {})

    @app.post("/api/attack", response_model=None)
    async def api_attack(request: Request) -> dict[str, Any]:
        req = await json_body(request)
        return await run_in_threadpool(explorer.request, "POST", "/api/attack", req)

    return app


def _static_response(name: str, Response):
    body = files("cnnlab").joinpath("static").joinpath(name).read_bytes()
    return Response(body, media_type=STATIC_FILES[name], headers={"Cache-Control": "no-cache"})


# Everything from this server; images only from it or inline data URLs. The CSP makes the
# "no outside requests" promise hold even if a future edit slipped a CDN link in.
# frame-ancestors 'none' (and X-Frame-Options for older browsers): no other page may frame the
# explorer and click its buttons for the user. Sent on every response, the API's included.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Frame-Options": "DENY",
                    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "Cross-Origin-Resource-Policy": "same-origin"}


def app_fragment() -> str:
    """The page's markup without the standalone document around it (the notebook widget mounts
    this same fragment)."""
    html = files("cnnlab").joinpath("static").joinpath("explore.html").read_text(encoding="utf-8")
    start, end = html.index("<!-- app -->") + len("<!-- app -->"), html.index("<!-- /app -->")
    return html[start:end].strip()


def serve(runs: list[Path], host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          data_dir: str | Path | None = None, open_browser: bool = False,
          log: Callable[[str], object] = lambda s: print(s, file=sys.stderr)) -> None:
    """Serve the explorer until Ctrl-C. `port=0` picks a free port; the URL is printed on stdout."""
    try:
        import uvicorn
    except ImportError:
        raise CnnlabError(f"the explorer needs its optional dependencies: {INSTALL_HINT}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):    # the default binds this machine only
        log(f"warning: serving on {host}: anyone who can reach this address can use the explorer "
            f"(it reads no files the browser names, but it runs the model for them); the default "
            f"127.0.0.1 keeps it on this machine")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    app = create_app(runs, data_dir=data_dir, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise RunError(f"cannot listen on {host}:{port} ({e.strerror or e}); pass another --port "
                       f"(0 picks a free one)") from None
    sock.listen(64)
    sock.setblocking(False)
    actual = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{actual}/"
    print(f"cnnlab explore: serving {', '.join(v.label for v in app.state.explorer.views)} at {url} "
          f"(Ctrl-C to stop)", flush=True)
    if open_browser:
        import webbrowser
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    server_config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(server_config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()

