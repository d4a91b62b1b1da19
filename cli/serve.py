"""``etalage serve``: the model behind an HTTP API, on this machine (uvicorn) or on Ray Serve."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading

from etalage.cli.options import leaf
from etalage.errors import ConfigError
from etalage.options import RUN_ENGINES

log = logging.getLogger("etalage.serve")

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("serve",), cmd_serve,
             "propose categories for products as they are listed: an HTTP API and a page",
             "Serve a model over HTTP: POST /v1/classify (multipart: 1-4 files in `picture`, optional `title` and "
             "`id`) answers the top-5 categories as JSON; POST /v1/classify/batch takes several products "
             "(picture.N, title.N, id.N); GET /health, GET /ready, and GET / a page to try it. Concurrent requests "
             "are batched for the model. Listens on 127.0.0.1 unless --host says otherwise; --api-key-file makes "
             "the API ask for `Authorization: Bearer KEY`. SIGTERM lets requests in flight finish, then exits 0. "
             "docs/serving.md has the API, limits and errors.")
    model = p.add_argument_group("model (one of)")
    model.add_argument("--fusion", metavar="DIR", help="a fusion model folder (`etalage fusion fit --out`)")
    model.add_argument("--run", metavar="DIR", help="a core run alone (`etalage train --out`)")
    model.add_argument("--classifier", metavar="MODULE:FACTORY",
                       help="any importable zero-argument callable returning an object with classify(listings), "
                            "close() and max_batch: a model of your own behind the same API")
    p.add_argument("--ocr-cache", metavar="FILE", help="the OCR cache the specialists read and fill")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; then set "
                                                       "--api-key-file)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--api-key-file", metavar="F", help="file whose content (stripped) is the key the API asks for")
    p.add_argument("--batch-size", type=int, help="products per model call at most (default: the model's own)")
    p.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a product waits for others to share its model call")
    p.add_argument("--max-queue", type=int, default=256,
                   help="products waiting for the model at most; more get 503 with Retry-After")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body (413 beyond)")
    p.add_argument("--max-picture-mb", type=float, default=10.0, help="largest picture file (413 beyond)")
    p.add_argument("--read-timeout", type=float, default=30.0,
                   help="seconds a client may take to send a request body (408 beyond)")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections and requests at most (uvicorn answers 503 beyond)")
    p.add_argument("--shutdown-timeout", type=int, default=60,
                   help="seconds SIGTERM waits for requests in flight before closing them")
    p.add_argument("--engine", default="local", choices=RUN_ENGINES,
                   help="local: one server process here; ray: replicas on a Ray cluster (Ray Serve; pip install "
                        "'etalage[ray,serve]')")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: join the cluster at ADDR (default: start Ray on this machine)")
    p.add_argument("--replicas", type=int, default=1, help="with --engine ray: model replicas")
    p.add_argument("--replica-cpus", type=float, default=1.0, help="with --engine ray: CPUs each replica reserves")
    p.add_argument("--replica-gpus", type=float, default=0.0, help="with --engine ray: GPUs each replica reserves")


def serve_settings(args):
    from etalage.serve.settings import ServeSettings, read_api_key

    return ServeSettings(batch_size=args.batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_body_bytes=int(args.max_body_mb * 2**20),
                         max_picture_bytes=int(args.max_picture_mb * 2**20), read_timeout_s=args.read_timeout,
                         api_key=read_api_key(args.api_key_file) if args.api_key_file else None)


def cmd_serve(args) -> int:
    from etalage.serve.model import ModelSource

    # absolute: Ray Serve replicas load the model from their own working folders
    source = ModelSource(fusion=_absolute(args.fusion), run=_absolute(args.run), ocr_cache=_absolute(args.ocr_cache),
                         factory=args.classifier)
    for flag, path in (("--fusion", args.fusion), ("--run", args.run)):
        if path and not os.path.isdir(path):
            raise ConfigError(f"{flag} {path}: no such folder")
    settings = serve_settings(args)
    if args.host not in LOOPBACK and settings.api_key is None:
        log.warning("etalage serve: listening on %s without --api-key-file: whoever reaches this address can "
                    "use the API", args.host)
    if args.engine == "ray":
        return _serve_on_ray(args, source, settings)
    return _serve_here(args, source, settings)


def _absolute(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _serve_here(args, source, settings) -> int:
    uvicorn = _import_server()
    from etalage.serve.app import create_app

    app = create_app(source, settings)
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", access_log=bool(args.verbose),
                            log_level="debug" if args.verbose > 1 else "warning" if args.quiet else "info",
                            limit_concurrency=args.max_connections, timeout_keep_alive=5,
                            timeout_graceful_shutdown=args.shutdown_timeout,
                            h11_max_incomplete_event_size=64 * 1024)
    server = uvicorn.Server(config)
    log.info("etalage serve: %s on http://%s:%d (the page at /, the API at /v1/classify)", source.describe(),
             args.host, args.port)
    with _sigterm_stops():
        server.run()
    return 0 if server.started else 1


def _serve_on_ray(args, source, settings) -> int:
    _import_server()
    from etalage.serve.ray_serve import RayServeOptions, deployed_on_ray

    options = RayServeOptions(address=args.ray_address, host=args.host, port=args.port, replicas=args.replicas,
                              replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
                              verbose=int(args.verbose or 0))
    with deployed_on_ray(source, settings, options) as url:
        log.info("etalage serve: %s on Ray Serve, %d replica(s), at %s; Ctrl-C or SIGTERM to stop",
                 source.describe(), args.replicas, url)
        _wait_for_a_stop()
    return 0


def _import_server():
    from etalage.serve import SERVE_MISSING

    try:
        import fastapi  # noqa: F401
        import multipart  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError(SERVE_MISSING) from None
    return uvicorn


@contextlib.contextmanager
def _sigterm_stops():
    """SIGTERM as a clean stop: uvicorn finishes the requests in flight, then raises the signal it caught
    again; this handler takes it there, so the command exits 0 instead of dying of SIGTERM."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_a_stop() -> None:
    """Block until SIGTERM or SIGINT (Ray Serve serves from its own processes meanwhile)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
