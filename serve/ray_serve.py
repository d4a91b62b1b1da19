"""``etalage serve --engine ray``: the same app (``create_app``) as a Ray Serve deployment of N replicas.

Each replica builds the app in its own process and its lifespan loads the model there once (startup
waits for it: a replica takes requests only when loaded), so a replica is exactly the one-machine
server, batching included; Ray Serve's HTTP proxy spreads requests over the replicas and starts a new
replica when one dies. A request in flight on a replica that dies gets a 5xx from the proxy: classifying
is idempotent, so clients retry (docs/serving.md). This is the serving path, apart from the batch
pipeline's Ray Data engine (``etalage.pipeline.ray_engine``); only its quiet start-up is shared.

Ray is started quietly (no dashboard, Ray's logs kept out of the terminal unless -vv) and nothing is
written to this process's environment: variables for the replicas go in ``runtime_env``; Ray's own
switches (``RAY_USAGE_STATS_ENABLED=0``) are the caller's to set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass

from etalage.errors import ConfigError
from etalage.resources import usable_cpus
from etalage.serve.model import ModelSource
from etalage.serve.settings import ServeSettings

log = logging.getLogger(__name__)

RAY_SERVE_MISSING = "--engine ray needs Ray Serve: pip install 'etalage[ray,serve]' (scripts/setup.sh installs it)"
APP_NAME = "etalage"


@dataclass(frozen=True)
class RayServeOptions:
    """Where and how wide: the cluster (``address``; None starts Ray on this machine for the command), the
    proxy's address, the replicas and what each reserves, and ``runtime_env`` for the replicas (e.g.
    ``{"env_vars": {"PYTHONPATH": ...}}`` for a ``--classifier`` module outside the installed packages)."""

    address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0
    verbose: int = 0
    runtime_env: dict | None = None

    def __post_init__(self):
        if self.replicas < 1 or self.replica_cpus < 0 or self.replica_gpus < 0:
            raise ConfigError("--replicas must be at least 1, --replica-cpus and --replica-gpus at least 0")


def _import_ray_serve():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ConfigError(RAY_SERVE_MISSING) from None
    return ray, serve


def serve_application(source: ModelSource, settings: ServeSettings, options: RayServeOptions):
    """The Ray Serve application: ``create_app`` behind ``@serve.deployment`` + ``@serve.ingress``."""
    _, serve = _import_ray_serve()
    settings = dataclasses.replace(settings, load_before_serving=True)

    def build_app():  # called in each replica: the app and its model live there, not in this process
        from etalage.serve.app import create_app

        return create_app(source, settings)

    actor_options = {"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus}
    if options.runtime_env:
        actor_options["runtime_env"] = options.runtime_env

    # The app's own line bounds the waiting products (503 beyond); Ray's per-replica cap must not bound
    # them first, or batches would never fill.
    @serve.deployment(name="etalage", num_replicas=options.replicas, ray_actor_options=actor_options,
                      max_ongoing_requests=settings.max_queue + 64, max_queued_requests=settings.max_queue,
                      health_check_period_s=2.0, graceful_shutdown_timeout_s=30.0)
    @serve.ingress(build_app)
    class EtalageServe:
        pass

    return EtalageServe.bind()


@contextlib.contextmanager
def deployed_on_ray(source: ModelSource, settings: ServeSettings, options: RayServeOptions) -> Iterator[str]:
    """The app running on Ray Serve for the block (its URL yielded once every replica has loaded its
    model); deleted afterwards, and Ray stopped if this call started it."""
    ray, serve = _import_ray_serve()
    from etalage.pipeline.ray_engine import quiet_stderr

    quiet = options.verbose < 2
    joined = ray.is_initialized()  # a caller (a test, a notebook) holds a session: use it as it is
    if not joined:
        kw = dict(logging_level=logging.ERROR if quiet else logging.INFO, log_to_driver=not quiet,
                  runtime_env=options.runtime_env)
        with quiet_stderr(quiet):
            if options.address:
                ray.init(address=options.address, **kw)
            else:
                ray.init(address="local", num_cpus=usable_cpus(), include_dashboard=False, **kw)
    try:
        serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": options.port},
                    logging_config={"log_level": "ERROR" if quiet else "INFO"})
        serve.run(serve_application(source, settings, options), name=APP_NAME, route_prefix="/", blocking=False)
        yield f"http://{options.host}:{options.port}"
    finally:
        with contextlib.suppress(Exception):  # Ray going away already: nothing left to delete
            serve.delete(APP_NAME)
        if not joined:
            with contextlib.suppress(Exception):
                serve.shutdown()
            ray.shutdown()
