"""The small-data recipe parts: weight EMA, mixup/cutmix, balanced class weights, logit adjustment (in the loss or
post hoc), thread count."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from conftest import breast_args

from dualfuse.api import train
from dualfuse.config import ConfigError, imbalance_correction, parse_run_args
from dualfuse.models.heads import output_bias_names, posthoc_logit_offsets
from dualfuse.models.saved import load_model, load_weights_only
from dualfuse.models.transfer import transfer_weights
from dualfuse.training.fit import balanced_class_weights, log_class_priors, rare_class_warnings

QUICK = ("--train.epochs", "1", "--train.limit_train_batches", "3")


class _Data:
    def __init__(self, labels):
        self.datasets = {"train": type("Train", (), {"labels": lambda self, task: np.asarray(labels)})()}


def test_balanced_class_weights_are_n_over_c_times_count():
    spec = type("Spec", (), {"tasks": {"label": ["a", "b", "c"]}})()
    weights = balanced_class_weights(_Data([0] * 6 + [1] * 3 + [2] * 1), spec)["label"]
    assert weights == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    # Weighted by these, every class carries the same total weight in the loss.
    assert 6 * weights[0] == pytest.approx(3 * weights[1]) == pytest.approx(1 * weights[2])


def test_log_class_priors_are_the_training_frequencies_with_absent_classes_kept_finite():
    spec = type("Spec", (), {"tasks": {"label": ["a", "b", "c", "d"]}})()
    priors = log_class_priors(_Data([0] * 6 + [1] * 3 + [2] * 1), spec)["label"]
    assert np.exp(priors) == pytest.approx([0.6, 0.3, 0.1, 0.1])


def _train(**settings):
    return type("Train", (), {"class_weights": None, "logit_adjustment": 0.0, "posthoc_logit_adjustment": 0.0,
                              **settings})()


def test_a_class_too_rare_for_its_correction_is_named_with_its_count_and_effect():
    spec = type("Spec", (), {"tasks": {"label": ["common", "rare", "absent"]}})()
    data = _Data([0] * 100 + [1] * 3)
    assert rare_class_warnings(_train(), data, spec) == []
    rare, absent = rare_class_warnings(_train(posthoc_logit_adjustment=0.5), data, spec)
    assert rare.startswith("train.posthoc_logit_adjustment: class 'rare' of task 'label' has only 3 training case(s) "
                           "of 103; its logit moves by +1.77")  # 0.5 * log(103 / 3)
    assert "'absent'" in absent and "has no training case of 103; its logit moves by +2.32" in absent  # counted as 1
    rare, absent = rare_class_warnings(_train(class_weights="balanced"), data, spec)
    assert "its loss weight is 11.4" in rare and "the model never sees it" in absent  # 103 / (3 * 3)
    assert rare_class_warnings(_train(logit_adjustment=1.0), _Data([0] * 10 + [1] * 10 + [2] * 10), spec) == []


def _loss(weight, smoothing=0.0, log_prior=None, tau=0.0):
    """ClassificationTask._loss on one task "label", without building a model."""
    from types import SimpleNamespace

    from dualfuse.training.task import ClassificationTask

    weight = None if weight is None else torch.tensor(weight, dtype=torch.float32)
    log_prior = None if log_prior is None else torch.tensor(log_prior, dtype=torch.float32)
    task = SimpleNamespace(train_config={"label_smoothing": smoothing, "logit_adjustment": tau}, tasks=["label"],
                           task_weights={"label": 1.0}, _class_weight=lambda t: weight, _log_prior=lambda t: log_prior)
    return lambda logits, labels, soft=None: ClassificationTask._loss(task, {"label": logits}, {"label": labels}, soft)


# HAM10000's balanced weights N / (C * n_c): nv is 72% of the cases, df 1%.
HAM_WEIGHTS = [4.6, 3.2, 1.47, 14.3, 1.74, 0.198, 11.0]


def test_class_weights_without_smoothing_are_torchs_weighted_cross_entropy():
    logits, labels = torch.randn(16, 7, generator=torch.Generator().manual_seed(0)), torch.arange(16) % 7
    expected = torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor(HAM_WEIGHTS))
    assert _loss(HAM_WEIGHTS)(logits, labels) == pytest.approx(expected.item(), rel=1e-6)
    # The same cases as mixup's soft targets without mixing or smoothing: the same loss.
    soft = torch.nn.functional.one_hot(labels, 7).float()
    assert _loss(HAM_WEIGHTS)(logits, labels, soft) == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("mixed", [False, True])
def test_smoothing_with_class_weights_keeps_a_majority_image_in_its_own_class(mixed):
    """Trained on one nv image (the 72% class) with label smoothing and balanced weights, the model must
    still call it nv. Weighting the smoothing mass per class made df's 1.4% smoothing share, times df's
    weight 14.3, outweigh nv's own label times 0.198: the model learnt to call every nv image df."""
    smoothing, nv = 0.1, 5
    labels = torch.tensor([nv])
    soft = ((1 - smoothing) * torch.nn.functional.one_hot(labels, 7) + smoothing / 7).float() if mixed else None
    logits = torch.zeros(1, 7, requires_grad=True)
    optimiser = torch.optim.SGD([logits], lr=1.0)
    loss = _loss(HAM_WEIGHTS, smoothing)
    for _ in range(300):
        optimiser.zero_grad()
        loss(logits, labels, soft).backward()
        optimiser.step()
    probs = logits.detach().softmax(dim=1)[0]
    assert probs.argmax().item() == nv and probs[nv] > 0.85  # the smoothed target: 0.9 + 0.1 / 7


def test_a_mixed_case_is_weighted_by_its_two_labels_not_by_the_smoothing():
    smoothing, lam = 0.1, 0.7
    logits = torch.randn(2, 7, generator=torch.Generator().manual_seed(1))
    a, b = torch.tensor([5, 3]), torch.tensor([3, 5])  # timm mixes a batch with its flip
    one_hot = torch.nn.functional.one_hot
    soft = (1 - smoothing) * (lam * one_hot(a, 7) + (1 - lam) * one_hot(b, 7)).float() + smoothing / 7
    per_case = -(soft * logits.log_softmax(dim=1)).sum(dim=1)
    w = torch.tensor(HAM_WEIGHTS)
    case_weight = lam * w[a] + (1 - lam) * w[b]
    expected = (per_case * case_weight).sum() / case_weight.sum()
    assert _loss(HAM_WEIGHTS, smoothing)(logits, a, soft) == pytest.approx(expected.item(), rel=1e-5)


def test_logit_adjusted_loss_is_cross_entropy_of_the_shifted_logits():
    logits, labels = torch.randn(16, 3, generator=torch.Generator().manual_seed(2)), torch.arange(16) % 3
    log_prior = np.log([0.7, 0.2, 0.1])
    expected = torch.nn.functional.cross_entropy(logits + 0.5 * torch.tensor(log_prior, dtype=torch.float32), labels)
    assert _loss(None, log_prior=log_prior, tau=0.5)(logits, labels) == pytest.approx(expected.item(), rel=1e-6)


def _fit_logistic(x, y, loss, steps=500):
    """Two-class logistic regression on 1-D `x`, trained with `loss(logits, y)`."""
    w, b = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        value = loss(x[:, None] * w + b, y)
        value.backward()
        return value

    optimiser.step(closure)
    return lambda x, offset=(0.0, 0.0): (x[:, None] * w + b + torch.tensor(offset)).detach().argmax(dim=1)


def test_logit_adjustment_moves_the_argmax_to_the_balanced_one():
    """One feature, classes N(0, 1) and N(1.5, 1), the second 5% of the training cases: plain cross-entropy
    puts the boundary deep into the rare class (it answers the common one); the adjusted loss puts it
    near 0.75, halfway, which is what balanced accuracy rewards."""
    generator = torch.Generator().manual_seed(3)
    y = (torch.arange(4000) % 20 == 0).long()
    x = torch.randn(4000, generator=generator) + 1.5 * y
    log_prior = np.log([0.95, 0.05])
    test_y = torch.arange(4000) % 2
    test_x = torch.randn(4000, generator=generator) + 1.5 * test_y

    def balanced_accuracy(predict):
        predicted = predict(test_x)
        return np.mean([(predicted[test_y == c] == c).float().mean().item() for c in (0, 1)])

    plain_model = _fit_logistic(x, y, _loss(None))
    plain = balanced_accuracy(plain_model)
    adjusted = balanced_accuracy(_fit_logistic(x, y, _loss(None, log_prior=log_prior, tau=1.0)))
    # Post hoc: the plain model with -log(prior) added to its logits (what train.posthoc_logit_adjustment
    # writes into the output bias), no retraining.
    posthoc = balanced_accuracy(lambda x: plain_model(x, offset=posthoc_logit_offsets(1.0, {"t": log_prior})["t"]))
    # Bayes-optimal balanced accuracy here is Phi(0.75) = 0.77; the plain boundary sits near x = 2.7.
    assert adjusted > 0.74 and posthoc > 0.74 and plain < 0.65


def test_ema_run_saves_and_serves_the_averaged_weights(data_root, tmp_path):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", *QUICK, "--train.ema_decay", "0.9",
                                           "--train.class_weights", "balanced", "--train.threads", "1"))
    train(config)
    assert torch.get_num_threads() == 1
    state = load_weights_only(tmp_path / "run" / "checkpoints" / "best.ckpt")["state_dict"]
    ema = {k[len("ema.module."):]: v for k, v in state.items() if k.startswith("ema.module.")}
    raw = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    assert ema and any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].is_floating_point())
    saved, _ = load_model(tmp_path / "run" / "model")
    from_ckpt, _ = load_model(tmp_path / "run" / "checkpoints" / "best.ckpt")
    for name, tensor in saved.state_dict().items():
        assert torch.equal(tensor, ema[name]) and torch.equal(from_ckpt.state_dict()[name], tensor), name


def test_posthoc_logit_adjustment_saves_minus_tau_log_prior_in_the_output_bias(data_root, tmp_path):
    # 24 training images hold about 7 malignant ones: a warning names that class (under 10 cases).
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", *QUICK, "--data.max_train_cases", "24",
                                           "--train.posthoc_logit_adjustment", "0.5"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(config)
    rare = [str(w.message) for w in caught if str(w.message).startswith("train.posthoc_logit_adjustment: class")]
    checkpoint = load_weights_only(tmp_path / "run" / "checkpoints" / "best.ckpt")
    log_priors = checkpoint["hyper_parameters"]["log_priors"]["label"]
    assert np.exp(log_priors).sum() == pytest.approx(1.0) and log_priors[0] != log_priors[1]  # frequencies
    offsets = [-0.5 * value for value in log_priors]
    counts = np.round(np.exp(log_priors) * 24).astype(int)
    assert counts.min() < 10 <= counts.max() and len(rare) == 1, (rare, counts)
    assert summary["posthoc_logit_offsets"] == {"label": pytest.approx(offsets)}
    trained = {k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    saved, saved_spec = load_model(tmp_path / "run" / "model")
    from_ckpt, ckpt_spec = load_model(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert saved_spec.logit_offsets == ckpt_spec.logit_offsets == {"label": pytest.approx(offsets)}  # recorded
    bias = output_bias_names(saved)["label"]
    for name, tensor in saved.state_dict().items():
        expected = trained[name] + torch.tensor(offsets) if name == bias else trained[name]
        torch.testing.assert_close(tensor, expected, rtol=0, atol=1e-6, msg=name)
        assert torch.equal(from_ckpt.state_dict()[name], tensor), name  # a checkpoint predicts as model/ does
    # Fine-tuning from the run (folder or checkpoint) starts from the network as trained, offsets taken off.
    for source in (tmp_path / "run", tmp_path / "run" / "checkpoints" / "best.ckpt"):
        model = saved_spec.build()
        report = transfer_weights(model, saved_spec, source)
        assert report.unadjusted == [bias] and report.to_dict()["offsets_removed"] == [bias]
        assert {"status": "loaded", "reason": "output bias with the source's post-hoc logit offsets taken off",
                "tensors": 1, "example": bias} in report.rows()  # the table `train` prints
        torch.testing.assert_close(model.state_dict()[bias], trained[bias], rtol=0, atol=1e-6)
    card = json.loads((tmp_path / "run" / "model" / "metadata.json").read_text())
    assert card["training"]["imbalance_correction"].startswith("post-hoc logit adjustment (tau = 0.5)")


@pytest.mark.parametrize("train, words", [({}, "none: the predicted class is the most probable one"),
                                          ({"class_weights": "balanced"}, "balanced class weights"),
                                          ({"logit_adjustment": 1.0}, "logit-adjusted loss (tau = 1)"),
                                          ({"posthoc_logit_adjustment": 2.0}, "post-hoc logit adjustment (tau = 2)")])
def test_the_card_and_report_say_how_the_class_is_chosen(train, words):
    text = imbalance_correction(train)
    assert text.startswith(words)
    assert ("equally common" in text) == ("logit" in words)


def test_mixup_and_cutmix_train_a_single_image_model(data_root, tmp_path):
    config, _ = parse_run_args(breast_args(data_root, tmp_path / "run", *QUICK, "--train.mixup", "0.2",
                                           "--train.cutmix", "1.0", "--train.label_smoothing", "0.1",
                                           "--train.logit_adjustment", "1.0"))
    summary = train(config)
    assert np.isfinite(summary["tasks"]["label"]["val"]["roc_auc"]["value"])


def test_mixup_on_a_zip_model_fails_before_the_run_folder_exists(data_root, tmp_path):
    import json

    sources = {"a": {"format": "medmnist", "path": str(data_root / "medmnist" / "breastmnist.npz")},
               "b": {"format": "medmnist", "path": str(data_root / "medmnist" / "pneumoniamnist.npz")}}
    config, _ = parse_run_args(["--model.name", "drifa_net", "--model.kwargs", json.dumps({"in_chans": 1}),
                                "--data.mode", "zip", "--data.sources", json.dumps(sources), "--data.img_size", "32",
                                "--data.num_workers", "0", "--train.mixup", "0.2", "--output", str(tmp_path / "zip")])
    with pytest.raises(ValueError, match="train.mixup / train.cutmix need a single-image, single-task model"):
        train(config)
    assert not (tmp_path / "zip").exists()


@pytest.mark.parametrize("key, value", [("train.ema_decay", "1.5"), ("train.class_weights", "inverse"),
                                        ("train.threads", "0"), ("train.mixup", "-1"),
                                        ("train.logit_adjustment", "-0.5"), ("train.posthoc_logit_adjustment", "-1")])
def test_bad_recipe_values_name_their_key(data_root, tmp_path, key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_run_args(breast_args(data_root, tmp_path / "run", f"--{key}", value))


@pytest.mark.parametrize("first, second", [(("train.logit_adjustment", "1"), ("train.class_weights", "balanced")),
                                           (("train.logit_adjustment", "1"), ("train.posthoc_logit_adjustment", "1")),
                                           (("train.posthoc_logit_adjustment", "1"), ("train.class_weights", "balanced"))])
def test_two_imbalance_corrections_are_refused(data_root, tmp_path, first, second):
    with pytest.raises(ConfigError, match="each correct for class imbalance") as error:
        parse_run_args(breast_args(data_root, tmp_path / "run", f"--{first[0]}", first[1], f"--{second[0]}", second[1]))
    assert first[0] in str(error.value) and second[0] in str(error.value)
