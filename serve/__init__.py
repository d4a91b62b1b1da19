"""Serving: classify a product the moment it is listed, over HTTP (FastAPI), on one machine or on Ray Serve.

    listing (multipart: 1-4 pictures, title, id) -> Guard (key, size, time) -> form checks + bounded
    picture decoding -> Batcher (concurrent requests gathered into one classify call) -> top-5 JSON

``create_app`` needs FastAPI (``pip install 'etalage[serve]'``): it is imported on first use, so the
settings and model types here load without it. docs/serving.md describes the API.
"""

from __future__ import annotations

from etalage.serve.model import Category, Classifier, Listing, ModelSource, Proposal
from etalage.serve.settings import ServeSettings

SERVE_MISSING = "etalage serve needs FastAPI and uvicorn: pip install 'etalage[serve]' (scripts/setup.sh installs it)"

__all__ = ["Category", "Classifier", "Listing", "ModelSource", "Proposal", "ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from etalage.serve.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
