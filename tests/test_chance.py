"""Chance levels equal the metrics of random rankings, averaged over many draws."""

from __future__ import annotations

import numpy as np
import pytest

from atr_core.evaluation.chance import a2t_chance, chance_levels, t2a_chance
from atr_core.evaluation.metrics import retrieval_metrics


@pytest.mark.parametrize("captions", [[5] * 18, [5] * 62, [1] * 30, [5, 2, 3, 5, 1, 4, 5, 5]])
def test_chance_equals_the_mean_metrics_of_random_similarities(captions):
    rng = np.random.default_rng(0)
    owner = np.repeat(np.arange(len(captions)), captions)
    runs = [retrieval_metrics(rng.random((len(owner), len(captions))), owner) for _ in range(3000)]
    chance = chance_levels(captions)
    for d in ("t2a", "a2t"):
        for k in ("R1", "R5", "R10", "MeanR"):
            mean = np.mean([r[d][k] for r in runs])
            sem = np.std([r[d][k] for r in runs]) / np.sqrt(len(runs))
            assert abs(mean - chance[d][k]) < 5 * sem + 1e-9, (d, k, mean, chance[d][k])


def test_closed_forms():
    c = t2a_chance(18)
    assert c["R10"] == pytest.approx(100 * 10 / 18) and c["R1"] == pytest.approx(100 / 18)
    assert c["MedR"] == c["MeanR"] == pytest.approx(9.5)
    assert t2a_chance(5)["R10"] == pytest.approx(100.0)  # K beyond the pool: everything is found
    a = a2t_chance([5] * 62)
    assert a["MeanR"] == pytest.approx((310 + 1) / (5 + 1))
    assert a["R1"] == pytest.approx(100 * 5 / 310)
    with pytest.raises(ValueError):
        a2t_chance([0, 0])
