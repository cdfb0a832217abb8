"""A LightningDataModule over the data layer: sources → splits → transforms → loaders.

It turns a `DataConfig` into train/val/cal/test datasets the same way every time: splits come from
the source when it has them, are carved out (stratified, grouped by patient) when it does not,
and are saved so that a run can be repeated or resumed on exactly the same cases. The calibration
split (`cal`) is carved from train after val and test are settled; where there is no room for one,
calibration falls back to val and `calibration_note` says why.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset, Sampler

from dualfuse.config import DataConfig, SourceConfig, expand_path
from dualfuse.data.base import CaseDataset, DataError, rare_classes
from dualfuse.data.multimodal import PartnerDataset, ZipDataset
from dualfuse.data.open import open_source
from dualfuse.data.splits import SPLITS, apply_split, carve_calibration, load_split, make_split, save_split
from dualfuse.data.transforms import AugmentConfig, build_transforms

FALLBACK = "temperature, referral and conformal thresholds were fitted on val, which also chose the checkpoint"


def assign_splits(dataset: CaseDataset, config: DataConfig, seed: int) -> dict[str, str]:
    """`{case_id: split}`: the source's own splits, with missing val/test carved out of train, then cal."""
    return plan_splits(dataset, config, seed)[0]


def plan_splits(dataset: CaseDataset, config: DataConfig, seed: int) -> tuple[dict[str, str], str | None]:
    """`({case_id: split}, reason)`: the source's own splits (or `data.split_file`), with missing
    val/test carved out of train, then a missing cal carved out of what train has left.

    `reason` is None when there is a cal split, else a plain phrase saying why there is none.
    Sources with official val/test (MedMNIST) keep them; cal comes from their train only.
    """
    if config.split_file:
        path = expand_path(config.split_file, "data.split_file")
        assigned = load_split(path)
        _check_split_names(assigned, path)
        return add_calibration(dataset, assigned, config, seed)
    assigned = {r.case_id: (r.split or "train") for r in dataset.records}
    present = set(assigned.values())
    unknown = present - set(SPLITS)
    if unknown:
        raise ValueError(f"data: unknown split names {sorted(unknown)} in the source (expected {list(SPLITS)})")
    carve_test = config.test_fraction if "test" not in present else 0.0
    carve_val = config.val_fraction if "val" not in present else 0.0
    if carve_test or carve_val:
        pool = dataset.with_records([r for r in dataset.records if assigned[r.case_id] == "train"])
        # make_split's fractions are of the pool it gets; ours are of the whole source.
        scale = len(dataset) / max(len(pool), 1)
        carved = make_split(pool, val_fraction=min(carve_val * scale, 0.5), test_fraction=min(carve_test * scale, 0.5),
                            seed=seed)
        assigned.update(carved)
    return add_calibration(dataset, assigned, config, seed)


def add_calibration(dataset: CaseDataset, assigned: Mapping[str, str], config: DataConfig,
                    seed: int) -> tuple[dict[str, str], str | None]:
    """`assigned` with `data.cal_fraction` of the source moved from train to cal (see
    `carve_calibration`), and None; or `assigned` unchanged and why there is no cal split."""
    assigned = dict(assigned)
    if "cal" in assigned.values():
        return assigned, None
    if config.cal_fraction <= 0:
        return assigned, "data.cal_fraction is 0"
    pool = dataset.with_records([r for r in dataset.records if assigned.get(r.case_id) == "train"])
    scale = len(dataset) / max(len(pool), 1)  # cal_fraction is of the whole source, like val/test
    carved, reason = carve_calibration(pool, config.cal_fraction * scale, seed=seed)
    if reason is None:
        assigned.update(carved)
    return assigned, reason


def _check_split_names(assigned: Mapping[str, str], where: object) -> None:
    unknown = sorted(set(assigned.values()) - set(SPLITS))
    if unknown:
        raise DataError(where, f"unknown split name(s) {unknown}; expected {', '.join(SPLITS)}")


def _subsample(dataset: CaseDataset, limit: int | None, seed: int) -> CaseDataset:
    """A stratified random subset of at most `limit` cases (CPU-sized runs of large sets)."""
    if limit is None or len(dataset) <= limit:
        return dataset
    labels = dataset.labels(dataset.tasks[0]) if dataset.tasks else None
    counts = np.bincount(labels) if labels is not None else None
    stratify = labels if counts is not None and counts[counts > 0].min() >= 2 else None
    keep, _ = train_test_split(np.arange(len(dataset)), train_size=limit, random_state=seed, stratify=stratify)
    return dataset.subset(np.sort(keep))


class EpochSeededSampler(Sampler[int]):
    """Shuffle with a generator seeded by `(seed, epoch)` and tag each index with its epoch.

    Indices come out as `index + epoch * len`, so `EpochSeededDataset` can seed each sample's
    augmentation from `(seed, epoch, index)`. Order and augmentation of an epoch are then pure
    functions of the seed, whatever ran before: a resumed run sees exactly the batches of an
    uninterrupted one. Lightning calls `set_epoch` before every epoch.
    """

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True):
        self.size = size
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator) if self.shuffle else torch.arange(self.size)
        yield from (order + self.epoch * self.size).tolist()

    def __len__(self) -> int:
        return self.size


class EpochSeededDataset(Dataset):
    """Wraps a dataset so that sample `index` of epoch `epoch` is drawn with its own fixed seed."""

    def __init__(self, dataset, seed: int = 0):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, tagged_index: int) -> dict:
        epoch, index = divmod(int(tagged_index), len(self.dataset))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1_000_003 + epoch) * 1_000_033 + index) % 2**63)
            return self.dataset[index]


class ClassificationDataModule(pl.LightningDataModule):
    """Train/val/cal/test loaders for one `DataConfig`.

    Training sees train only; val chooses the checkpoint and stops early; cal (when there is one,
    see `calibration_split`) is for temperature, referral and conformal thresholds only.

    Args:
        config: the data section of a run config.
        in_chans: channels each modality is adapted to (the model's `in_chans`): one int or
            `{modality: channels}`.
        seed: for carved splits, subsampling and zip re-pairing.
        split_path: where the split used is saved (`RUN_DIR/split.csv`); with `--resume` it is
            read back instead of recomputed.
    """

    def __init__(self, config: DataConfig, in_chans: int | Mapping[str, int] = 3, seed: int = 0,
                 split_path: str | Path | None = None):
        super().__init__()
        self.config = config
        self.in_chans = in_chans
        self.seed = seed
        self.split_path = Path(split_path) if split_path else None
        self.datasets: dict[str, object] = {}
        self._calibration: tuple[str, str | None] = ("val", None)
        self._parts: dict[str, dict[str, CaseDataset]] = {}
        self.sources = {name: self._open(name, source) for name, source in config.sources.items()}

    def _open(self, name: str, source: SourceConfig) -> CaseDataset:
        """One source, with `data.skip_bad` applied (every image decoded once, bad ones listed in
        `skipped` and summed up in one warning) and stray labels refused (see `rare_classes`)."""
        dataset = open_source(name, source, skip_bad=self.config.skip_bad)
        if self.config.skip_bad:
            dataset.verify()
            if dataset.skipped:
                shown = "; ".join(reason for _, reason in dataset.skipped[:3])
                more = f"; and {len(dataset.skipped) - 3} more" if len(dataset.skipped) > 3 else ""
                warnings.warn(f"data.sources.{name}: skipped {len(dataset.skipped)} bad case(s) (data.skip_bad): "
                              f"{shown}{more}", stacklevel=2)
        if source.classes is None:
            rare = rare_classes(dataset.class_counts())
            if rare:
                shown = ", ".join(f"{task} {cls!r} ({count} of {total} cases)" for task, cls, count, total in rare[:5])
                raise DataError(f"data.sources.{name}", f"rare class(es) {shown}: a stray label? fix the data, or list "
                                f"the real classes in data.sources.{name}.classes")
        return dataset

    @property
    def skipped(self) -> dict[str, list[tuple[str, str]]]:
        """`{source: [(path, reason)]}`: what `data.skip_bad` dropped, for the run's records."""
        return {name: list(dataset.skipped) for name, dataset in self.sources.items()}

    # --- what the model needs to know -------------------------------------------------------------
    @property
    def modalities(self) -> list[str]:
        if self.config.mode == "zip":
            return list(self.sources)
        return list(next(iter(self.sources.values())).modalities)

    @property
    def classes(self) -> dict[str, list[str]]:
        if self.config.mode == "zip":
            return {f"{name}_label": next(iter(ds.classes.values())) for name, ds in self.sources.items()}
        return dict(next(iter(self.sources.values())).classes)

    def _channels(self, modality: str) -> int:
        return self.in_chans if isinstance(self.in_chans, int) else int(self.in_chans[modality])

    def _transforms(self, modalities: list[str], train: bool, channels_of: list[str]):
        augment = AugmentConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.config.augment.items()})
        overrides = {m: {"in_chans": self._channels(c)} for m, c in zip(modalities, channels_of)}
        return build_transforms(
            modalities, train=train, overrides=overrides, img_size=self.config.img_size,
            resize=self.config.resize, normalize=self.config.normalize, augment=augment,
        )

    # --- splits -----------------------------------------------------------------------------------
    def _split_file(self, name: str) -> Path | None:
        if self.split_path is None:
            return None
        return self.split_path.with_name(f"{self.split_path.stem}-{name}.csv") if self.config.mode == "zip" \
            else self.split_path

    def _assign(self, name: str, dataset: CaseDataset) -> tuple[dict[str, str], str | None, bool]:
        """`(assigned, reason there is no cal or None, freshly made)`: a saved split is read back as it is."""
        split_file = self._split_file(name)
        if split_file is not None and split_file.is_file():
            assigned = load_split(split_file)
            _check_split_names(assigned, split_file)
            if "cal" in assigned.values():
                return assigned, None, False
            # Why it has none: what carving would have said, or a split saved before cal existed.
            _, reason = add_calibration(dataset, assigned, self.config, self.seed)
            return assigned, reason or f"the saved {split_file.name} predates data.cal_fraction and has no cal cases", False
        try:
            assigned, reason = plan_splits(dataset, self.config, self.seed)
        except DataError as error:
            raise DataError(f"data.sources.{name}", error) from None
        return assigned, reason, True

    def _split_sources(self) -> dict[str, dict[str, CaseDataset]]:
        """`{source: {split: dataset}}`, splits saved; sets `calibration_split` and `calibration_note`."""
        plans = {name: self._assign(name, dataset) for name, dataset in self.sources.items()}
        reasons = {name: reason for name, (_, reason, _) in plans.items() if reason}
        parts = {}
        for name, (assigned, _, fresh) in plans.items():
            split_file = self._split_file(name)
            if fresh:
                if reasons:  # zip: one source without room sends every source's calibration to val
                    assigned = {case: "train" if split == "cal" else split for case, split in assigned.items()}
                if split_file is not None:
                    save_split(assigned, split_file)
            dataset = apply_split(self.sources[name], assigned, source=split_file or "data split")
            part = {split: dataset.split(split) for split in SPLITS}
            part["train"] = _subsample(part["train"], self.config.max_train_cases, self.seed)
            for split in ("val", "cal", "test"):
                part[split] = _subsample(part[split], self.config.max_eval_cases, self.seed)
            parts[name] = part
        self._calibration = ("val", self._note(reasons)) if reasons else ("cal", None)
        return parts

    def _note(self, reasons: dict[str, str]) -> str:
        if len(set(reasons.values())) == 1 and len(reasons) == len(self.sources):
            why = next(iter(reasons.values()))
        else:
            why = "; ".join(f"data.sources.{name}: {reason}" for name, reason in reasons.items())
        return f"no calibration split ({why}): {FALLBACK}"

    @property
    def calibration_split(self) -> str:
        """`"cal"` when the data has a calibration split, else `"val"` (see `calibration_note`)."""
        self.setup()
        return self._calibration[0]

    @property
    def calibration_note(self) -> str | None:
        """None with a cal split; else one sentence saying that calibration used val, and why."""
        self.setup()
        return self._calibration[1]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        per_source = self._split_sources()
        splits = [s for s in SPLITS if s != "cal" or self._calibration[0] == "cal"]
        if self.config.mode == "zip":
            for split in splits:
                members = {}
                for name, parts in per_source.items():
                    part = parts[split]
                    part.transform = self._transforms(list(part.modalities), split == "train", [name])
                    members[name] = part
                length = self.config.zip_length if split == "train" else "max"
                self.datasets[split] = ZipDataset(members, length=length, seed=self.seed)
            self._parts = per_source
            return
        (name, parts), = per_source.items()
        for split in splits:
            part = parts[split]
            part.transform = self._transforms(list(part.modalities), split == "train", list(part.modalities))
            self.datasets[split] = part
        if len(self.datasets["train"]) == 0:
            raise ValueError(f"data.sources.{name}: no training cases after splitting")

    # --- loaders ----------------------------------------------------------------------------------
    def _loader(self, split: str) -> DataLoader:
        batch_size = self.config.eval_batch_size or self.config.batch_size
        return DataLoader(self.datasets[split], batch_size=batch_size, shuffle=False,
                          num_workers=self.config.num_workers)

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        if isinstance(dataset, ZipDataset) and self.trainer is not None:
            dataset.set_epoch(self.trainer.current_epoch)  # re-pair the zipped datasets every epoch
        batch_size = self.config.batch_size
        return DataLoader(
            EpochSeededDataset(dataset, self.seed), batch_size=batch_size,
            sampler=EpochSeededSampler(len(dataset), self.seed), num_workers=self.config.num_workers,
            drop_last=len(dataset) > batch_size, persistent_workers=False,
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def eval_dataloader(self, split: str) -> DataLoader:
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; have {list(self.datasets)}")
        return self._loader(split)

    # --- zip mode: each case with K partners from the training split ----------------------------
    def partner_pools(self) -> dict[str, CaseDataset]:
        """Zip mode: `{source: its training split}` (what the model trained on, after
        `max_train_cases`) with evaluation transforms: where a case's partner images come from."""
        self.setup()
        if self.config.mode != "zip":
            raise ValueError("data.mode: partner images exist in zip mode only")
        pools = {}
        for name, parts in self._parts.items():
            pool = parts["train"].with_records(parts["train"].records)
            pool.transform = self._transforms(list(pool.modalities), False, [name])
            pools[name] = pool
        return pools

    def partner_dataset(self, split: str, partners: int, seed: int | None = None) -> PartnerDataset:
        """Zip mode: every image of `split` of every source once, as a case, each beside `partners`
        partner images of the other sources drawn from their training splits by (seed, case, k)."""
        self.setup()
        if split not in self.datasets:
            raise ValueError(f"unknown split {split!r}; have {list(self.datasets)}")
        pools = self.partner_pools()
        cases = {name: self.datasets[split].datasets[name] for name in self._parts}
        return PartnerDataset(cases, pools, partners, seed=self.seed if seed is None else seed,
                              tasks=self.datasets[split].task_names, modalities=list(self._parts))

    def partner_dataloader(self, split: str, partners: int, seed: int | None = None) -> DataLoader:
        """`partner_dataset` in fixed order, at the evaluation batch size."""
        batch_size = self.config.eval_batch_size or self.config.batch_size
        return DataLoader(self.partner_dataset(split, partners, seed), batch_size=batch_size, shuffle=False,
                          num_workers=self.config.num_workers)
