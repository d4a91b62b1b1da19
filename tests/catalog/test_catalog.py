import io
import multiprocessing as mp
import pickle

import numpy as np
import pytest
from PIL import Image

from etalage.catalog import Catalog, DecodeStats, random_crop
from etalage.catalog.pictures import CorruptPicture, decode_picture
from etalage.chunks import parse_shard
from etalage.errors import DataError


def test_random_access_by_position_and_id(synth_dir):
    cat = Catalog.open(synth_dir / "train.bson")
    last = cat[len(cat) - 1]
    assert cat[-1] == last
    assert cat.get(last.product_id) == last
    assert cat.position_of(cat[3].product_id) == 3
    with pytest.raises(DataError, match="no product with _id -5"):
        cat.get(-5)
    with pytest.raises(IndexError):
        cat[len(cat)]


def test_shards_partition_in_file_order(synth_dir):
    cat = Catalog.open(synth_dir / "train.bson")
    parts = [list(cat.shard(i, 3)) for i in range(3)]
    assert sum(parts, []) == list(range(len(cat)))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "a/b", "1"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def _first_ids(cat):
    return [cat[i].product_id for i in range(3)]


def test_catalog_pickles_and_works_in_worker_processes(synth_dir):
    cat = Catalog.open(synth_dir / "train.bson")
    cat[0]  # open the map in the parent first: children must not reuse it
    clone = pickle.loads(pickle.dumps(cat))
    assert clone[5] == cat[5]
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_first_ids, [cat, cat]) == [_first_ids(cat)] * 2


def test_decode_pictures_and_crops(synth_dir):
    cat = Catalog.open(synth_dir / "train.bson")
    stats = DecodeStats()
    pics = cat.decode(0, stats)
    assert pics and all(p.shape == (180, 180, 3) and p.dtype == np.uint8 for p in pics)
    assert stats.decoded == len(pics) and stats.corrupt == 0
    rng = np.random.default_rng(0)
    crops = [random_crop(pics[0], 160, rng) for _ in range(8)]
    assert all(c.shape == (160, 160, 3) for c in crops)
    assert len({c.tobytes() for c in crops}) > 1, "crops move"
    small = np.zeros((50, 60, 3), np.uint8)
    assert random_crop(small, 64, rng).shape == (64, 64, 3)


def test_corrupt_jpeg_is_counted_not_fatal(tmp_path):
    import bson

    good = io.BytesIO()
    Image.new("RGB", (180, 180), (10, 20, 30)).save(good, format="JPEG")
    docs = [{"_id": 42, "imgs": [{"picture": b"\xff\xd8garbage"}, {"picture": good.getvalue()}], "category_id": 1}]
    path = tmp_path / "c.bson"
    path.write_bytes(b"".join(bson.encode(d) for d in docs))
    cat = Catalog.open(path)
    stats = DecodeStats()
    pics = cat.decode(0, stats)
    assert len(pics) == 1 and stats.corrupt == 1 and stats.examples == [(42, 0)]
    assert "42#0" in stats.summary()
    with pytest.raises(CorruptPicture):
        decode_picture(b"not a jpeg")
