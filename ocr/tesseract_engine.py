"""Tesseract (Debian's ``tesseract-ocr``): word boxes with confidences, French and English by default.

Tesseract wants letters of 20-30px; 180px covers carry 10-15px ones, so pictures are upscaled
(3x by default) before reading, and boxes are mapped back to picture pixels.

The binary runs once per picture with an environment of its own (``OMP_THREAD_LIMIT=1``: one core per
reader, the parallelism is ours). pytesseract hands the binary this process's whole environment and
takes no other, so the only way to limit its threads through it was to write the variable into
``os.environ``, where torch's OpenMP runtime, started later, read it and spun forever in its first
convolution backward (pytorch/pytorch#91547). The binary reads a PNG on stdin and writes its TSV on
stdout, so nothing touches the disk either.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess

import numpy as np
from PIL import Image

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox, box_quad

DEBIAN_PACKAGES = "tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng"
CHILD_ENV = {"OMP_THREAD_LIMIT": "1"}  # what the binary gets on top of this process's environment
TIMEOUT_S = 60.0                       # one picture; a hung binary is an error, not a hung job


def _missing() -> ConfigError:
    return ConfigError(f"tesseract is not installed; install the Debian packages {DEBIAN_PACKAGES} "
                       f"(apt-get install {DEBIAN_PACKAGES})")


class TesseractEngine(OcrEngine):
    """Options: ``lang`` ("fra+eng"), ``scale`` (3.0), ``psm`` (page segmentation mode; 11 = sparse
    text, suited to covers), ``min_confidence`` (0-100; words below are dropped), ``command`` (the
    binary; default: ``tesseract`` on the PATH).

    >>> engine = load_engine("tesseract", lang="eng")
    >>> boxes = engine.read([picture])[0]
    >>> [(b.text, round(b.confidence, 2)) for b in boxes]
    """

    name = "tesseract"

    def __init__(self, lang: str = "fra+eng", scale: float = 3.0, psm: int = 11, min_confidence: float = 0.0,
                 command: str = "tesseract"):
        super().__init__(lang=lang, scale=scale, psm=psm, min_confidence=min_confidence)
        self.command = shutil.which(command)
        if self.command is None:
            raise _missing()
        self._env = {**os.environ, **CHILD_ENV}
        self._version = self._run(["--version"]).split()[1]
        listed = self._run(["--list-langs"]).splitlines()[1:]  # the first line names the folder
        missing = [code for code in lang.split("+") if code not in {x.strip() for x in listed}]
        if missing:
            pkgs = " ".join(f"tesseract-ocr-{m}" for m in missing)
            raise ConfigError(f"tesseract has no language {', '.join(missing)}; install the Debian package {pkgs}")
        self.lang, self.scale, self.psm, self.min_confidence = lang, scale, psm, min_confidence

    @property
    def version(self) -> str:
        return f"tesseract-{self._version}"

    def _run(self, args: list[str], stdin: bytes | None = None) -> str:
        """The binary's stdout for ``args`` (its own environment); a failure is a ``ConfigError`` with its
        message."""
        try:
            res = subprocess.run([self.command, *args], input=stdin, capture_output=True, env=self._env,
                                 timeout=TIMEOUT_S, check=False)
        except FileNotFoundError:
            raise _missing() from None
        except subprocess.TimeoutExpired:
            raise ConfigError(f"tesseract {' '.join(args[:2])}: no answer within {TIMEOUT_S:.0f} s") from None
        out = res.stdout.decode("utf-8", "replace")
        if res.returncode != 0:
            err = res.stderr.decode("utf-8", "replace").strip().splitlines()
            raise ConfigError(f"tesseract {' '.join(args[:2])} failed (exit {res.returncode}): "
                              f"{err[-1] if err else 'no message'}")
        # --version and --list-langs print to stdout or stderr depending on the release
        return out or res.stderr.decode("utf-8", "replace")

    def _words(self, img: Image.Image) -> list[dict]:
        """Tesseract's TSV rows (word level and above) for one picture."""
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        tsv = self._run(["stdin", "stdout", "-l", self.lang, "--psm", str(self.psm), "tsv"], buf.getvalue())
        return list(csv.DictReader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE))

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        out = []
        s = self.scale
        for pic in pictures:
            h, w = pic.shape[:2]
            img = Image.fromarray(pic).convert("L")
            if s != 1:
                img = img.resize((int(w * s), int(h * s)), Image.BICUBIC)
            boxes = []
            for row in self._words(img):
                text = (row.get("text") or "").strip()
                conf = float(row.get("conf") or -1)
                if not text or conf < max(0.0, self.min_confidence):
                    continue
                x, y, bw, bh = (int(row[k]) for k in ("left", "top", "width", "height"))
                boxes.append(TextBox(text, conf / 100.0, box_quad(x / s, y / s, (x + bw) / s, (y + bh) / s), None))
            out.append(boxes)
        return out
