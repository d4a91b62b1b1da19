#!/usr/bin/env bash
# Check that pip alone gives a working etalage: build the sdist and the wheel (from a copy of the sources),
# `twine check` them, install PyTorch (TORCH_SPEC) and then the wheel, its dependencies from the registry, into a
# clean virtual environment, `pip check` it, and run a small demo with the default reading (RapidOCR + EasyOCR).
# Needs the package registry (PyPI) and several GB under TMPDIR (PyTorch alone is ~5.5 GB); takes several
# minutes. Everything it makes is deleted at the end, unless KEEP=1.
#
#   bash scripts/check_wheel.sh            # PRODUCTS=600 MINUTES=1 by default
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}  # as scripts/setup.sh
PRODUCTS=${PRODUCTS:-600}
MINUTES=${MINUTES:-1}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/etalage-wheel.XXXXXX")
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
START=$SECONDS
say() { echo "check_wheel [$((SECONDS - START)) s]: $*" >&2; }
trap 'echo "check_wheel: FAILED at line $LINENO: $BASH_COMMAND" >&2' ERR

# The sources pip would see, without this checkout's venv and build leftovers (a build writes build/ and
# *.egg-info/ beside them).
mkdir -p "$WORK/src"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    if [ -e "$f" ]; then cp --parents -t "$WORK/src" "$f"; fi
  done
else
  tar --exclude=.venv --exclude=build --exclude=dist --exclude='*.egg-info' -cf - . | tar -xf - -C "$WORK/src"
fi

say "building the sdist and the wheel"
"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/python" -m pip --disable-pip-version-check -q install build twine
"$WORK/tools/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 || {
  tail -30 "$WORK/build.log" >&2; exit 1; }
"$WORK/tools/bin/twine" check --strict "$WORK"/dist/*
WHEEL=$(ls "$WORK"/dist/etalage-*.whl)
say "built $(basename "$WHEEL") ($(du -k "$WHEEL" | cut -f1) kB)"

say "clean venv: $TORCH_SPEC, then the wheel with its dependencies"
"$PYTHON" -m venv "$WORK/venv"
PIP=("$WORK/venv/bin/python" -m pip --disable-pip-version-check -q)
# shellcheck disable=SC2086
"${PIP[@]}" install $TORCH_SPEC
"${PIP[@]}" install "$WHEEL"
"$WORK/venv/bin/python" -m pip --disable-pip-version-check check  # not quiet: -q would hide what conflicts
"$WORK/venv/bin/python" -m pip --disable-pip-version-check list 2>/dev/null |
  grep -iE '^(etalage|rapidocr|onnxruntime|opencv[-a-z]*|easyocr|torch) ' >&2

cd "$WORK"  # not the checkout: its etalage/ folder would shadow the installed package
say "the default reading"
"$WORK/venv/bin/python" - <<'PY'
import etalage
from etalage.ocr import load_engine

assert "site-packages" in etalage.__file__, etalage.__file__
key = load_engine().cache_key
print("default reading:", key)
assert key.startswith("ensemble/rapidocr-3.") and "+easyocr-" in key, key
PY

DEMO=(demo --out "$WORK/demo" --products "$PRODUCTS")
if "$WORK/venv/bin/etalage" demo --help | grep -q -- --max-minutes; then DEMO+=(--max-minutes "$MINUTES")
else DEMO+=(--minutes "$MINUTES"); fi
say "etalage ${DEMO[*]}"
"$WORK/venv/bin/etalage" "${DEMO[@]}"
KEYS=$(grep -rhoE '"engine_key": "[^"]+"' "$WORK/demo/specialists" | sort -u)
echo "$KEYS" >&2
grep -q 'rapidocr-3\.[^"]*+easyocr-' <<<"$KEYS" || { echo "check_wheel: the specialists did not read with the default reading" >&2; exit 1; }
say "ok: pip alone gives a working etalage"
