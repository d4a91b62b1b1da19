import numpy as np
import pytest

from etalage.bench.core import paired_top1


def test_paired_top1_counts_the_products_only_one_side_gets_right():
    truth = np.array([0, 1, 2, 3, 4, 5])
    a = np.array([0, 1, 9, 9, 4, 9])   # right on 0, 1, 4
    b = np.array([0, 9, 2, 3, 4, 9])   # right on 0, 2, 3, 4
    pair = paired_top1(truth, a, b)
    assert (pair["only_reference"], pair["only_candidate"]) == (1, 2)
    assert pair["delta"] == pytest.approx(1 / 6)
    assert pair["p"] == pytest.approx(1.0)  # 2 of 3 leans nowhere


def test_paired_top1_sign_test_sees_a_one_sided_lean():
    truth = np.zeros(40, np.int64)
    a = np.ones(40, np.int64)
    b = a.copy()
    b[:12] = 0                          # 12 products only b gets right, none only a
    assert paired_top1(truth, a, b)["p"] < 0.001
    same = paired_top1(truth, a, a)
    assert (same["only_reference"], same["only_candidate"], same["p"]) == (0, 0, 1.0)
