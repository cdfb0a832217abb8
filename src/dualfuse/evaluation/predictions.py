"""Per-case predictions of a trained model: logits (and MC samples) per task, as arrays and a table.

Plain PyTorch inference (no Trainer), so `evaluate`, `predict` and the end of `train` share one
code path and give identical numbers for the same case. With `mc_samples > 0` every case also
gets T MC-dropout samples per model (K·T for an ensemble), drawn with the exact fast path.

A case's numbers depend on the case alone. Every model call sees exactly `CANONICAL_ROWS` rows
(the last chunk of a batch padded with copies of its last case): CPU kernels pick their summation
order by batch size, so a case predicted alone and in a batch of 64 would otherwise differ in the
7th digit. And MC masks are drawn per (seed, case id, sample). So batch size, order, neighbours and
the number of devices never change a case's probabilities, entropy or refer flag.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.conformal import prediction_sets
from dualfuse.uncertainty.mc_dropout import case_keys, mc_sample_from_state, repeat_state, sample_seeds
from dualfuse.uncertainty.measures import uncertainty_measures
from dualfuse.uncertainty.tta import TTAConfig, view_inputs

CANONICAL_ROWS = 32


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = logits / temperature
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Predictor:
    """How a case's probabilities are formed: the mean over `members` models (1: the first), `views`
    test-time augmentation views (1: the image only), `partners` partner images (zip mode: K images
    of every other modality drawn from the training split; 0: the inputs as given) and `samples`
    MC-dropout samples each (0: the eval-mode softmax). Each predictor has its own temperature,
    referral threshold and conformal thresholds: calibration belongs to one predictor."""

    members: int = 1
    samples: int = 0
    views: int = 1
    partners: int = 0

    @property
    def key(self) -> str:
        return (f"{self.members}x{self.samples}" + (f"x{self.views}" if self.views > 1 else "")
                + (f"p{self.partners}" if self.partners else ""))

    @classmethod
    def from_key(cls, key: str) -> Predictor:
        base, _, partners = key.partition("p")
        return cls(*(int(part) for part in base.split("x")), **({"partners": int(partners)} if partners else {}))

    @property
    def label(self) -> str:
        if self.members == 1:
            text = "softmax" if not self.samples else f"MC dropout, {self.samples} samples"
        elif not self.samples:
            text = f"ensemble of {self.members}"
        else:
            text = f"ensemble of {self.members} x MC dropout, {self.samples} samples"
        return (text + (f", {self.views} TTA views" if self.views > 1 else "")
                + (f", {self.partners} partner image{'s' if self.partners > 1 else ''}" if self.partners else ""))


@dataclass
class Predictions:
    """Per task: eval-mode logits `(N, C)` of the first model on the image itself (and its first
    partner), of every member, view and partner `(K*A*P, N, C)` (member k, view v, partner p in row
    (k*A + v)*P + p; P = 1 without partners), MC samples `(K*A*P*T, N, C)` (in member, view,
    partner, sample order), labels where known, and the temperature of the active `predictor`
    (default: everything drawn, K members x A views x P partners x T samples). In zip mode with
    partners (`partners` > 0) each row is one image of one modality (id `"<modality>:<case id>"`),
    and only its own modality's task is its question (the others' labels are -1)."""

    case_ids: list[str]
    patient_ids: list[str]
    logits: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    sample_logits: dict[str, np.ndarray] = field(default_factory=dict)
    temperature: dict[str, float] = field(default_factory=dict)
    member_logits: dict[str, np.ndarray] = field(default_factory=dict)
    samples: int = 0
    predictor: Predictor | None = None
    views: int = 1
    partners: int = 0

    @property
    def tasks(self) -> list[str]:
        return list(self.logits)

    @property
    def _partner_rows(self) -> int:
        return max(self.partners, 1)

    @property
    def members(self) -> int:
        if not self.member_logits:
            return 1
        return next(iter(self.member_logits.values())).shape[0] // (self.views * self._partner_rows)

    @property
    def drawn(self) -> Predictor:
        """The largest predictor these predictions support."""
        return Predictor(self.members, self.samples, self.views, self.partners)

    @property
    def active(self) -> Predictor:
        return self.predictor or self.drawn

    def using(self, predictor: Predictor, temperature: dict[str, float] | None = None) -> Predictions:
        """The same predictions read through another predictor (and its temperature)."""
        partners_held = (predictor.partners == self.partners
                         or (self.partners > 0 and 1 <= predictor.partners <= self.partners))
        if (predictor.members > self.members or predictor.samples not in (0, self.samples)
                or predictor.views > self.views or not partners_held):
            raise ValueError(f"predictor {predictor.key} needs more than these predictions hold ({self.drawn.key})")
        return replace(self, predictor=predictor, temperature=dict(temperature or {}))

    def predictor_logits(self, task: str, predictor: Predictor | None = None) -> np.ndarray:
        """(S, N, C): the per-sample logits a predictor averages (S = members x views x partners x
        max(samples, 1)); the first p partners of P drawn are exactly the p-partner predictor's."""
        predictor = predictor or self.active
        k, a, p = predictor.members, predictor.views, max(predictor.partners, 1)
        if predictor.samples:
            z = self.sample_logits[task]
            z = z.reshape(self.members, self.views, self._partner_rows, self.samples, *z.shape[1:])[:k, :a, :p]
            return z.reshape(-1, *z.shape[4:])
        if k * a * p > 1:
            z = self.member_logits[task]
            z = z.reshape(self.members, self.views, self._partner_rows, *z.shape[1:])[:k, :a, :p]
            return z.reshape(-1, *z.shape[3:])
        return self.logits[task][None]

    def deterministic_probs(self, task: str) -> np.ndarray:
        return softmax(self.logits[task], self.temperature.get(task, 1.0))

    def sample_probs(self, task: str) -> np.ndarray:
        """(S, N, C) probabilities of the active predictor's samples, after its temperature."""
        return softmax(self.predictor_logits(task), self.temperature.get(task, 1.0))

    def probs(self, task: str) -> np.ndarray:
        """The reported probabilities: the active predictor's mean predictive distribution."""
        return self.sample_probs(task).mean(axis=0)

    @property
    def stochastic(self) -> bool:
        """Whether the active predictor averages several samples (so mutual information is defined)."""
        active = self.active
        return active.samples > 0 or active.members > 1 or active.views > 1 or active.partners > 1

    def task_rows(self, modality: str | None = None) -> np.ndarray:
        """The rows `for_task` keeps: all, or in zip mode the first row of each image of `modality`
        (with partners, the rows whose case is an image of `modality`)."""
        if modality is None:
            return np.arange(len(self.case_ids))
        components = [_component(case_id, modality, strict=self.partners > 0) for case_id in self.case_ids]
        first = {cid: i for i, cid in reversed(list(enumerate(components))) if cid is not None}
        return np.array(sorted(first.values()), dtype=int)

    def for_task(self, task: str, modality: str | None = None) -> Predictions:
        """One task's cases. In zip mode a case id joins one image per modality
        (`mri:a.jpg|xray:train_3`); each task is judged on its own modality's images, once each."""
        rows = self.task_rows(modality)
        ids, patients = self.case_ids, self.patient_ids
        if modality is not None:
            ids = [_component(case_id, modality) for case_id in self.case_ids]
            patients = self.patient_ids if self.partners else ids  # a zip pair's patient id joins two
        return Predictions(
            [ids[i] for i in rows], [patients[i] for i in rows], {task: self.logits[task][rows]},
            {task: self.labels[task][rows]} if task in self.labels else {},
            {task: self.sample_logits[task][:, rows]} if task in self.sample_logits else {},
            {task: self.temperature[task]} if task in self.temperature else {},
            {task: self.member_logits[task][:, rows]} if task in self.member_logits else {},
            self.samples, self.predictor, self.views, self.partners,
        )


def _component(case_id: str, modality: str, strict: bool = False) -> str | None:
    """The id of the `modality` image in a zip case id; without one, None if `strict` (a partner
    case of another modality) else the id itself (inputs that are not zip pairs)."""
    for part in case_id.split("|"):
        if part.startswith(f"{modality}:"):
            return part[len(modality) + 1:]
    return None if strict else case_id


def model_inputs(batch: dict, modalities: list[str], model: nn.Module, device: torch.device | str = "cpu"):
    """What `model` takes from a loader batch: a dict of modalities for multi-input models, else one tensor."""
    if model.multi_input:
        return {m: batch[m].to(device) for m in modalities}
    return batch[modalities[0]].to(device)


def _canonical_chunks(inputs, n: int, rows: int):
    """`inputs` (a tensor or a dict of tensors with `n` rows) in chunks of exactly `rows` rows, the last
    padded with copies of its last row; yields (chunk, number of real rows)."""
    def take(x: torch.Tensor, start: int) -> torch.Tensor:
        part = x[start:start + rows]
        if len(part) < rows:
            part = torch.cat([part, part[-1:].expand(rows - len(part), *part.shape[1:])])
        return part

    for start in range(0, n, rows):
        real = min(rows, n - start)
        if isinstance(inputs, dict):
            yield {m: take(x, start) for m, x in inputs.items()}, real
        else:
            yield take(inputs, start), real


@torch.no_grad()
def predict_batch(models: Sequence[nn.Module], inputs, keys: Sequence[int], tasks: Sequence[str], mc_samples: int = 0,
                  seed: int = 0, rows: int = CANONICAL_ROWS, tta: TTAConfig | None = None, partners: int = 0
                  ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One batch through every member, TTA view and partner: `({task: (K*A*P, B, C) eval-mode
    logits}, {task: (K*A*P*T, B, C) MC samples})`, in canonical chunks, MC masks drawn per (seed,
    case key, member, view, partner, sample). Member k's view 0 and partner 0 draw the same masks
    whatever K, A and P are.

    With `partners` P > 0 (zip mode) `inputs` is a dict of `(B, P, C, H, W)` stacks (see
    `PartnerDataset`) and partner p's pass sees `{m: x[:, p]}`; test-time augmentation is refused."""
    views = tta.views if tta else 1
    if partners and views > 1:
        raise ValueError("test-time augmentation cannot be combined with zip-mode partners: a zip-mode model "
                         "averages over partner images instead (drop --tta)")
    if partners and not isinstance(inputs, dict):
        raise ValueError("zip-mode partners need a model that takes one input per modality")
    chosen = max(partners, 1)
    seeds = sample_seeds(len(models) * mc_samples, seed) if mc_samples else []
    n = len(keys)
    slots = range(len(models) * views * chosen)
    per_member: list[dict] = [{t: [] for t in tasks} for _ in slots]
    per_sample: list[dict] = [{t: [] for t in tasks} for _ in slots]
    for v in range(views):
        view = view_inputs(inputs, keys, v, seed, tta) if v else inputs
        for p in range(chosen):
            partnered = {m: x[:, p] for m, x in view.items()} if partners else view
            offset = 0
            for chunk, real in _canonical_chunks(partnered, n, rows):
                chunk_keys = _pad(list(keys[offset:offset + real]), rows)
                for k, model in enumerate(models):
                    slot = (k * views + v) * chosen + p
                    state = model.forward_deterministic(chunk)
                    logits = model.forward_stochastic(repeat_state(state, 1))
                    for t in tasks:
                        per_member[slot][t].append(logits[t][:real].float().cpu().numpy())
                    if mc_samples:
                        member_seeds = [_partner_seed(_view_seed(s, v), p)
                                        for s in seeds[k * mc_samples:(k + 1) * mc_samples]]
                        drawn = mc_sample_from_state(model, state, mc_samples, seed=member_seeds, cases=chunk_keys)
                        for t in tasks:
                            per_sample[slot][t].append(drawn[t][:, :real].float().cpu().numpy())
                offset += real
    members = {t: np.stack([np.concatenate(per_member[i][t]) for i in slots]) for t in tasks}
    samples = {t: np.concatenate([np.concatenate(per_sample[i][t], axis=1) for i in slots])
               for t in tasks} if mc_samples else {}
    return members, samples


def _view_seed(sample_seed: int, view: int) -> int:
    """View 0 keeps the sample's seed (so adding views never changes the plain predictors); other
    views get their own."""
    if not view:
        return sample_seed
    return int.from_bytes(hashlib.sha256(f"view:{sample_seed}:{view}".encode()).digest()[:8], "big") >> 1


def _partner_seed(sample_seed: int, partner: int) -> int:
    """Partner 0 keeps the sample's seed; partner p > 0 gets its own (so the first p partners of a
    larger draw are exactly the p-partner predictor's samples)."""
    if not partner:
        return sample_seed
    return int.from_bytes(hashlib.sha256(f"partner:{sample_seed}:{partner}".encode()).digest()[:8], "big") >> 1


@torch.no_grad()
def predict_loader(models: nn.Module | Sequence[nn.Module], loader: DataLoader, spec: ModelSpec,
                   device: str | torch.device = "cpu", mc_samples: int = 0, seed: int = 0,
                   rows: int = CANONICAL_ROWS, tta: TTAConfig | None = None) -> Predictions:
    """Run the model(s) over `loader`: eval-mode logits of every member and, with `mc_samples` T > 0,
    T MC-dropout samples of every member, masks drawn per (seed, case id, member, sample).

    A loader over a `PartnerDataset` (zip mode: its `partners` P) gives every case P passes, one per
    partner image, held as P rows per member (`Predictions.partners`)."""
    device = torch.device(device)
    models = [models] if isinstance(models, nn.Module) else list(models)
    models = [model.to(device).eval() for model in models]
    tasks, modalities = list(spec.tasks), list(spec.modalities)
    partners = int(getattr(loader.dataset, "partners", 0) or 0)
    case_ids, patient_ids = [], []
    members: dict[str, list] = {t: [] for t in tasks}
    samples: dict[str, list] = {t: [] for t in tasks}
    labels: dict[str, list] = {t: [] for t in tasks}
    for batch in loader:
        inputs = model_inputs(batch, modalities, models[0], device)
        batch_members, batch_samples = predict_batch(models, inputs, case_keys(batch["case_id"]), tasks, mc_samples,
                                                     seed, rows, tta, partners=partners)
        for t in tasks:
            members[t].append(batch_members[t])
            if mc_samples:
                samples[t].append(batch_samples[t])
            if t in batch:
                labels[t].append(batch[t].cpu().numpy())
        case_ids.extend(batch["case_id"])
        patient_ids.extend(batch["patient_id"])
    n_classes = {t: len(c) for t, c in spec.tasks.items()}
    rows_per_member = (tta.views if tta else 1) * max(partners, 1)
    member_logits = {t: np.concatenate(v, axis=1) if v
                     else np.zeros((len(models) * rows_per_member, 0, n_classes[t]), np.float32)
                     for t, v in members.items()}
    return Predictions(
        case_ids, patient_ids, {t: v[0] for t, v in member_logits.items()},
        {t: np.concatenate(v) for t, v in labels.items() if v and len(v) == len(members[t])},
        {t: np.concatenate(v, axis=1) for t, v in samples.items() if v},
        member_logits=member_logits if len(models) * rows_per_member > 1 else {}, samples=mc_samples,
        views=tta.views if tta else 1, partners=partners,
    )


def _pad(keys: list[int], rows: int) -> list[int]:
    return keys + [keys[-1]] * (rows - len(keys)) if keys else keys


def conformal_sets(probs: np.ndarray, stored: dict) -> np.ndarray:
    """(N, C) booleans: the LAC conformal set of each case under a task's stored calibration."""
    return prediction_sets(probs, stored["conformal"]["lac"]["qhat"], "lac")


def refer_flags(probs: np.ndarray, stored: dict) -> np.ndarray:
    """Refer a case when its confidence is under the referral threshold, or when its conformal set is
    empty or holds more than one class: either way the model cannot name one class with the
    confidence asked for."""
    low_confidence = probs.max(axis=1) < stored["referral"]["threshold"]
    return low_confidence | (conformal_sets(probs, stored).sum(axis=1) != 1)


def predictions_frame(predictions: Predictions, classes: dict[str, list[str]], split: str | None = None,
                      calibration: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per case: ids, then per task the true class (if known), the predicted class, one
    probability column per class (`<task>_prob_<class>`), with several samples the uncertainty of the
    prediction (`<task>_entropy`, `_normalized_entropy`, `_expected_entropy`, `_mutual_information`,
    `_variation_ratio`, `_std_<class>`) and, given a task's calibration, `<task>_refer` and
    `<task>_set` (the conformal prediction set, classes joined by "|")."""
    columns: dict[str, object] = {"case_id": predictions.case_ids, "patient_id": predictions.patient_ids}
    if split is not None:
        columns["split"] = split
    for task in predictions.tasks:
        names = np.asarray(classes[task], dtype=object)
        probs = predictions.probs(task)
        if task in predictions.labels:
            columns[f"{task}_true"] = names[predictions.labels[task]]
        columns[f"{task}_pred"] = names[probs.argmax(axis=1)] if len(probs) else []
        for index, name in enumerate(classes[task]):
            columns[f"{task}_prob_{name}"] = probs[:, index]
        if predictions.stochastic:
            measures = uncertainty_measures(predictions.sample_probs(task))
            for key in ("predictive_entropy", "normalized_entropy", "expected_entropy", "mutual_information",
                        "variation_ratio"):
                columns[f"{task}_{key.replace('predictive_', '')}"] = measures[key]
            for index, name in enumerate(classes[task]):
                columns[f"{task}_std_{name}"] = measures["std"][:, index]
        if calibration and task in calibration:
            columns[f"{task}_refer"] = refer_flags(probs, calibration[task])
            columns[f"{task}_set"] = ["|".join(names[row]) for row in conformal_sets(probs, calibration[task])]
    return pd.DataFrame(columns)


def cases_frame(predictions: Predictions, spec: ModelSpec, split: str | None = None,
                calibration: dict[str, dict] | None = None) -> pd.DataFrame:
    """`predictions_frame` of a model's predictions, and for zip-mode predictions with partners one
    row per case with its `modality` and only its own task's columns (the other tasks are not its
    question, and are left empty)."""
    if not predictions.partners or not spec.task_modality:
        return predictions_frame(predictions, spec.tasks, split, calibration)
    frames = []
    for task, names in spec.tasks.items():
        modality = spec.modality_of(task)
        view = predictions.for_task(task, modality)
        if not view.case_ids:
            continue
        frame = predictions_frame(view, {task: names}, split,
                                  {task: calibration[task]} if calibration and task in calibration else None)
        frame.insert(2 if split is None else 3, "modality", modality)
        frames.append(frame)
    if not frames:
        return pd.DataFrame({"case_id": [], "patient_id": [], **({"split": []} if split is not None else {}),
                             "modality": []})
    return pd.concat(frames, ignore_index=True)
