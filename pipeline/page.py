"""The one writer of etalage's HTML pages (``explain``, ``audit``): a single self-contained file (pictures
inline, nothing fetched from the internet), a shared look for product cards, the page's data as JSON in a
``<script type="application/json">`` block, and the ``data-pictures-loaded`` count the browser tests wait for."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from etalage.files import atomic_write

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: 10px; margin: 10px 0; display: flex; gap: 16px; }
.card[hidden] { display: none; }  /* else display: flex above wins over hidden */
.pics img, .pic img { width: 180px; height: 180px; object-fit: contain; margin-right: 4px; }
.cols { display: flex; gap: 18px; flex-wrap: wrap; } .cols ol { margin: 0; padding-left: 1.4em; }
h3 { margin: 0 0 4px; font-size: 14px; }
"""

PICTURES_LOADED = """
Promise.all([...document.images].map(i => i.decode().then(() => 1, () => 0))).then(v => {
  document.body.dataset.picturesLoaded = v.reduce((a, b) => a + b, 0); });
"""


def picture_src(jpeg: bytes) -> str:
    """A picture's bytes as an inline ``src`` (the page stays one file)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def picture_tags(pictures: list[bytes], alt: str) -> str:
    return "".join(f'<img src="{picture_src(p)}" alt="{html.escape(alt)}">' for p in pictures)


def page_data(records) -> str:
    """``records`` as JSON safe inside a ``<script>`` block (no ``</``; NaN refused: JSON.parse has none)."""
    return json.dumps(records, allow_nan=False).replace("</", "<\\/")


def write_page(path: str | Path, title: str, body: str, data, style: str = "", script: str = "") -> Path:
    """Write the page atomically: ``body`` (HTML), ``data`` (JSON in ``#data``), the page's own ``style`` and
    ``script`` after the shared ones."""
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>{STYLE}{style}</style></head><body>\n{body}\n"
            f'<script id="data" type="application/json">{page_data(data)}</script>\n'
            f"<script>{script}{PICTURES_LOADED}</script></body></html>\n")
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return Path(path)
