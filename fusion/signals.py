"""Signals the CNN cannot see, as features of (product, candidate class) pairs, fully vectorised.

- Product-id neighbours: Cdiscount assigned ids in runs, so the classes of the training products
  with the nearest ids are a strong prior (5th place of 2017). For each pair: the class's share among
  the k nearest training ids, for several k, and the id distance to the nearest training product of
  the class. One ``searchsorted`` over keys ``class * 2**40 + id`` (or id rank) answers every pair
  at once; no Python loop over products or training data.
- Picture hashes: 42% of test products share an exact picture (MD5) with training. For each pair:
  how many of the product's pictures occur in training with the class, the largest share of a
  picture's training occurrences that carry the class, and how many classes share the picture
  (placeholders span hundreds and must weigh little).

When the queried products are training products themselves (fusion trains on held-out training
products), ``exclude_self`` removes each product's own contribution, so no feature leaks its label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from etalage.catalog.bsonindex import ranks_within
from etalage.core.ranking import pack_pairs, unpack_pairs

_SHIFT = np.int64(2**40)  # product ids are < 2**40; class indices < 2**23


def neighbour_ks(n_train: int, fractions=(0.0007, 0.007, 0.03), minimum: int = 5) -> list[int]:
    """Window sizes scaled to the training set: about 5k, 50k and 210k ids on the real 7.07M."""
    return sorted({max(minimum, int(round(f * n_train))) for f in fractions})


@dataclass
class IdNeighbourPrior:
    """Training products sorted by id, with their classes, ready for vectorised queries."""

    ids: np.ndarray      # (N,) int64 sorted
    classes: np.ndarray  # (N,) int32, aligned with ids
    by_class_rank: np.ndarray  # sorted keys class * 2**40 + rank (rank = position in ids)
    by_class_id: np.ndarray    # sorted keys class * 2**40 + id

    @classmethod
    def fit(cls, product_ids: np.ndarray, classes: np.ndarray) -> IdNeighbourPrior:
        order = np.argsort(product_ids, kind="stable")
        ids = np.asarray(product_ids, np.int64)[order]
        cl = np.asarray(classes, np.int64)[order]
        rank = np.arange(len(ids), dtype=np.int64)
        return cls(ids, cl.astype(np.int32), np.sort(cl * _SHIFT + rank), np.sort(cl * _SHIFT + ids))

    def _window_share(self, c: np.ndarray, pos: np.ndarray, is_self: np.ndarray, own_class: np.ndarray,
                      k: int) -> np.ndarray:
        """Share of class ``c`` among the k training ids around position ``pos`` (the query itself,
        when it is a training product, left out)."""
        n = len(self.ids)
        width = k + is_self.astype(np.int64)  # k + 1 ids when the query itself is inside the window
        start = np.clip(pos - k // 2, 0, np.maximum(0, n - width))
        end = np.minimum(start + width, n)
        count = (np.searchsorted(self.by_class_rank, c * _SHIFT + end)
                 - np.searchsorted(self.by_class_rank, c * _SHIFT + start))
        count = count - (own_class == c)
        return (count / np.maximum(1, end - start - is_self)).astype(np.float32)

    def seen_nearby(self, query_ids: np.ndarray, cand_classes: np.ndarray, k: int,
                    exclude_self: bool = False) -> np.ndarray:
        """Whether each pair's class occurs among the k training ids nearest the query (cheap: the
        evidence test that prunes candidates before the full features)."""
        return self.features(query_ids, cand_classes, [k], exclude_self, distance=False)[f"id_share_k{k}"] > 0

    def features(self, query_ids: np.ndarray, cand_classes: np.ndarray, ks: list[int],
                 exclude_self: bool = False, distance: bool = True) -> dict[str, np.ndarray]:
        """Per pair (``query_ids[i]``, ``cand_classes[i]``): ``id_share_k{k}`` for each k and
        ``id_distance`` (to the nearest training product of the class; inf when none)."""
        q0 = np.asarray(query_ids, np.int64)
        c0 = np.asarray(cand_classes, np.int64)
        n = len(self.ids)
        pos0 = np.searchsorted(self.ids, q0)
        # Every later search is over class-major keys; asking them in (class, position) order keeps
        # the searches' memory accesses local (4x faster on a million training products).
        order = np.argsort(c0 * _SHIFT + pos0)
        q, c, pos = q0[order], c0[order], pos0[order]
        is_self = np.zeros(len(q), bool)
        own_class = np.full(len(q), -1, np.int64)
        if exclude_self:
            at = np.minimum(pos, n - 1)
            is_self = self.ids[at] == q
            own_class = np.where(is_self, self.classes[at], -1)
        out = {f"id_share_k{k}": self._window_share(c, pos, is_self, own_class, k) for k in ks}
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        if not distance:
            return {name: v[back] for name, v in out.items()}
        key = c * _SHIFT + q
        left = np.searchsorted(self.by_class_id, key, side="left")
        right = np.searchsorted(self.by_class_id, key, side="right") if exclude_self else left
        dist = np.full(len(q), np.inf)
        for idx in (right, left - 1):
            ok = (idx >= 0) & (idx < n)
            near = self.by_class_id[np.clip(idx, 0, n - 1)]
            ok &= (near // _SHIFT) == c
            d = np.abs(near % _SHIFT - q).astype(np.float64)
            dist = np.where(ok, np.minimum(dist, d), dist)
        out["id_distance"] = dist.astype(np.float32)
        return {name: v[back] for name, v in out.items()}


def md5_keys(md5: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 MD5s -> int64 keys (first 8 bytes; a collision in 12M pictures has odds ~1e-5)."""
    return np.ascontiguousarray(md5[:, :8]).view("<i8").ravel()


@dataclass
class PictureHashIndex:
    """How often each training picture (by MD5) occurs with each class."""

    md5_keys: np.ndarray      # (M,) sorted unique picture keys
    md5_total: np.ndarray     # (M,) training occurrences of each picture
    md5_classes: np.ndarray   # (M,) distinct classes of each picture
    pairs: np.ndarray         # sorted keys picture_number << 23 | class
    pair_counts: np.ndarray   # occurrences of each (picture, class)

    @classmethod
    def fit(cls, picture_md5: np.ndarray, picture_class: np.ndarray) -> PictureHashIndex:
        keys = md5_keys(picture_md5)
        uk, inverse, totals = np.unique(keys, return_inverse=True, return_counts=True)
        pair = pack_pairs(inverse, picture_class)
        pairs, counts = np.unique(pair, return_counts=True)
        n_classes = np.bincount(unpack_pairs(pairs)[0], minlength=len(uk))
        return cls(uk, totals.astype(np.int64), n_classes.astype(np.int64), pairs, counts.astype(np.int64))

    def known(self, picture_md5: np.ndarray) -> np.ndarray:
        """Whether each picture (by MD5) occurs among the training pictures."""
        keys = md5_keys(picture_md5)
        if not len(self.md5_keys):
            return np.zeros(len(keys), bool)
        at = np.searchsorted(self.md5_keys, keys).clip(0, len(self.md5_keys) - 1)
        return self.md5_keys[at] == keys

    def features(self, picture_md5: np.ndarray, picture_owner: np.ndarray, cand_owner: np.ndarray,
                 cand_classes: np.ndarray, picture_own_class: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Per candidate pair: ``hash_pictures_with_class``, ``hash_max_share``, ``hash_min_classes``.

        ``picture_owner[j]`` is the query product (row number) of picture j; ``cand_owner[i]`` the
        product of candidate i. ``picture_own_class`` (training queries) removes each picture's own
        occurrence from the counts.
        """
        keys = md5_keys(picture_md5)
        # Expand to (candidate, picture of the same product) pairs, without a Python loop.
        picture_owner = np.asarray(picture_owner)
        if np.all(picture_owner[1:] >= picture_owner[:-1]):  # the usual case: pictures in product order
            order = np.arange(len(picture_owner))
        else:
            order = np.argsort(picture_owner, kind="stable")
        owners_sorted = picture_owner[order]
        lo = np.searchsorted(owners_sorted, cand_owner, side="left")
        reps = np.searchsorted(owners_sorted, cand_owner, side="right") - lo
        cand_idx = np.repeat(np.arange(len(cand_owner)), reps)
        pic_idx = order[np.repeat(lo, reps) + ranks_within(reps)]
        cls = np.asarray(cand_classes, np.int64)[cand_idx]
        # Each picture is looked up once, then spread over its product's candidates; the (picture,
        # class) search runs only for pictures training has seen, in sorted order (local accesses).
        pic_m = np.searchsorted(self.md5_keys, keys).clip(0, max(0, len(self.md5_keys) - 1))
        pic_known = (self.md5_keys[pic_m] == keys) if len(self.md5_keys) else np.zeros(len(keys), bool)
        m, known = pic_m[pic_idx], pic_known[pic_idx]
        total = np.where(known, self.md5_total[m], 0)
        n_classes = np.where(known, self.md5_classes[m], 0)
        with_class = np.zeros(len(m), np.int64)
        look = np.flatnonzero(known)
        if len(look):
            pair = pack_pairs(m[look], cls[look])
            order_pairs = np.argsort(pair)
            at = np.empty(len(look), np.int64)
            at[order_pairs] = np.searchsorted(self.pairs, pair[order_pairs])
            at = at.clip(0, len(self.pairs) - 1)
            with_class[look] = np.where(self.pairs[at] == pair, self.pair_counts[at], 0)
        if picture_own_class is not None:
            own_match = known & (np.asarray(picture_own_class, np.int64)[pic_idx] == cls)
            total = total - known
            with_class = with_class - own_match
            # a picture seen with this class only through the product itself no longer counts the class
            n_classes = np.where(own_match & (with_class == 0), n_classes - 1, n_classes)
        share = np.where(total > 0, with_class / np.maximum(1, total), 0.0)
        # Reduce over each candidate's pictures: they are contiguous (cand_idx ascending).
        n = len(cand_owner)
        has = reps > 0
        starts = (np.cumsum(reps) - reps)[has]
        out_with = np.zeros(n, np.float32)
        out_share = np.zeros(n, np.float32)
        out_min = np.full(n, np.inf, np.float32)
        if len(starts):
            out_with[has] = np.add.reduceat((with_class > 0).astype(np.float32), starts)
            out_share[has] = np.maximum.reduceat(share.astype(np.float32), starts)
            out_min[has] = np.minimum.reduceat(np.where(with_class > 0, n_classes, np.inf).astype(np.float32), starts)
        return {"hash_pictures_with_class": out_with, "hash_max_share": out_share,
                "hash_min_classes": np.where(np.isinf(out_min), 0, out_min).astype(np.float32)}


@dataclass
class TrainingSignals:
    """Everything the second level knows about the training set: the id-neighbour prior, the picture
    hash index, the window sizes and the classes' global frequency. Built in seconds from the
    training file's index and MD5s (``etalage hash``), so it is rebuilt rather than stored."""

    id_prior: IdNeighbourPrior
    hash_index: PictureHashIndex
    ks: list[int]
    class_frequency: np.ndarray   # (n_classes,) float32 share of training products

    @classmethod
    def build(cls, product_ids: np.ndarray, classes: np.ndarray, picture_md5: np.ndarray,
              n_pictures: np.ndarray, n_classes: int, ks: list[int] | None = None) -> TrainingSignals:
        """``classes``: taxonomy index per training product; ``picture_md5`` in file order, ``n_pictures``
        per product."""
        classes = np.asarray(classes, np.int64)
        pic_class = np.repeat(classes, np.asarray(n_pictures, np.int64))
        freq = (np.bincount(classes, minlength=n_classes) / max(1, len(classes))).astype(np.float32)
        return cls(IdNeighbourPrior.fit(product_ids, classes), PictureHashIndex.fit(picture_md5, pic_class),
                   list(ks) if ks else neighbour_ks(len(classes)), freq)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return (HASH_FEATURE_NAMES + tuple(f"id_share_k{k}" for k in self.ks) + ("id_distance", "class_frequency"))


HASH_FEATURE_NAMES = ("hash_pictures_with_class", "hash_max_share", "hash_min_classes")


# ---------------------------------------------------------------------------------------------
# the signal groups a reranker can be fitted without, and the check that ids carry no labels


LEAVABLE_SIGNALS = ("ensemble", "neighbours", "hash", "id", "specialists")
ID_ORDER_WARN = 0.5  # share of products whose id-order neighbour has their category (and 3x chance) above which
                     # ids look numbered category by category


def check_without(without) -> tuple[str, ...]:
    """The signal groups of ``--without`` (a list, or one comma-separated string), checked."""
    from etalage.errors import ConfigError

    if isinstance(without, str):
        without = without.split(",")
    out = tuple(dict.fromkeys(w.strip() for w in without if w.strip()))
    bad = [w for w in out if w not in LEAVABLE_SIGNALS]
    if bad:
        raise ConfigError(f"--without {','.join(bad)}: unknown signal (one of {', '.join(LEAVABLE_SIGNALS)}; the "
                          f"core's own features always stay)")
    return out


def id_order_share(product_ids: np.ndarray, labels: np.ndarray) -> float:
    """Share of products whose next product in id order has the same category: about the share of the
    largest categories where ids carry no order (Cdiscount's sample: 7%), near 1 where ids were numbered
    category by category."""
    if len(product_ids) < 2:
        return 0.0
    order = np.argsort(product_ids, kind="stable")
    same = labels[order][1:] == labels[order][:-1]
    return float(same.mean())


def chance_share(labels: np.ndarray) -> float:
    """What ``id_order_share`` gives when ids carry no order: the chance that two products share a
    category (the sum of the squared category shares)."""
    p = np.bincount(np.asarray(labels, np.int64)) / max(1, len(labels))
    return float((p ** 2).sum())


def ids_look_ordered(product_ids: np.ndarray, labels: np.ndarray) -> tuple[bool, float, float]:
    """Whether ids look numbered category by category (``id_order_share`` over ``ID_ORDER_WARN`` and 3x
    chance), with the share and the chance share."""
    share, chance = id_order_share(product_ids, labels), chance_share(labels)
    return share > max(ID_ORDER_WARN, 3 * chance), share, chance


def id_interleave_share(query_ids: np.ndarray, train_ids: np.ndarray, queries_are_training: bool = False) -> float:
    """Share of ``query_ids`` with a training id close on each side (within ten times the median gap between
    neighbouring training ids): where the id prior sees the training products around a product. About 1 for
    products numbered among the training ones (Cdiscount's test set; fusion's own held-out products, each
    measured without itself: ``queries_are_training``), about 0 for new listings numbered after them (a
    catalogue's next batch, GroceryStore's test part)."""
    t = np.unique(np.asarray(train_ids, np.int64))
    q = np.asarray(query_ids, np.int64)
    if len(t) < 3 or not len(q):
        return 0.0
    limit = 10 * max(1.0, float(np.median(np.diff(t))))
    left_at = np.searchsorted(t, q, side="left") - 1
    right_at = np.searchsorted(t, q, side="right")
    if not queries_are_training:  # a test id equal to a training id is between its neighbours too
        right_at = np.where((left_at + 1 < len(t)) & (t[np.minimum(left_at + 1, len(t) - 1)] == q), left_at + 1,
                            right_at)
    ok = (left_at >= 0) & (right_at < len(t))
    near = np.zeros(len(q), bool)
    li, ri = left_at[ok], right_at[ok]
    near[ok] = (q[ok] - t[li] <= limit) & (t[ri] - q[ok] <= limit)
    return float(near.mean())
