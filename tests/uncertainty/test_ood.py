"""OOD detection: AUROC extremes and the report over uncertainty measures."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dualfuse.uncertainty import ood_auroc, ood_report, uncertainty_measures


def test_auroc_separated_identical_and_reversed():
    assert ood_auroc([0.1, 0.2, 0.3], [0.7, 0.8]) == 1.0
    assert ood_auroc([0.5, 0.5, 0.5], [0.5, 0.5]) == 0.5
    assert ood_auroc([0.7, 0.8], [0.1, 0.2, 0.3]) == 0.0
    # 1 of the 4 (in, out) pairs is ordered wrongly.
    assert ood_auroc([0.1, 0.6], [0.5, 0.9]) == pytest.approx(0.75)


def test_report_on_uncertainty_measures():
    rng = np.random.default_rng(0)
    # In-distribution: confident samples that agree; OOD: near-uniform, disagreeing samples.
    sure = np.tile([0.9, 0.05, 0.05], (5, 40, 1))
    unsure = rng.dirichlet(np.ones(3), size=(5, 30))
    report = ood_report(uncertainty_measures(sure), uncertainty_measures(unsure),
                        keys=("predictive_entropy", "mutual_information", "variation_ratio"))
    json.dumps(report)
    assert report["n_in"] == 40 and report["n_out"] == 30
    assert report["predictive_entropy"]["auroc"] == 1.0
    assert report["predictive_entropy"]["fpr_at_95_tpr"] == 0.0
    assert report["mutual_information"]["in_mean"] == 0.0
    assert report["mutual_information"]["out_mean"] > 0
    assert report["variation_ratio"]["auroc"] > 0.5


def test_fpr_at_95_tpr_by_hand():
    # Catching 95% of 20 OOD cases needs 19 of them; the threshold at the 19th-highest OOD score
    # (0.5) also flags the in-distribution cases scoring >= 0.5: 1 of 4.
    out = np.r_[np.linspace(0.5, 0.9, 19), 0.0]
    report = ood_report({"s": np.array([0.1, 0.2, 0.3, 0.6])}, {"s": out}, keys=("s",))
    assert report["s"]["fpr_at_95_tpr"] == 0.25


@pytest.mark.parametrize("call, match", [
    (lambda: ood_auroc([], [0.5]), "no cases"),
    (lambda: ood_auroc([[0.1]], [0.5]), "1-D"),
    (lambda: ood_auroc([0.1], [np.inf]), "NaN/inf"),
    (lambda: ood_report({"a": [0.1]}, {"b": [0.2]}, keys=("a",)), "missing from out_measures"),
    (lambda: ood_report({"a": [0.1]}, {"a": [0.2]}, keys="a"), "keys"),
    (lambda: ood_report({"std": np.ones((2, 2))}, {"std": np.ones((2, 2))}, keys=("std",)),
     "in_measures\\['std'\\] must be 1-D"),
])
def test_bad_inputs_raise_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)
