"""The HTTP API through ``fastapi.testclient`` (no server): answers, batching, refusals, the key, loading."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from etalage.errors import ConfigError  # noqa: E402
from etalage.serve import ServeSettings, create_app  # noqa: E402
from tests.serve.fakes import COLOURS, FakeClassifier, expected_top, picture  # noqa: E402

RED, BLUE, YELLOW = (200, 30, 30), (30, 30, 200), (220, 220, 30)


@pytest.fixture
def serve():
    """``serve(classifier, **settings)`` -> a client of a started app (models loaded); closed afterwards."""
    opened = []

    def start(classifier=None, **settings) -> TestClient:
        classifier = classifier or FakeClassifier()
        client = TestClient(create_app(lambda: classifier, ServeSettings(**settings)), raise_server_exceptions=False)
        client.__enter__()
        opened.append(client)
        _wait_ready(client)
        return client

    yield start
    for client in opened:
        client.__exit__(None, None, None)


def _wait_ready(client, seconds=10.0):
    deadline = time.monotonic() + seconds
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.01)


def _files(*colours, field="picture"):
    return [(field, (f"p{i}.jpg", picture(c), "image/jpeg")) for i, c in enumerate(colours)]


def test_one_product_gets_the_top5_of_its_pictures(serve):
    fake = FakeClassifier()
    client = serve(fake)
    r = client.post("/v1/classify", files=_files(BLUE, RED), data={"title": "  un  album ", "id": "42"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"categories", "signals", "ms"} and body["ms"] > 0
    cats = body["categories"]
    assert len(cats) == 5 and cats[0]["category_id"] == expected_top(BLUE) == 1000004085
    assert cats[0]["names"] == list(COLOURS[1000004085][0])
    probs = [c["probability"] for c in cats]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-9
    assert body["signals"] == ["core", "title", "id"]
    assert fake.batches == [1]


def test_the_listing_reaches_the_classifier_as_sent(serve):
    seen = []

    class Spy(FakeClassifier):
        def classify(self, listings):
            seen.extend(listings)
            return super().classify(listings)

    client = serve(Spy())
    sent = [picture(RED), picture(BLUE, fmt="PNG"), picture(YELLOW, fmt="WEBP")]
    r = client.post("/v1/classify", files=[("picture", (f"{i}", b, "application/octet-stream"))
                                           for i, b in enumerate(sent)], data={"title": "Le   Petit\tPrince"})
    assert r.status_code == 200, r.text
    (listing,) = seen
    assert listing.pictures == sent, "pictures in order, bytes untouched"
    assert listing.title == "Le Petit Prince" and listing.product_id is None


def test_a_batch_request_answers_every_product_in_order(serve):
    client = serve(FakeClassifier(max_batch=2))
    files = _files(RED, field="picture.0") + _files(BLUE, YELLOW, field="picture.1") + _files(YELLOW, field="picture.2")
    r = client.post("/v1/classify/batch", files=files, data={"id.0": "7", "title.1": "jazz", "id.2": "9"})
    assert r.status_code == 200, r.text
    products = r.json()["products"]
    assert [p["id"] for p in products] == [7, None, 9]
    assert [p["categories"][0]["category_id"] for p in products] == [expected_top(c) for c in (RED, BLUE, YELLOW)]
    assert products[1]["signals"] == ["core", "title"]


def test_concurrent_requests_share_model_calls(serve):
    fake = FakeClassifier(max_batch=8, delay_s=0.15)
    client = serve(fake, max_wait_ms=20)
    colours = [RED, BLUE, YELLOW, (30, 200, 200)] * 6
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda c: client.post("/v1/classify", files=_files(c)), colours))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert [a.json()["categories"][0]["category_id"] for a in answers] == [expected_top(c) for c in colours]
    assert sum(fake.batches) == 24 and max(fake.batches) <= 8
    assert len(fake.batches) <= 12, f"24 concurrent requests in {len(fake.batches)} model calls: not batched"
    assert client.get("/ready").json()["products"] == 24


def test_batch_size_is_capped_by_the_model(serve):
    fake = FakeClassifier(max_batch=3, delay_s=0.1)
    client = serve(fake, batch_size=50)
    assert client.get("/ready").json()["batch_size"] == 3
    files = [f for i in range(7) for f in _files(RED, field=f"picture.{i}")]
    assert client.post("/v1/classify/batch", files=files).status_code == 200
    assert sum(fake.batches) == 7 and max(fake.batches) <= 3


def _bomb(side: int) -> bytes:
    """A side x side PNG of one colour: 3 side² bytes of pixels in a few hundred KB."""
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")
    return buf.getvalue()


BAD = {
    "no picture": (dict(data={"title": "x"}), 400, "no picture"),
    "five pictures": (dict(files=_files(*[RED] * 5)), 400, "at most 4"),
    "not a picture": (dict(files=[("picture", ("a.jpg", b"%PDF-1.4 hello", "image/jpeg"))]), 400, "not a readable"),
    "truncated JPEG": (dict(files=[("picture", ("a.jpg", picture(RED, size=(300, 300))[:700], "image/jpeg"))]),
                       400, "picture 1 is not a readable"),
    "empty file": (dict(files=[("picture", ("a.jpg", b"", "image/jpeg"))]), 400, "empty"),
    "unknown field": (dict(files=_files(RED), data={"colour": "red"}), 400, "unknown field 'colour'"),
    "picture as text": (dict(data={"picture": "abc"}), 400, "must be a file"),
    "title as a file": (dict(files=_files(RED) + [("title", ("t.txt", b"x", "text/plain"))]), 400, "must be text"),
    "id not a number": (dict(files=_files(RED), data={"id": "12a"}), 400, "not an integer"),
    "id negative": (dict(files=_files(RED), data={"id": "-3"}), 400, "out of range"),
    "title twice": (dict(files=_files(RED), data={"title": ["a", "b"]}), 400, "given twice"),
    "title too long": (dict(files=_files(RED), data={"title": "x" * 2001}), 400, "at most 2000"),
    "json body": (dict(json={"picture": "abc"}), 415, "multipart/form-data"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_4xx_with_one_line(serve, case):
    client = serve()
    kwargs, status, words = BAD[case]
    r = client.post("/v1/classify", **kwargs)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"] and "\n" not in r.json()["error"]


@pytest.mark.parametrize("side, words", [(6000, "over the limit"), (20000, "decompression bomb")])
def test_a_decompression_bomb_is_refused_without_decoding(serve, side, words):
    client = serve()
    bomb = _bomb(side)
    t0 = time.perf_counter()
    r = client.post("/v1/classify", files=[("picture", ("bomb.png", bomb, "image/png"))])
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("files, data, words", [
    ([("picture.0", ("a.jpg", picture(RED), "image/jpeg")), ("picture.2", ("b.jpg", picture(RED), "image/jpeg"))],
     {}, "no field for product 1"),
    ([("picture", ("a.jpg", picture(RED), "image/jpeg"))], {}, "unknown field 'picture'"),
    ([("picture.0", ("a.jpg", picture(RED), "image/jpeg"))], {"title.1": "x"}, "product 1: no picture"),
    ([("picture.0", ("a.jpg", picture(RED), "image/jpeg")), ("picture.1", ("a.jpg", b"junk", "image/jpeg"))], {},
     "product 1: picture 1 is not a readable picture"),
])
def test_bad_batches_name_the_product(serve, files, data, words):
    r = serve().post("/v1/classify/batch", files=files, data=data)
    assert r.status_code == 400 and words in r.json()["error"], r.text


def test_too_many_products_in_a_batch(serve):
    client = serve(max_products=3)
    files = [f for i in range(4) for f in _files(RED, field=f"picture.{i}")]
    r = client.post("/v1/classify/batch", files=files)
    assert r.status_code in (400, 413) and "error" in r.json()


def test_sizes_over_the_limits_get_413(serve):
    client = serve(max_body_bytes=400_000, max_picture_bytes=50_000)
    noisy = np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "PNG")
    r = client.post("/v1/classify", files=[("picture", ("big.png", buf.getvalue(), "image/png"))])
    assert r.status_code == 413 and "picture 1" in r.json()["error"], r.text
    r = client.post("/v1/classify", files=[("picture", ("huge.bin", b"\0" * 500_000, "image/png"))])
    assert r.status_code == 413 and r.json()["error"] == "the request body is 488 KB; at most 391 KB", r.text
    assert client.post("/v1/classify", files=_files(RED)).status_code == 200


def test_over_capacity_is_503_with_retry_after_and_then_served(serve):
    fake = FakeClassifier(max_batch=2, delay_s=0.3)
    client = serve(fake, max_queue=4, max_wait_ms=0)
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/classify", files=_files(RED)), range(16)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 4, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "capacity" in refused.json()["error"]
    assert client.post("/v1/classify", files=_files(RED)).status_code == 200


def test_the_api_key_guards_the_api_only(serve):
    client = serve(api_key="s3cret-key")
    assert client.post("/v1/classify", files=_files(RED)).status_code == 401
    for wrong in ("Bearer s3cret", "Bearer s3cret-key2", "Basic s3cret-key", "s3cret-key"):
        r = client.post("/v1/classify", files=_files(RED), headers={"Authorization": wrong})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]
    ok = client.post("/v1/classify", files=_files(RED), headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    assert client.post("/v1/classify/batch", files=_files(RED, field="picture.0")).status_code == 401
    for path in ("/health", "/ready", "/"):
        assert client.get(path).status_code == 200
    assert 'id="key"' in client.get("/").text


def test_health_is_up_before_the_models_and_ready_after(serve):
    release = threading.Event()

    def slow_load():
        release.wait(10)
        return FakeClassifier()

    client = TestClient(create_app(slow_load, ServeSettings()))
    with client:
        assert client.get("/health").json() == {"status": "alive"}
        r = client.get("/ready")
        assert r.status_code == 503 and r.json() == {"error": "the models are loading"}
        r = client.post("/v1/classify", files=_files(RED))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        release.set()
        _wait_ready(client)
        assert client.post("/v1/classify", files=_files(RED)).status_code == 200


def test_a_model_that_fails_to_load_is_told_by_ready():
    def broken():
        raise ConfigError("fusion folder /nowhere: no model.txt")

    with TestClient(create_app(broken, ServeSettings())) as client:
        deadline = time.monotonic() + 5
        while "failed" not in client.get("/ready").text:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        r = client.get("/ready")
        assert r.status_code == 503 and r.json()["error"] == "the models failed to load: fusion folder /nowhere: no model.txt"
        assert client.get("/health").status_code == 200


def test_a_product_the_model_cannot_read_fails_alone(serve):
    fake = FakeClassifier(max_batch=8, delay_s=0.2)
    client = serve(fake, max_wait_ms=50)
    titles = ["ok", "unreadable", "ok", "ok"]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda t: client.post("/v1/classify", files=_files(RED), data={"title": t}), titles))
    assert [a.status_code for a in answers] == [200, 422, 200, 200]
    assert "could not read" in answers[1].json()["error"]


def test_a_model_crash_is_500_and_the_server_goes_on(serve):
    class Flaky(FakeClassifier):
        calls = 0

        def classify(self, listings):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("CUDA error: an illegal memory access")
            return super().classify(listings)

    client = serve(Flaky())
    r = client.post("/v1/classify", files=_files(RED))
    assert r.status_code == 500 and "RuntimeError" in r.json()["error"]
    assert client.post("/v1/classify", files=_files(RED)).status_code == 200


def test_unknown_paths_and_methods_answer_json(serve):
    client = serve()
    r = client.get("/v2/classify")
    assert r.status_code == 404 and r.json() == {"error": "no such path: /v2/classify"}
    r = client.get("/v1/classify")
    assert r.status_code == 405 and "GET" in r.json()["error"]


def test_the_model_is_closed_at_shutdown():
    fake = FakeClassifier()
    with TestClient(create_app(lambda: fake, ServeSettings(load_before_serving=True))) as client:
        assert client.get("/ready").status_code == 200, "loaded before the first request"
        assert not fake.closed
    assert fake.closed


def test_the_page_is_self_contained(serve):
    text = serve().get("/").text
    assert "<form" in text and 'type="file"' in text and "v1/classify" in text
    assert "http://" not in text and "https://" not in text and "<link" not in text and "src=\"" not in text
    assert 'id="key"' not in text, "no key field when the API asks for none"


def test_a_body_cut_after_a_whole_part_is_refused(serve):
    client = serve()
    head = b'--zz\r\nContent-Disposition: form-data; name="picture"; filename="a.jpg"\r\n\r\n'
    whole = head + picture(RED) + b'\r\n--zz\r\nContent-Disposition: form-data; name="title"\r\n\r\njazz\r\n--zz--\r\n'
    headers = {"content-type": "multipart/form-data; boundary=zz"}
    assert client.post("/v1/classify", content=whole, headers=headers).json()["signals"] == ["core", "title"]
    r = client.post("/v1/classify", content=whole[: whole.index(b"jazz")], headers=headers)
    assert r.status_code == 400 and "cut short" in r.json()["error"], "the title was lost: not answered without it"
