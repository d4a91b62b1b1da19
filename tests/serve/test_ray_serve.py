"""``etalage serve --engine ray``: the same app on Ray Serve, two replicas on the session's two-node local
cluster; one replica killed mid-load, and every request still answered correctly (a request in flight on
the dead replica gets a 5xx from the proxy and is retried, as docs/serving.md tells clients to; the rest
are routed to the live replica while Ray Serve starts a new one)."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")
ray = pytest.importorskip("ray", reason="--engine ray needs Ray: pip install 'etalage[ray,serve]'")
import httpx  # noqa: E402

from etalage.serve import ModelSource, ServeSettings  # noqa: E402
from etalage.serve.ray_serve import RayServeOptions, deployed_on_ray  # noqa: E402
from tests.serve.fakes import expected_top, picture  # noqa: E402
from tests.serve.server import ROOT, free_port  # noqa: E402

COLOURS = [(200, 30, 30), (30, 30, 200), (220, 220, 30), (30, 200, 200)]


def _ask(url: str, colour, tries: list) -> httpx.Response:
    """One product, retried on a 5xx or a dropped connection (at most 10 tries)."""
    for attempt in range(10):
        try:
            r = httpx.post(f"{url}/v1/classify", files=[("picture", ("a.jpg", picture(colour), "image/jpeg"))],
                           timeout=60)
            if r.status_code < 500:
                tries.append(attempt + 1)
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError("no answer after 10 tries")


def _replicas() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]


@pytest.mark.slow
def test_two_replicas_one_killed_mid_load_every_request_answered(ray_cluster):
    options = RayServeOptions(address=ray_cluster.address, port=free_port(), replicas=2, replica_cpus=0.25,
                              runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    with deployed_on_ray(ModelSource(factory="tests.serve.fakes:steady"), ServeSettings(), options) as url:
        assert len(_replicas()) == 2
        assert httpx.get(f"{url}/ready", timeout=30).json()["status"] == "ready"
        answers, tries, killed_at = [], [], []

        def client(k: int):
            for i in range(40):
                colour = COLOURS[(k + i) % len(COLOURS)]
                answers.append((colour, _ask(url, colour, tries), bool(killed_at)))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        while len(answers) < 30:
            time.sleep(0.02)
        victim = _replicas()[0]
        ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
        killed_at.append(len(answers))
        for t in threads:
            t.join(300)
    assert len(answers) == 160
    assert all(r.status_code == 200 for _, r, _ in answers), {r.status_code for _, r, _ in answers}
    assert all(r.json()["categories"][0]["category_id"] == expected_top(c) for c, r, _ in answers)
    assert sum(after for _, _, after in answers) >= 100, "most requests were answered after the kill"
