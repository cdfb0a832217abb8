"""Transforms: size/channels for every input kind, deterministic eval, medical-safe augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dualfuse.data.transforms import (
    IMAGENET_MEAN,
    AdaptChannels,
    AugmentConfig,
    ToUnitRange,
    build_transform,
    build_transforms,
    resolve_mean_std,
)

NEUTRAL = AugmentConfig(crop_scale=None, rotation=0.0, translate=0.0, scale=(1.0, 1.0), brightness=0.0, contrast=0.0)


def _inputs() -> dict[str, object]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (50, 80), dtype=np.uint8)
    return {
        "L": Image.fromarray(grey),
        "RGB": Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)),
        "RGBA": Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)),
        "I;16": Image.fromarray(rng.integers(0, 65536, (64, 48), dtype=np.uint16)),
        "uint16 tensor": torch.from_numpy(rng.integers(0, 65536, (1, 40, 70)).astype(np.uint16)),
        "int16 CT": torch.from_numpy(rng.integers(-1024, 3000, (1, 33, 33)).astype(np.int16)),
        "float [0,1] (C,H,W)": torch.rand(3, 45, 45),
        "uint8 ndarray (H,W)": grey,
    }


@pytest.mark.parametrize("kind", list(_inputs()))
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("resize", ["resize", "pad", "center_crop"])
@pytest.mark.parametrize("train", [False, True])
def test_output_size_channels_dtype(kind, in_chans, resize, train):
    out = build_transform(32, resize=resize, in_chans=in_chans, train=train)(_inputs()[kind])
    assert type(out) is torch.Tensor
    assert out.shape == (in_chans, 32, 32)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_sixteen_bit_keeps_full_range():
    array = np.array([[0, 65535], [32768, 1000]], dtype=np.uint16)
    out = ToUnitRange()(Image.fromarray(array))
    assert out.dtype == torch.float32
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 1, 0] == pytest.approx(32768 / 65535)


def test_signed_values_are_min_max_scaled():
    out = ToUnitRange()(torch.tensor([[[-1000, 0], [1000, 3000]]], dtype=torch.int16))
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0, 1] == pytest.approx(0.25)


def test_channel_adaptation():
    red = torch.zeros(3, 4, 4)
    red[0] = 1.0
    assert torch.allclose(AdaptChannels(1)(red), torch.full((1, 4, 4), 0.299))
    grey = torch.rand(1, 4, 4)
    assert torch.equal(AdaptChannels(3)(grey), grey.expand(3, 4, 4))
    rgba = torch.rand(4, 4, 4)
    assert torch.equal(AdaptChannels(3)(rgba), rgba[:3])
    with pytest.raises(ValueError, match="in_chans"):
        AdaptChannels(2)


def test_pad_keeps_aspect_with_black_borders():
    wide = Image.new("L", (100, 50), 255)
    out = build_transform(20, resize="pad", in_chans=1, normalize=None)(wide)
    assert torch.allclose(out[0, 5:15], torch.ones(10, 20))  # the image occupies the middle 10 rows
    assert torch.all(out[0, :5] == 0.0) and torch.all(out[0, 15:] == 0.0)
    squash = build_transform(20, resize="resize", in_chans=1, normalize=None)(wide)
    assert torch.allclose(squash, torch.ones_like(squash))


def test_eval_is_deterministic_and_consumes_no_randomness():
    image = _inputs()["RGB"]
    transform = build_transform(32, train=False)
    state = torch.get_rng_state()
    first, second = transform(image), transform(image)
    assert torch.equal(first, second)
    assert torch.equal(state, torch.get_rng_state())


def test_train_is_random():
    image = _inputs()["RGB"]
    transform = build_transform(32, train=True)
    assert not torch.equal(transform(image), transform(image))


def test_flips_are_off_by_default():
    assert AugmentConfig().hflip_prob == 0.0 and AugmentConfig().vflip_prob == 0.0
    left_bright = np.zeros((64, 64), dtype=np.uint8)
    left_bright[:, :32] = 255
    top_bright = left_bright.T.copy()
    transform = build_transform(32, in_chans=1, normalize=None, train=True)
    for _ in range(50):  # default augmentation may rotate and crop a little, never mirror
        out = transform(left_bright)[0]
        assert out[:, :16].mean() > out[:, 16:].mean()
        out = transform(top_bright)[0]
        assert out[:16].mean() > out[16:].mean()


def test_flips_can_be_enabled():
    left_bright = np.zeros((32, 32), dtype=np.uint8)
    left_bright[:, :16] = 255
    flip = AugmentConfig(**{**NEUTRAL.__dict__, "hflip_prob": 1.0})
    out = build_transform(32, in_chans=1, normalize=None, train=True, augment=flip)(left_bright)[0]
    assert out[:, 16:].mean() == 1.0 and out[:, :16].mean() == 0.0


def test_neutral_augmentation_equals_eval():
    image = _inputs()["L"]
    train = build_transform(32, train=True, augment=NEUTRAL)
    assert torch.equal(train(image), build_transform(32, train=False)(image))


def test_blur_smooths():
    noise = torch.rand(1, 32, 32)
    blur = AugmentConfig(**{**NEUTRAL.__dict__, "blur_prob": 1.0, "blur_sigma": (1.0, 1.0)})
    out = build_transform(32, in_chans=1, normalize=None, train=True, augment=blur)(noise)
    assert out.std() < noise.std() * 0.7


@pytest.mark.parametrize("normalize", ["zscore", "minmax"])
def test_per_image_normalisation(normalize):
    out = build_transform(16, in_chans=1, normalize=normalize)(_inputs()["L"])
    if normalize == "zscore":
        assert out.mean().abs() < 1e-5 and (out.std(unbiased=False) - 1).abs() < 1e-4
    else:
        assert out.min() == 0.0 and out.max() == 1.0


def test_mean_std_resolution():
    assert resolve_mean_std("imagenet", 3)[0] == IMAGENET_MEAN
    assert resolve_mean_std("imagenet", 1)[0] == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert resolve_mean_std(((0.5,), (0.25,)), 3) == ((0.5,) * 3, (0.25,) * 3)
    assert resolve_mean_std("zscore") is None and resolve_mean_std(None) is None
    constant = torch.full((3, 8, 8), 0.5)
    out = build_transform(8, normalize=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))(constant)
    assert torch.all(out == 0.0)
    with pytest.raises(ValueError):
        resolve_mean_std("bogus")
    with pytest.raises(ValueError):
        build_transform(8, resize="stretch")


def test_per_modality_builder():
    transforms = build_transforms(["mri", "ct"], img_size=16, overrides={"ct": {"in_chans": 1, "normalize": "minmax"}})
    image = torch.rand(3, 20, 20)
    assert transforms["mri"](image).shape == (3, 16, 16)
    assert transforms["ct"](image).shape == (1, 16, 16)
    with pytest.raises(ValueError, match="unknown modalities"):
        build_transforms(["mri"], overrides={"pet": {}})


def test_on_real_non_square_ct(data_root):
    from dualfuse.data.sources.folders import ImageFolderDataset

    dataset = ImageFolderDataset(data_root / "lung-ct-iqothnccd")
    transforms = build_transforms(dataset.modalities, img_size=64, resize="pad")
    dataset.transform = transforms
    narrow = next(i for i, r in enumerate(dataset.records) if Image.open(r.images["image"].path).size != (256, 256))
    sample = dataset[narrow]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32


def test_medical_trivial_augment_keeps_to_label_preserving_operations():
    from dualfuse.data.transforms import AugmentConfig, MedicalTrivialAugment, build_transform

    grey, colour = MedicalTrivialAugment(colour=False), MedicalTrivialAugment(colour=True)
    forbidden = {"Posterize", "Solarize", "Equalize"}
    assert not forbidden & set(grey._AUGMENTATION_SPACE) and not forbidden & set(colour._AUGMENTATION_SPACE)
    assert "Color" not in grey._AUGMENTATION_SPACE and "Color" in colour._AUGMENTATION_SPACE
    rotate, _ = grey._AUGMENTATION_SPACE["Rotate"]
    assert float(rotate(31, 32, 32).max()) == 15.0
    torch.manual_seed(0)
    image = torch.rand(1, 32, 32)
    outputs = [grey(image) for _ in range(40)]
    assert all(o.shape == image.shape and 0 <= float(o.min()) and float(o.max()) <= 1 for o in outputs)
    assert sum(not torch.equal(o, image) for o in outputs) > 20  # it does augment
    pipeline = build_transform(32, in_chans=1, normalize=None, train=True,
                               augment=AugmentConfig(crop_scale=None, rotation=0, translate=0, scale=(1.0, 1.0),
                                                     brightness=0, contrast=0, policy="trivial"))
    assert any(isinstance(op, MedicalTrivialAugment) for op in pipeline.transforms)
    eval_pipeline = build_transform(32, in_chans=1, normalize=None, train=False, augment=AugmentConfig(policy="trivial"))
    assert torch.equal(eval_pipeline(image), eval_pipeline(image))
    with pytest.raises(ValueError, match="data.augment.policy must be one of"):
        AugmentConfig(policy="randaugment-imagenet")
