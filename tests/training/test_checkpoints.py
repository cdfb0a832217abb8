"""Checkpoints are atomic, load without running pickle code, and fail with one line naming the file."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import pytest
import safetensors.torch
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dualfuse
from dualfuse import atomic
from dualfuse.atomic import atomic_write, atomic_write_bytes
from dualfuse.models import registry, saved
from dualfuse.models.saved import CheckpointError, load_model, load_weights_only, save_model
from dualfuse.models.spec import ModelSpec, Preprocessing
from dualfuse.training import checkpoints
from dualfuse.training.checkpoints import AtomicCheckpointIO

MODEL_KWARGS = {"backbone": "resnet18", "num_classes": 3, "pretrained": False}
SPEC = ModelSpec(
    name="timm_classifier",
    kwargs=MODEL_KWARGS,
    tasks={"label": ["normal", "pneumonia", "covid"]},
    modalities=["image"],
    preprocessing=Preprocessing(img_size=32, resize="resize", normalize="imagenet", in_chans={"image": 3}),
)
# What round-1 run folders wrote (format 1): a plain dict, no format_version, an int num_classes.
ROUND_1_SPEC = {
    "model": {"name": "timm_classifier", "kwargs": MODEL_KWARGS},
    "tasks": {"label": ["normal", "pneumonia", "covid"]},
    "modalities": ["image"],
    "preprocessing": {"img_size": 32, "resize": "resize", "normalize": "imagenet", "in_chans": {"image": 3}},
}


class Payload:
    """Unpickling this would create `marker` (a file, or a directory via a blocklisted `os` function)."""

    def __init__(self, marker: Path, make=open):
        self.marker = marker
        self.make = make

    def __reduce__(self):
        return (self.make, (str(self.marker), "w")) if self.make is open else (self.make, (str(self.marker),))


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return dualfuse.create_model("timm_classifier", **MODEL_KWARGS).eval()


@pytest.fixture(scope="module")
def saved_model(model, module_tmp) -> Path:
    return save_model(module_tmp("saved") / "model", model, SPEC)


def lightning_checkpoint(model: nn.Module, spec: dict) -> dict:
    """What the training task's checkpoint holds, built by hand (the spec as a plain dict)."""
    state_dict = {f"model.{key}": value for key, value in model.state_dict().items()}
    state_dict["criterion.weight"] = torch.ones(3)  # other prefixes are ignored
    return {"epoch": 1, "global_step": 8, "state_dict": state_dict,
            "hyper_parameters": {"spec": spec, "lr": 1e-3}, "optimizer_states": [], "lr_schedulers": []}


def assert_one_line(error: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert str(path) in message
    for word in words:
        assert word in message, message


# ----------------------------------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_replaces_target(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["file.bin"]


def test_crash_mid_write_keeps_previous_file(tmp_path):
    target = tmp_path / "last.ckpt"
    atomic_write_bytes(target, b"good checkpoint" * 100)

    def crash_halfway(temporary: Path) -> None:
        with open(temporary, "wb") as file:
            file.write(b"new bytes" * 50)
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="killed mid-write"):
        atomic_write(target, crash_halfway)
    assert target.read_bytes() == b"good checkpoint" * 100
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_failed_rename_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"good")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_interrupted_lightning_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.zeros(4)}}, target)
    good = target.read_bytes()

    def interrupted(path):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "_fsync_path", interrupted)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.ones(4)}}, target)
    assert target.read_bytes() == good
    assert os.listdir(tmp_path) == ["last.ckpt"]


def test_written_files_follow_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "file.bin", b"x")
    finally:
        os.umask(previous)
    assert (tmp_path / "file.bin").stat().st_mode & 0o777 == 0o644


# ----------------------------------------------------------------------------------------------------
# Pickle code is refused, never run


def _load_with_checkpoint_io(path: Path):
    return AtomicCheckpointIO().load_checkpoint(path)


@pytest.mark.parametrize("make, global_name", [(open, "io.open"), (os.mkdir, f"{os.name}.mkdir")])
@pytest.mark.parametrize("load", [load_model, load_weights_only, _load_with_checkpoint_io])
def test_pickle_payload_is_refused_not_run(load, make, global_name, tmp_path, model):
    marker = tmp_path / "pwned"
    checkpoint = lightning_checkpoint(model, SPEC.to_dict())
    checkpoint["hyper_parameters"]["evil"] = Payload(marker, make)
    path = tmp_path / "evil.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        load(path)
    assert_one_line(error, path, "refused", f"arbitrary pickle code ({global_name})")
    assert not marker.exists()


def test_plain_pickle_payload_is_not_run(tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": Payload(marker)}, protocol=2))
    with pytest.raises(CheckpointError) as error:
        load_weights_only(path)
    assert_one_line(error, path, "refused")
    assert not marker.exists()


def test_checkpoint_io_refuses_weights_only_false(tmp_path):
    path = tmp_path / "a.ckpt"
    torch.save({"w": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="weights_only=True only"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


def test_unsafe_content_is_refused_at_save_time(tmp_path):
    path = tmp_path / "last.ckpt"
    with pytest.raises(CheckpointError) as error:
        AtomicCheckpointIO().save_checkpoint({"hyper_parameters": {"data_dir": Path("/data")}}, path)
    assert_one_line(error, path, "not writing", "PosixPath")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------------------------------
# Deployable model: round trip


def test_training_checkpoints_reexports_the_saved_model_api():
    for name in ("CheckpointError", "load_model", "load_weights_only", "save_model"):
        assert getattr(checkpoints, name) is getattr(saved, name), name


def test_save_load_round_trip(saved_model, model):
    assert sorted(os.listdir(saved_model)) == ["model.json", "model.safetensors"]
    loaded, spec = load_model(saved_model, expected_model="timm_classifier")
    assert isinstance(spec, ModelSpec)
    assert spec == SPEC and spec.dualfuse_version == dualfuse.__version__
    written = json.loads((saved_model / "model.json").read_text())
    assert written == spec.to_dict()
    assert written["format_version"] == 2 and written["dualfuse_version"] == dualfuse.__version__
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = loaded(x)
        assert list(out) == ["label"]
        torch.testing.assert_close(out, model(x), rtol=0, atol=0)


def test_save_model_needs_a_model_spec(model, tmp_path):
    with pytest.raises(TypeError, match="save_model needs a ModelSpec, got dict"):
        save_model(tmp_path / "model", model, SPEC.to_dict())
    assert not (tmp_path / "model").exists()


def test_spec_that_is_not_json_is_refused_before_writing(model, tmp_path):
    bad = ModelSpec(name="timm_classifier", kwargs={**MODEL_KWARGS, "path": Path("/data")})
    with pytest.raises(CheckpointError) as error:
        save_model(tmp_path / "model", model, bad)
    assert_one_line(error, tmp_path / "model" / "model.json", "not JSON-serialisable")
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("where", ["folder", "checkpoint"])
def test_round_1_format_still_loads(saved_model, model, tmp_path, where):
    if where == "folder":
        shutil.copy(saved_model / "model.safetensors", tmp_path)
        (tmp_path / "model.json").write_text(json.dumps({**ROUND_1_SPEC, "format_version": 1}))
        path = tmp_path
    else:
        path = tmp_path / "last.ckpt"
        torch.save(lightning_checkpoint(model, ROUND_1_SPEC), path)
    loaded, spec = load_model(path, expected_model="timm_classifier")
    assert spec.kwargs["num_classes"] == {"label": 3}  # format 1 named the task only in "tasks"
    assert spec.tasks == SPEC.tasks and spec.preprocessing == SPEC.preprocessing
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_safetensors_file_with_json_beside_it(saved_model, model, tmp_path):
    shutil.copy(saved_model / "model.safetensors", tmp_path / "best.safetensors")
    shutil.copy(saved_model / "model.json", tmp_path / "best.json")
    loaded, spec = load_model(tmp_path / "best.safetensors")
    assert spec.tasks == SPEC.tasks
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_lightning_checkpoint_loads_model_weights(model, tmp_path):
    path = tmp_path / "epoch=1.ckpt"
    torch.save(lightning_checkpoint(model, SPEC.to_dict()), path)
    loaded, spec = load_model(path, expected_model="timm_classifier")
    assert spec == SPEC
    assert list(loaded.tasks) == ["label"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_loading_never_downloads(saved_model, monkeypatch, tmp_path):
    shutil.copy(saved_model / "model.safetensors", tmp_path)
    spec = ModelSpec(name="timm_classifier", kwargs={**MODEL_KWARGS, "pretrained": True}, tasks=SPEC.tasks,
                     modalities=SPEC.modalities, preprocessing=SPEC.preprocessing)
    (tmp_path / "model.json").write_text(spec.to_json())
    calls = []
    real_entrypoint = registry.model_entrypoint

    def spy(name):
        builder = real_entrypoint(name)
        return lambda **kw: calls.append(kw) or builder(**kw)

    monkeypatch.setattr(registry, "model_entrypoint", spy)
    load_model(tmp_path)
    assert len(calls) == 1 and calls[0]["pretrained"] is False


def test_tied_weights_are_saved(tmp_path):
    tied = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    tied[1].weight = tied[0].weight
    save_model(tmp_path, tied, ModelSpec(name="tied"))
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    assert torch.equal(weights["0.weight"], weights["1.weight"])


# ----------------------------------------------------------------------------------------------------
# One-line errors


def test_wrong_model_is_refused(saved_model):
    with pytest.raises(CheckpointError) as error:
        load_model(saved_model, expected_model="drifa_net")
    message = f"{saved_model / 'model.safetensors'} is a checkpoint for model 'timm_classifier', expected 'drifa_net'"
    assert str(error.value) == message


def test_weights_of_another_shape_are_refused(saved_model, tmp_path):
    shutil.copy(saved_model / "model.safetensors", tmp_path)
    spec = {"model": {"name": "timm_classifier", "kwargs": {**MODEL_KWARGS, "num_classes": 2}}}
    (tmp_path / "model.json").write_text(json.dumps(spec))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path)
    assert_one_line(error, tmp_path / "model.safetensors", "do not fit", "2 of other shape",
                    "'head.1.weight': file (3, 512), model (2, 512)")


def test_missing_and_unexpected_keys_are_counted(model, tmp_path):
    checkpoint = lightning_checkpoint(model, SPEC.to_dict())
    checkpoint["state_dict"]["model.extra.weight"] = checkpoint["state_dict"].pop("model.head.1.bias")
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert_one_line(error, path, "1 missing (e.g. 'head.1.bias')", "1 unexpected (e.g. 'extra.weight')")


@pytest.mark.parametrize("name", ["last.ckpt", "model.safetensors"])
@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_unreadable_files(saved_model, tmp_path, damage, name):
    good = (saved_model / "model.safetensors").read_bytes()
    data = {"garbage": os.urandom(4096), "truncated": good[: len(good) // 2], "empty": b""}[damage]
    path = tmp_path / name
    path.write_bytes(data)
    shutil.copy(saved_model / "model.json", tmp_path)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert_one_line(error, path, "not a readable")


def test_truncated_torch_checkpoint(model, tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save(lightning_checkpoint(model, SPEC.to_dict()), path)
    path.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(CheckpointError) as error:
        load_weights_only(path)
    assert_one_line(error, path, "not a readable PyTorch checkpoint")


@pytest.mark.parametrize("target", ["directory", "model.safetensors", "last.ckpt"])
def test_missing_files(tmp_path, target):
    path = tmp_path / target
    if target == "directory":
        path.mkdir()
        path = path / "model.safetensors"
    with pytest.raises(CheckpointError) as error:
        load_model(path.parent if target == "directory" else path)
    assert_one_line(error, path)


@pytest.mark.parametrize("text, words", [
    ("{not json", ["malformed JSON"]),
    (json.dumps({"tasks": {}}), ['spec needs "model"']),
    (json.dumps({"model": {"name": "timm_classifier", "kwargs": {}}, "format_version": 99}), ["newer"]),
])
def test_bad_json(saved_model, tmp_path, text, words):
    shutil.copy(saved_model / "model.safetensors", tmp_path)
    (tmp_path / "model.json").write_text(text)
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path)
    assert_one_line(error, tmp_path / "model.json", *words)


def test_checkpoint_without_spec(model, tmp_path):
    checkpoint = lightning_checkpoint(model, SPEC.to_dict())
    del checkpoint["hyper_parameters"]["spec"]
    path = tmp_path / "last.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError) as error:
        load_model(path)
    assert_one_line(error, path, 'hyper_parameters["spec"]')


def test_unknown_model_name(saved_model, tmp_path):
    shutil.copy(saved_model / "model.safetensors", tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"model": {"name": "no_such_model", "kwargs": {}}}))
    with pytest.raises(CheckpointError) as error:
        load_model(tmp_path)
    assert_one_line(error, tmp_path / "model.safetensors", "cannot build model 'no_such_model'")


# ----------------------------------------------------------------------------------------------------
# A real Lightning run through the plugin


class TinyTask(pl.LightningModule):
    def __init__(self, spec: dict, lr: float = 0.1):
        super().__init__()
        self.save_hyperparameters()
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        return {"optimizer": optimizer, "lr_scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1)}


def _fit(root: Path, max_epochs: int, ckpt_path: Path | None = None) -> pl.Trainer:
    data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=8)
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False, logger=False,
        enable_model_summary=False, default_root_dir=root, plugins=[AtomicCheckpointIO()],
        callbacks=[ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=-1)],
    )
    trainer.fit(TinyTask({"model": {"name": "tiny", "kwargs": {}}, "tasks": {"label": ["a", "b"]}}), data,
                ckpt_path=ckpt_path)
    return trainer


def test_lightning_fit_and_resume_through_plugin(tmp_path, monkeypatch):
    _fit(tmp_path, max_epochs=2)
    written = sorted(os.listdir(tmp_path / "checkpoints"))
    assert written == ["epoch=0-step=4.ckpt", "epoch=1-step=8.ckpt", "last.ckpt"]  # no temporary files left
    last = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["hyper_parameters"]["spec"]["tasks"] == {"label": ["a", "b"]}
    assert {"state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks"} <= set(checkpoint)
    assert set(checkpoint["state_dict"]) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}

    loaded = []
    real_load = AtomicCheckpointIO.load_checkpoint
    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint",
                        lambda self, path, **kw: loaded.append(path) or real_load(self, path, **kw))
    resumed = _fit(tmp_path, max_epochs=3, ckpt_path=last)
    assert loaded == [last]
    assert resumed.global_step == 12 and resumed.current_epoch == 3
    assert torch.load(last, weights_only=True)["global_step"] == 12
