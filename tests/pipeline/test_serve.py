"""`etalage serve` over the real classifier: the served top-1 and probabilities equal `etalage submit`'s for the
session's synthetic test products (the same fusion model and OCR cache)."""

import pytest

pytest.importorskip("fastapi", reason="etalage serve needs FastAPI: pip install 'etalage[serve]'")
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
    products = r.json()["products"]
    served = {p["id"]: p["categories"][0]["category_id"] for p in products}
    assert served == {p.product_id: submitted[p.product_id] for p in batch}
    # and the same probabilities: submit's fused scores of the same products, read as the served ones are
    from etalage.fusion.model import FusionModel
    from etalage.pipeline.predict import load_fused
    from etalage.pipeline.workdir import WorkDir

    fused = load_fused(WorkDir(fitted / "sub_work"))
    probs = FusionModel.load(fitted / "fusion").probabilities(fused["topk_score"])
    row = {int(pid): i for i, pid in enumerate(fused["product_ids"])}
    for p in products:
        i = row[int(p["id"])]
        want = [float(q) for c, q in zip(fused["topk_class"][i], probs[i], strict=True) if c >= 0]
        got = [c["probability"] for c in p["categories"]]
        assert len(got) == len(want) and max(abs(a - b) for a, b in zip(got, want, strict=True)) < 1e-3, p["id"]
