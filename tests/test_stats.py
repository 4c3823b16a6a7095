import math

import pytest

from cnnlab.stats import mcnemar, mean_std, paired_ci


def test_mean_std_hand_computed():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == (2.5, pytest.approx(math.sqrt(5 / 3)))
    assert mean_std([7.0]) == (7.0, 0.0)


def test_paired_ci_hand_computed():
    r = paired_ci([1, 2, 3], [2, 4, 6])          # differences 1, 2, 3: mean 2, sd 1
    assert r["mean"] == 2 and r["std"] == 1
    assert r["ci_low"] == pytest.approx(2 - 4.303 / math.sqrt(3))


def test_mcnemar_exact():
    # 1 vs 9 discordant: p = 2 * (C(10,0)+C(10,1)) / 2^10 = 22/1024
    a = [True] * 1 + [False] * 9 + [True] * 50
    b = [False] * 1 + [True] * 9 + [True] * 50
    r = mcnemar(a, b)
    assert (r["only_a"], r["only_b"]) == (1, 9) and r["p_value"] == pytest.approx(22 / 1024)
    assert mcnemar([True, False], [True, False])["p_value"] == 1.0
