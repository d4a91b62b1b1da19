"""The vectorised signals against brute force on small random data."""

import numpy as np
import pytest

from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, neighbour_ks


def _runs(rng, n, n_classes):
    ids = np.sort(rng.choice(10_000, n, replace=False)).astype(np.int64)
    classes = np.repeat(rng.integers(0, n_classes, n // 5 + 1), 5)[:n]
    return ids, classes


def _brute_id(ids, classes, q, c, k, exclude_self):
    order = np.argsort(ids)
    ids, classes = ids[order], classes[order]
    keep = ids != q if exclude_self else np.ones(len(ids), bool)
    ids_k, cls_k = ids[keep], classes[keep]
    pos = np.searchsorted(ids_k, q)
    start = int(np.clip(pos - k // 2, 0, max(0, len(ids_k) - k)))
    window = cls_k[start:start + k]
    share = (window == c).sum() / max(1, len(window))
    of_c = ids_k[cls_k == c]
    dist = np.abs(of_c - q).min() if len(of_c) else np.inf
    return share, dist


@pytest.mark.parametrize("exclude_self", [False, True])
def test_id_neighbour_prior_matches_brute_force(exclude_self):
    rng = np.random.default_rng(0)
    ids, classes = _runs(rng, 300, 12)
    prior = IdNeighbourPrior.fit(ids, classes)
    if exclude_self:
        q = rng.choice(ids, 200)
    else:
        q = rng.integers(0, 10_000, 200)
    c = rng.integers(0, 12, 200)
    ks = [5, 40]
    feats = prior.features(q, c, ks, exclude_self=exclude_self)
    for i in range(200):
        for k in ks:
            share, dist = _brute_id(ids, classes, q[i], c[i], k, exclude_self)
            assert feats[f"id_share_k{k}"][i] == pytest.approx(share, abs=1e-6), (i, k)
        assert feats["id_distance"][i] == pytest.approx(dist), i


def test_id_prior_is_informative_on_runs():
    rng = np.random.default_rng(1)
    ids, classes = _runs(rng, 2000, 50)
    prior = IdNeighbourPrior.fit(ids, classes)
    feats = prior.features(ids, classes, [10], exclude_self=True)
    wrong = prior.features(ids, (classes + 1) % 50, [10], exclude_self=True)
    assert feats["id_share_k10"].mean() > 5 * wrong["id_share_k10"].mean()
    assert neighbour_ks(7_069_896) == [4949, 49489, 212097]


def test_picture_hash_features_match_brute_force():
    rng = np.random.default_rng(2)
    n_train_pics, n_md5 = 400, 60
    train_md5_ids = rng.integers(0, n_md5, n_train_pics)
    table = rng.integers(0, 256, (n_md5, 16)).astype(np.uint8)
    train_cls = (train_md5_ids % 7 + (rng.random(n_train_pics) < 0.2) * rng.integers(0, 7, n_train_pics)) % 7
    index = PictureHashIndex.fit(table[train_md5_ids], train_cls)
    # queries: 30 products with 1-3 pictures each, some unseen pictures
    owner = np.repeat(np.arange(30), rng.integers(1, 4, 30))
    q_ids = rng.integers(0, n_md5 + 20, len(owner))
    q_md5 = np.concatenate([table, rng.integers(0, 256, (20, 16)).astype(np.uint8)])[q_ids]
    cand_owner = np.repeat(np.arange(30), 4)
    cand_cls = rng.integers(0, 7, len(cand_owner))
    f = index.features(q_md5, owner, cand_owner, cand_cls)
    for i, (p, c) in enumerate(zip(cand_owner, cand_cls, strict=True)):
        with_c, shares, mins = 0, [0.0], []
        for m in q_ids[owner == p]:
            occ = train_cls[train_md5_ids == m] if m < n_md5 else np.zeros(0)
            if (occ == c).any():
                with_c += 1
                mins.append(len(np.unique(occ)))
            shares.append((occ == c).mean() if len(occ) else 0.0)
        assert f["hash_pictures_with_class"][i] == with_c
        assert f["hash_max_share"][i] == pytest.approx(max(shares), abs=1e-6)
        assert f["hash_min_classes"][i] == (min(mins) if mins else 0)


def test_picture_hash_excludes_the_product_itself():
    md5 = np.array([[1] * 16, [2] * 16], np.uint8)
    index = PictureHashIndex.fit(md5[[0, 0, 1]], np.array([3, 4, 3]))
    # a training product holding picture 1 with class 3: its own occurrence must not count
    f = index.features(md5[[1]], np.array([0]), np.array([0, 0]), np.array([3, 4]), picture_own_class=np.array([3]))
    assert f["hash_pictures_with_class"].tolist() == [0.0, 0.0]
    g = index.features(md5[[0]], np.array([0]), np.array([0]), np.array([4]), picture_own_class=np.array([3]))
    assert g["hash_pictures_with_class"][0] == 1 and g["hash_max_share"][0] == pytest.approx(1 / 1)
