"""``etalage serve`` as a real process: SIGTERM lets requests in flight finish and exits 0; sizes are cut
while the body streams in; a slow client is timed out; a few hundred malformed requests leave it
answering the next good one; the CLI's one-line refusals."""

from __future__ import annotations

import io
import random
import select
import signal
import socket
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")
import httpx  # noqa: E402

from etalage.cli import main  # noqa: E402
from tests.serve.fakes import expected_top, picture  # noqa: E402
from tests.serve.server import Server  # noqa: E402

RED = (200, 30, 30)


@pytest.fixture(scope="module")
def server():
    s = Server("--classifier", "tests.serve.fakes:quick", "--max-body-mb", "1", "--read-timeout", "1")
    yield s
    s.stop()


def _good(url: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/classify", files=[("picture", ("a.jpg", picture(RED), "image/jpeg"))], timeout=30)


def _raw(port: int, head: bytes, body_chunks=(), wait_s: float = 10.0) -> tuple[bytes, int]:
    """Send a raw request (head, then chunks while the server listens); the response's first bytes and how
    many body bytes went out before the server answered or closed."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head)
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered (or closed) before the end of the body
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return _read_response(sock), sent


def _read_response(sock) -> bytes:
    """What the server says until it closes, or goes quiet for a second after its first bytes."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
            sock.settimeout(1.0)
    except (ConnectionResetError, TimeoutError):
        pass
    return data


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def test_sigterm_finishes_the_requests_in_flight_then_exits_0():
    s = Server("--classifier", "tests.serve.fakes:slower")
    answers = []

    def ask():
        answers.append(_good(s.url))

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while httpx.get(f"{s.url}/ready").json()["batches"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # the first model call (1 s) has started: requests are in flight
    s.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert s.proc.wait(30) == 0, s.stop()[-2000:]
    assert len(answers) == 4 and all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert all(a.json()["categories"][0]["category_id"] == expected_top(RED) for a in answers)


def test_a_declared_50mb_body_is_refused_before_it_is_sent(server):
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 52428800\r\n\r\n")
    response, sent = _raw(server.port, head, [b"\0" * 65536] * 800)
    assert _status(response) == 413 and b'"error"' in response, response
    assert sent < 8 << 20, f"{sent} bytes sent before the refusal"


def test_a_chunked_50mb_body_is_cut_at_the_limit(server):
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="picture"; filename="a.jpg"\r\n\r\n'
    chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
    first = f"{len(part):x}\r\n".encode() + part + b"\r\n"
    response, sent = _raw(server.port, head, [first] + [chunk] * 800)
    assert _status(response) == 413 and b"over 1 MB" in response, response
    assert sent < 16 << 20, f"{sent} bytes sent before the cut: the server read on past its limit"
    assert _good(server.url).status_code == 200


def test_a_slow_client_gets_408_while_others_are_served(server):
    head = (b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 1000\r\n\r\n--b\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
        sock.sendall(head)
        t0 = time.monotonic()
        assert _good(server.url).status_code == 200, "a good request is served while the slow one waits"
        response = _read_response(sock)
    assert _status(response) == 408 and b"within 1 s" in response, response
    assert 0.5 < time.monotonic() - t0 < 10


def _multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "xyzzy") -> bytes:
    out = io.BytesIO()
    for name, filename, data in fields:
        out.write(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"".encode())
        if filename is not None:
            out.write(f"; filename=\"{filename}\"\r\nContent-Type: image/jpeg".encode())
        out.write(b"\r\n\r\n" + data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue()


def _malformed(rng: random.Random) -> tuple[str, dict, bytes]:
    """One malformed request: (path, headers, body)."""
    jpeg = picture(RED, size=(120, 90))
    kind = rng.randrange(9)
    mp = {"content-type": "multipart/form-data; boundary=xyzzy"}
    if kind == 0:  # random bytes as a multipart body
        return "/v1/classify", mp, rng.randbytes(rng.randrange(0, 5000))
    if kind == 1:  # a good body cut anywhere
        body = _multipart([("picture", "a.jpg", jpeg), ("title", None, b"x")])
        return "/v1/classify", mp, body[: rng.randrange(0, len(body))]
    if kind == 2:  # a picture cut or mangled
        data = bytearray(jpeg[: rng.randrange(1, len(jpeg))])
        for _ in range(rng.randrange(0, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return "/v1/classify", mp, _multipart([("picture", "a.jpg", bytes(data))])
    if kind == 3:  # fields nobody asked for, or in the wrong place
        name = rng.choice(["pictures", "picture.0", "Picture", "", "id", "title", "picture[]", "x" * 300])
        return "/v1/classify", mp, _multipart([(name, rng.choice([None, "f.jpg"]), jpeg)])
    if kind == 4:  # a wrong boundary or content type
        ctype = rng.choice(["multipart/form-data", "multipart/form-data; boundary=", "text/plain", "image/jpeg",
                            "multipart/form-data; boundary=other", "application/json"])
        return "/v1/classify", {"content-type": ctype}, _multipart([("picture", "a.jpg", jpeg)])
    if kind == 5:  # a batch with gaps, bad ids, too many pictures
        fields = [(f"picture.{rng.choice([0, 1, 3, 99999])}", "a.jpg", jpeg) for _ in range(rng.randrange(1, 7))]
        fields += [(f"id.{rng.randrange(3)}", None, rng.choice([b"abc", b"-1", b"1e400", b"99999999999999999999"]))]
        return "/v1/classify/batch", mp, _multipart(fields)
    if kind == 6:  # a header-less part, or garbage between boundaries
        return "/v1/classify", mp, b"--xyzzy\r\n\r\n" + rng.randbytes(100) + b"\r\n--xyzzy--\r\n"
    if kind == 7:  # more than 4 pictures
        return "/v1/classify", mp, _multipart([("picture", f"{i}.jpg", jpeg) for i in range(rng.randrange(5, 12))])
    return "/v1/classify", mp, _multipart([("picture", "a.jpg", b"GIF89a" + rng.randbytes(50))])


def test_hundreds_of_malformed_requests_then_a_good_one(server):
    rng = random.Random(7)
    codes = []
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for _ in range(300):
            path, headers, body = _malformed(rng)
            codes.append(client.post(path, headers=headers, content=body).status_code)
    for line in (b"GARBAGE\r\n\r\n", b"POST /v1/classify HTTP/9.9\r\n\r\n", rng.randbytes(300),
                 b"POST /v1/classify HTTP/1.1\r\nContent-Length: -5\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n"):
        response, _ = _raw(server.port, line)
        codes.append(_status(response) or 400)  # a connection closed on garbage counts as refused
    assert all(400 <= c < 500 for c in codes), sorted(set(codes))
    assert server.alive()
    r = _good(server.url)
    assert r.status_code == 200 and r.json()["categories"][0]["category_id"] == expected_top(RED)


def test_the_command_without_fastapi_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastapi", None)
    assert main(["serve", "--classifier", "tests.serve.fakes:quick", "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("etalage serve: error: etalage serve needs FastAPI and uvicorn: pip install 'etalage[serve]' "
                   "(scripts/setup.sh installs it)")


@pytest.mark.parametrize("argv, words", [
    (["--fusion", "a", "--run", "b"], "exactly one of --fusion DIR, --run DIR or --classifier"),
    ([], "exactly one of"),
    (["--fusion", "/nonexistent/fusion"], "--fusion /nonexistent/fusion: no such folder"),
    (["--classifier", "tests.serve.fakes:quick", "--api-key-file", "/nonexistent/key"], "--api-key-file"),
    (["--classifier", "tests.serve.fakes:quick", "--batch-size", "0"], "--batch-size must be at least 1"),
])
def test_the_command_refuses_bad_options_in_one_line(argv, words, capsys):
    assert main(["serve", *argv, "-q"]) == 1
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err


def test_the_ray_engine_without_ray_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)
    assert main(["serve", "--engine", "ray", "--classifier", "tests.serve.fakes:quick", "-q"]) == 1
    assert "pip install 'etalage[ray,serve]'" in capsys.readouterr().err
