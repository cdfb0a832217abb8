"""Uncertainty: per-case measures, calibration, selective prediction, conformal sets, OOD scores."""
from dualfuse.uncertainty.calibration import (
                                              adaptive_calibration_error,
                                              apply_temperature,
                                              brier_score,
                                              calibration_report,
                                              expected_calibration_error,
                                              fit_temperature,
                                              mc_probs_with_temperature,
                                              negative_log_likelihood,
)
from dualfuse.uncertainty.conformal import conformal_report, conformal_scores, conformal_threshold, prediction_sets
from dualfuse.uncertainty.ensemble import ensemble_mc_logits, ensemble_mc_probs
from dualfuse.uncertainty.feature_distance import FeatureDistance
from dualfuse.uncertainty.mc_dropout import (
                                              enable_mc_dropout,
                                              mc_logits,
                                              mc_probs,
                                              mc_sample_fast,
                                              mc_sample_naive,
                                              sample_seeds,
)
from dualfuse.uncertainty.measures import MEASURES, entropy, uncertainty_measures
from dualfuse.uncertainty.ood import ood_auroc, ood_report
from dualfuse.uncertainty.selective import (
                                              accuracy_at_coverage,
                                              aurc,
                                              choose_referral_threshold,
                                              refer,
                                              risk_coverage_curve,
)

__all__ = [
    "MEASURES",
    "FeatureDistance",
    "accuracy_at_coverage",
    "adaptive_calibration_error",
    "apply_temperature",
    "aurc",
    "brier_score",
    "calibration_report",
    "choose_referral_threshold",
    "conformal_report",
    "conformal_scores",
    "conformal_threshold",
    "enable_mc_dropout",
    "ensemble_mc_logits",
    "ensemble_mc_probs",
    "entropy",
    "expected_calibration_error",
    "fit_temperature",
    "mc_logits",
    "mc_probs",
    "mc_probs_with_temperature",
    "mc_sample_fast",
    "mc_sample_naive",
    "negative_log_likelihood",
    "ood_auroc",
    "ood_report",
    "prediction_sets",
    "refer",
    "risk_coverage_curve",
    "sample_seeds",
    "uncertainty_measures",
]
