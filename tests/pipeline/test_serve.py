"""`etalage serve` over the real classifier: the served top-1 equals `etalage submit`'s for the session's
synthetic test products (the same fusion model and OCR cache). Skipped until
``etalage.pipeline.classify`` is there."""

import pytest

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")
pytest.importorskip("etalage.pipeline.classify", reason="the pipeline's Classifier is not there yet")
from fastapi.testclient import TestClient  # noqa: E402

from etalage.catalog import Catalog  # noqa: E402
from etalage.catalog.submission import read_id_category_csv  # noqa: E402
from etalage.serve import ModelSource, ServeSettings, create_app  # noqa: E402


def test_served_answers_are_submits(fitted_pipeline):
    fitted, synth_dir, _ = fitted_pipeline
    ids, categories = read_id_category_csv(fitted / "sub.csv")
    submitted = dict(zip(ids.tolist(), categories.tolist(), strict=True))
    catalog = Catalog.open(synth_dir / "test.bson")
    source = ModelSource(fusion=str(fitted / "fusion"), ocr_cache=str(fitted / "ocr.sqlite"))
    with TestClient(create_app(source, ServeSettings(load_before_serving=True, max_products=1000))) as client:
        batch = [catalog[i] for i in range(len(catalog))]
        files = [(f"picture.{n}", (f"{k}.jpg", pic, "image/jpeg"))
                 for n, product in enumerate(batch) for k, pic in enumerate(product.pictures)]
        data = {f"id.{n}": str(product.product_id) for n, product in enumerate(batch)}
        r = client.post("/v1/classify/batch", files=files, data=data)
    assert r.status_code == 200, r.text
    served = {p["id"]: p["categories"][0]["category_id"] for p in r.json()["products"]}
    assert served == {p.product_id: submitted[p.product_id] for p in batch}
