"""The page at ``/`` in a real browser (Debian's headless Chromium, driven over its DevTools pipe): pictures
put in the file input, a title typed, the form sent; the top-5 shown with names and bars, in the DOM and
in a screenshot. Skipped where Chromium is not installed."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import shutil
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")

from tests.serve.fakes import COLOURS, expected_top, picture  # noqa: E402
from tests.serve.server import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1000,900"]
BAR_BLUE = (42, 111, 219)  # .bar span's colour in the page's style


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (its fds 3 and 4, NUL-terminated JSON):
    no WebSocket client needed."""

    def __init__(self, profile):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        wrapper = f'exec 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-; exec "$@"'
        self.proc = subprocess.Popen(["bash", "-c", wrapper, "chromium", CHROMIUM, *FLAGS, "--remote-debugging-pipe",
                                      f"--user-data-dir={profile}", "about:blank"],
                                     pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.session = None

    def call(self, method: str, timeout: float = 60.0, **params):
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    def _next(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self._from_browser], [], [], left)[0], "Chromium did not answer"
            data = os.read(self._from_browser, 1 << 20)
            assert data, "Chromium closed its DevTools pipe"
            self._buffer += data
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60.0):
        deadline = time.monotonic() + seconds
        while not (value := self.evaluate(expression)):
            assert time.monotonic() < deadline, f"waited {seconds} s for {expression}"
            time.sleep(0.1)
        return value

    def open(self, url: str) -> None:
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && !!document.getElementById('pictures')")

    def close(self) -> None:
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.proc.terminate()
        self.proc.wait(30)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh installs it)")
def test_a_person_drops_pictures_and_sees_the_top5(tmp_path):
    blue = (30, 30, 200)
    paths = []
    for i, colour in enumerate((blue, (200, 30, 30))):
        paths.append(tmp_path / f"picture{i}.jpg")
        paths[-1].write_bytes(picture(colour, size=(240, 180)))
    server = Server("--classifier", "tests.serve.fakes:quick")
    browser = DevTools(tmp_path / "profile")
    try:
        browser.open(server.url + "/")
        root = browser.call("DOM.getDocument")["root"]["nodeId"]
        node = browser.call("DOM.querySelector", nodeId=root, selector="#pictures")["nodeId"]
        browser.call("DOM.setFileInputFiles", nodeId=node, files=[str(p) for p in paths])
        browser.wait_for("document.body.dataset.state === 'chosen'")
        assert browser.evaluate("document.querySelectorAll('#thumbs img').length") == 2
        browser.evaluate("document.getElementById('title').value = 'un album de rock';"
                         "document.getElementById('form').requestSubmit()")
        state = browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state")
        assert state == "done", browser.evaluate("document.getElementById('status').textContent")
        rows = browser.evaluate("[...document.querySelectorAll('li.category')].map(li => ({id: +li.dataset.categoryId,"
                                " text: li.querySelector('.names').textContent, width: li.querySelector('.bar span')"
                                ".style.width, label: li.querySelector('.bar em').textContent}))")
        signals = browser.evaluate("document.getElementById('signals').textContent")
        shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
        server.stop()
    (tmp_path / "page.png").write_bytes(shot)
    assert len(rows) == 5 and rows[0]["id"] == expected_top(blue)
    assert rows[0]["text"].startswith("1. ROCK") and "MUSIQUE › CD" in rows[0]["text"]
    assert all(set(COLOURS[r["id"]][0][2]) <= set(r["text"]) for r in rows)
    widths = [float(r["width"].rstrip("%")) for r in rows]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1] and rows[0]["label"].endswith("%")
    assert signals == "signals: core, title"
    pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    bar = (np.abs(pixels - BAR_BLUE).sum(-1) < 12).sum()
    assert bar > 2000, f"the screenshot shows {bar} pixels of the bars' blue: the categories are not drawn"
