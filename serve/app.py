"""The HTTP API over a classifier: ``create_app(classifier, settings)`` -> a FastAPI app.

The app owns everything it serves with: its lifespan loads the model once (in the server process, or
in each Ray Serve replica), starts the batcher, and closes both at shutdown; nothing lives at module
level. uvicorn (``etalage serve``) or Ray Serve (``etalage serve --engine ray``) runs it; tests call it
through ``fastapi.testclient`` with no server.

    from etalage.serve import ModelSource, ServeSettings, create_app
    app = create_app(ModelSource(fusion="work/fusion"), ServeSettings())
    # uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from etalage.errors import DataError, EtalageError
from etalage.serve.batching import Batcher, ClassifierFailed, Overloaded
from etalage.serve.forms import BadRequest, check_complete, check_pictures, products_of_form, read_listing
from etalage.serve.model import Classifier, Proposal
from etalage.serve.page import page_html
from etalage.serve.settings import MAX_PICTURES, ServeSettings, size_text

log = logging.getLogger(__name__)


class NotReady(Exception):
    """The models are still loading (or failed to): 503."""


class Service:
    """What one app serves with: the loaded classifier, its batcher, the picture-check slots."""

    def __init__(self, load: Callable[[], Classifier], settings: ServeSettings):
        self.load = load
        self.settings = settings
        self.classifier: Classifier | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.decoding = asyncio.Semaphore(settings.decode_threads)
        self._loading: asyncio.Task | None = None

    async def start(self) -> None:
        if self.settings.load_before_serving:
            await self._load()
        else:
            self._loading = asyncio.get_running_loop().create_task(self._load_in_background())

    async def _load(self) -> None:
        t0 = time.perf_counter()
        classifier = await asyncio.to_thread(self.load)
        wanted = self.settings.batch_size or classifier.max_batch
        batch_size = max(1, min(wanted, classifier.max_batch))
        if wanted > classifier.max_batch:
            log.warning("batch size %d is over the model's maximum: %d used", wanted, classifier.max_batch)
        self.batcher = Batcher(classifier, batch_size, self.settings.max_wait_ms / 1000, self.settings.max_queue)
        self.batcher.start()
        self.classifier = classifier
        log.info("models loaded in %.1f s; batches of up to %d products", time.perf_counter() - t0, batch_size)

    async def _load_in_background(self) -> None:
        try:
            await self._load()
        except EtalageError as exc:
            self.error = str(exc)
            log.error("etalage serve: the models failed to load: %s", exc)
        except Exception as exc:  # noqa: BLE001 - told by /ready and the log; the process keeps answering
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("etalage serve: the models failed to load")

    async def stop(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()  # the loading thread ends on its own; the process is going away
        if self.batcher is not None:
            await self.batcher.stop()
        if self.classifier is not None:
            await asyncio.to_thread(self.classifier.close)

    def ready(self) -> Batcher:
        if self.batcher is None:
            raise NotReady(f"the models failed to load: {self.error}" if self.error else "the models are loading")
        return self.batcher


def create_app(classifier: Callable[[], Classifier], settings: ServeSettings | None = None) -> FastAPI:
    """The API serving the model ``classifier()`` loads (a ``ModelSource``, or any zero-argument callable
    returning a ``Classifier``), with ``settings``' limits."""
    settings = settings or ServeSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service = Service(classifier, settings)
        app.state.service = service
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(title="etalage", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.settings = settings
    app.add_middleware(Guard, settings=settings)
    _add_error_handlers(app)
    _add_routes(app, settings)
    return app


def _add_routes(app: FastAPI, settings: ServeSettings) -> None:
    @app.get("/health")
    async def health():
        return {"status": "alive"}

    @app.get("/ready")
    async def ready(request: Request):
        service: Service = request.app.state.service
        batcher = service.ready()
        return {"status": "ready", "batch_size": batcher.batch_size, "waiting": batcher.waiting,
                "batches": batcher.batches, "products": batcher.products}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(page_html(key_required=settings.api_key is not None))

    @app.post("/v1/classify")
    async def classify(request: Request):
        t0 = time.perf_counter()
        (result,) = await _classify(request, batch=False)
        return {**_proposal_json(result), "ms": round((time.perf_counter() - t0) * 1000, 3)}

    @app.post("/v1/classify/batch")
    async def classify_batch(request: Request):
        t0 = time.perf_counter()
        results = await _classify(request, batch=True)
        products = [{"id": listing_id, **_proposal_json(p)} for listing_id, p in results]
        return {"products": products, "ms": round((time.perf_counter() - t0) * 1000, 3)}


async def _classify(request: Request, batch: bool) -> list:
    service: Service = request.app.state.service
    settings = service.settings
    batcher = service.ready()
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise BadRequest(415, f"send multipart/form-data (got {content_type[:60] or 'no content type'})")
    products = settings.max_products if batch else 1
    async with request.form(max_files=products * MAX_PICTURES + 1, max_fields=products * 2 + 1,
                            max_part_size=settings.max_title_chars * 4 + 1024) as form:
        check_complete(content_type, request.scope.get(BODY_TAIL, b""))
        grouped = products_of_form(form, batch)
        if len(grouped) > settings.max_products:
            raise BadRequest(413, f"{len(grouped)} products in one request; at most {settings.max_products}")
        listings = [await read_listing(p, settings) for p in grouped]
    labels = [p.label for p in grouped]
    await check_pictures(listings, labels, service.decoding)
    results = await batcher.classify(listings)
    for label, result in zip(labels, results, strict=True):
        if isinstance(result, DataError):
            raise BadRequest(422, f"{label + ': ' if label else ''}the model could not read it: {result}")
        if isinstance(result, Exception):
            raise result
    return [(listing.product_id, r) for listing, r in zip(listings, results, strict=True)] if batch else results


def _proposal_json(proposal: Proposal) -> dict:
    return {"categories": [{"category_id": int(c.category_id), "names": [str(n) for n in c.names],
                            "probability": float(c.probability)} for c in proposal.categories],
            "signals": [str(s) for s in proposal.signals]}


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal is one line of JSON, ``{"error": "..."}``, with its status."""

    @app.exception_handler(BadRequest)
    async def bad_request(request, exc: BadRequest):
        return _error(exc.status, str(exc))

    @app.exception_handler(Overloaded)
    async def overloaded(request, exc: Overloaded):
        return _error(503, str(exc), {"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(NotReady)
    async def not_ready(request, exc: NotReady):
        return _error(503, str(exc), {"Retry-After": "5"})

    @app.exception_handler(ClassifierFailed)
    async def classifier_failed(request, exc: ClassifierFailed):
        return _error(500, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request, exc: HTTPException):
        message = {404: f"no such path: {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, exc.detail)
        return _error(exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):
        log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
        return _error(500, f"internal error ({type(exc).__name__})")


# ---------------------------------------------------------------------------------------------
# the guard: keys, sizes and slow clients, before a byte reaches a route


BODY_TAIL = "etalage.body_tail"  # the scope key of the body's last bytes (a cut multipart body lacks its end)
TAIL_BYTES = 256


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Guard:
    """ASGI middleware: the API key (``/v1/*``), the body size (from Content-Length at once, and counted
    while reading: a chunked 50 MB body is cut at the limit, never buffered) and the time a client may take
    to send its body. Refusals are answered here, as JSON, before any route runs."""

    def __init__(self, app, settings: ServeSettings):
        self.app = app
        self.settings = settings
        self.key = settings.api_key.encode() if settings.api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            self._check_headers(scope)
        except _Refused as exc:
            return await _send_refusal(send, exc)
        started = False

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, self._bounded(scope, receive), tracked_send)
        except _Refused as exc:
            if started:  # the response is on its way: nothing more to say to this client
                log.warning("request on %s cut short: %s", scope["path"], exc)
                return
            await _send_refusal(send, exc)

    def _check_headers(self, scope) -> None:
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"].startswith("/v1/"):
            given = headers.get(b"authorization", b"")
            scheme, _, token = given.partition(b" ")
            # compare_digest: the time taken tells nothing of how much of the key was right
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                raise _Refused(401, "missing or wrong API key: send the header Authorization: Bearer KEY")
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                raise _Refused(400, "Content-Length is not a number")
            if int(length) > self.settings.max_body_bytes:
                raise _Refused(413, f"the request body is {size_text(int(length))}; at most "
                                    f"{size_text(self.settings.max_body_bytes)}")

    def _bounded(self, scope, receive):
        limit, timeout = self.settings.max_body_bytes, self.settings.read_timeout_s
        state = {"bytes": 0, "done": False, "deadline": None}
        scope[BODY_TAIL] = b""

        async def bounded_receive():
            if state["done"]:  # the body is in: later calls only wait for a disconnect
                return await receive()
            loop = asyncio.get_running_loop()
            if state["deadline"] is None:
                state["deadline"] = loop.time() + timeout
            try:
                message = await asyncio.wait_for(receive(), max(state["deadline"] - loop.time(), 0.001))
            except asyncio.TimeoutError:
                raise _Refused(408, f"the request body did not arrive within {timeout:g} s") from None
            if message["type"] == "http.request":
                state["bytes"] += len(message.get("body", b""))
                if state["bytes"] > limit:
                    raise _Refused(413, f"the request body is over {size_text(limit)}")
                state["done"] = not message.get("more_body", False)
                scope[BODY_TAIL] = (scope[BODY_TAIL] + message.get("body", b""))[-TAIL_BYTES:]
            return message

        return bounded_receive


async def _send_refusal(send, exc: _Refused) -> None:
    body = _error(exc.status, str(exc))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body.body)).encode()),
               (b"connection", b"close")]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body.body})
