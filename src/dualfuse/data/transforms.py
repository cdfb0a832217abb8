"""Per-modality image transforms built on torchvision.transforms.v2.

Every pipeline has the same three stages so that train and eval see the same geometry:

1. *to unit range*: any image (PIL, ndarray or tensor; 8/16-bit or float) becomes float32 in [0, 1],
   with its channels adapted to the model's ``in_chans``;
2. *resize* to a square ``img_size`` canvas by one aspect policy (``resize``, ``pad`` or ``center_crop``);
3. *augment* (training only) on that canvas, then *normalize*.

Augmentation defaults are deliberately mild: medical images have a meaningful orientation (a
horizontally flipped chest X-ray puts the heart on the wrong side), so flips are off unless asked for.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "AugmentConfig",
    "MedicalTrivialAugment",
    "AdaptChannels",
    "ToUnitRange",
    "PerImageNormalize",
    "build_transform",
    "build_transforms",
    "resolve_mean_std",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("resize", "pad", "center_crop")
NORMALIZE_MODES = ("imagenet", "zscore", "minmax")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, the weights PIL uses for "RGB" -> "L"


@dataclass(frozen=True)
class AugmentConfig:
    """Train-time augmentation; every field at its neutral value switches that augmentation off.

    Scales and angles are conservative because lesions are small and anatomy is aligned: a crop that
    drops most of the image, or a 90-degree rotation, changes what the label refers to.
    """

    crop_scale: tuple[float, float] | None = (0.85, 1.0)  # RandomResizedCrop area fraction; None: no crop
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    rotation: float = 10.0  # degrees, +-
    translate: float = 0.05  # fraction of the side, +-
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.1  # ColorJitter factors
    contrast: float = 0.1
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    hflip_prob: float = 0.0  # off: laterality matters (chest X-ray, brain lesions by hemisphere)
    vflip_prob: float = 0.0
    # "trivial": TrivialAugment over operations valid for medical images only (`MedicalTrivialAugment`),
    # applied after the affine and before normalisation; None: off.
    policy: str | None = None

    def __post_init__(self):
        if self.policy not in AUGMENT_POLICIES:
            raise ValueError(f"data.augment.policy must be one of {list(AUGMENT_POLICIES)}, got {self.policy!r}")


AUGMENT_POLICIES = (None, "trivial")


def _bins(high: float):
    return lambda num_bins, height, width: torch.linspace(0.0, high, num_bins)


class MedicalTrivialAugment(v2.TrivialAugmentWide):
    """TrivialAugment (one random operation at a random strength per image) restricted to what keeps
    a medical image's label: small shears, shifts and rotations (at most 0.15, 10% of the side and
    15 degrees, where the ImageNet space goes to 0.99, 32 px and 135), mild brightness, contrast and
    sharpness, autocontrast; saturation only for colour images (dermoscopy, pap smear), never on grey
    scans; never posterize, solarize or equalize, which invent intensities a scanner never shows.
    Flips stay the separate, anatomy-dependent `hflip_prob` / `vflip_prob`."""

    def __init__(self, colour: bool, num_magnitude_bins: int = 31):
        super().__init__(num_magnitude_bins=num_magnitude_bins, interpolation=v2.InterpolationMode.BILINEAR)
        self.colour = colour
        space = {
            "Identity": (lambda num_bins, height, width: None, False),
            "ShearX": (_bins(0.15), True), "ShearY": (_bins(0.15), True),
            "TranslateX": (lambda num_bins, height, width: torch.linspace(0.0, 0.1 * width, num_bins), True),
            "TranslateY": (lambda num_bins, height, width: torch.linspace(0.0, 0.1 * height, num_bins), True),
            "Rotate": (_bins(15.0), True),
            "Brightness": (_bins(0.3), True), "Contrast": (_bins(0.3), True), "Sharpness": (_bins(0.3), True),
            "AutoContrast": (lambda num_bins, height, width: None, False),
        }
        if colour:
            space["Color"] = (_bins(0.3), True)
        self._AUGMENTATION_SPACE = space

    def extra_repr(self) -> str:
        return f"colour={self.colour}, operations={list(self._AUGMENTATION_SPACE)}"


class ToUnitRange(torch.nn.Module):
    """Convert PIL / ndarray / tensor to a float32 (C, H, W) tensor in [0, 1].

    8- and 16-bit unsigned integers are scaled by their type's maximum, so 16-bit X-rays keep their
    full dynamic range; anything else (signed CT values, float arrays outside [0, 1]) is rescaled
    per image by its min and max, because there is no type maximum to trust.
    """

    def forward(self, image) -> torch.Tensor:
        if not isinstance(image, torch.Tensor):
            image = F.to_image(image)  # PIL or (H, W[, C]) ndarray
        image = image.as_subclass(torch.Tensor)
        if image.ndim == 2:
            image = image.unsqueeze(0)
        if image.ndim != 3:
            raise ValueError(f"expected a (C, H, W) or (H, W) image, got shape {tuple(image.shape)}")
        if image.dtype in (torch.uint8, torch.uint16):
            return F.to_dtype(image, torch.float32, scale=True)
        image = image.to(torch.float32)
        low, high = image.min(), image.max()
        if low >= 0 and high <= 1:
            return image
        return (image - low) / (high - low).clamp_min(1e-8)


class AdaptChannels(torch.nn.Module):
    """Match the channel count a model expects: 1->3 repeats, 3->1 takes luminance, 4/2 drop alpha.

    Greyscale and colour files are mixed within real datasets (the brain MRI set has both), so this
    runs per image rather than being decided once per dataset.
    """

    def __init__(self, in_chans: int = 3):
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        self.in_chans = in_chans

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        channels = image.shape[-3]
        if channels in (2, 4):  # LA / RGBA: alpha is an acquisition artefact, not signal
            image, channels = image[..., : channels - 1, :, :], channels - 1
        if channels == self.in_chans:
            return image
        if channels == 1:
            return image.expand(*image.shape[:-3], self.in_chans, *image.shape[-2:]).clone()
        if channels == 3 and self.in_chans == 1:
            weights = torch.tensor(_LUMA, dtype=image.dtype, device=image.device).view(3, 1, 1)
            return (image * weights).sum(dim=-3, keepdim=True)
        raise ValueError(f"cannot adapt a {channels}-channel image to in_chans={self.in_chans}")

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}"


class PerImageNormalize(torch.nn.Module):
    """Per-image ``zscore`` (zero mean, unit std) or ``minmax`` (stretch to [0, 1]).

    Useful when intensities have no fixed scale across scanners (MRI); the statistics are taken over
    the whole image, all channels together, so channel ratios are kept.
    """

    def __init__(self, mode: str = "zscore", eps: float = 1e-6):
        super().__init__()
        if mode not in ("zscore", "minmax"):
            raise ValueError(f"mode must be 'zscore' or 'minmax', got {mode!r}")
        self.mode, self.eps = mode, eps

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if self.mode == "zscore":
            return (image - image.mean()) / image.std(unbiased=False).clamp_min(self.eps)
        low, high = image.min(), image.max()
        return (image - low) / (high - low).clamp_min(self.eps)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class _PureTensor(torch.nn.Module):
    """Strip the tv_tensor wrapper and return a contiguous float32 tensor, what collate expects."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.as_subclass(torch.Tensor).to(torch.float32).contiguous()


def resolve_mean_std(
    normalize: str | tuple[Sequence[float], Sequence[float]] | None, in_chans: int = 3
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Mean and std for a fixed normalisation, or None when normalisation is per image or off.

    For one channel, ImageNet statistics are averaged over RGB, matching how timm folds pretrained
    RGB stem weights into a single input channel.
    """
    if normalize is None or normalize in ("zscore", "minmax"):
        return None
    if isinstance(normalize, str):
        if normalize != "imagenet":
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, None or (mean, std); got {normalize!r}")
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean, std = (tuple(float(v) for v in values) for values in normalize)
    if len(mean) != len(std):
        raise ValueError(f"mean and std differ in length: {mean} vs {std}")
    if len(mean) == in_chans:
        return tuple(mean), tuple(std)
    if len(mean) == 1:
        return tuple(mean) * in_chans, tuple(std) * in_chans
    if len(mean) == 3 and in_chans == 1:
        return (sum(mean) / 3,), (sum(std) / 3,)
    raise ValueError(f"{len(mean)} normalisation values do not fit in_chans={in_chans}")


def _resize_ops(img_size: int, resize: str) -> list[torch.nn.Module]:
    if resize == "resize":  # squash: keeps the whole field of view, distorts aspect
        return [v2.Resize((img_size, img_size), antialias=True)]
    if resize == "pad":  # letterbox: keeps aspect and field of view, pads with black (zero) borders
        return [v2.Resize(size=None, max_size=img_size, antialias=True), v2.CenterCrop(img_size)]
    if resize == "center_crop":  # keeps aspect, may cut the image edges
        return [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size)]
    raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")


def _augment_ops(img_size: int, augment: AugmentConfig, in_chans: int = 3) -> list[torch.nn.Module]:
    ops: list[torch.nn.Module] = []
    if augment.crop_scale is not None:
        ops.append(v2.RandomResizedCrop(img_size, scale=augment.crop_scale, ratio=augment.crop_ratio, antialias=True))
    if augment.rotation or augment.translate or tuple(augment.scale) != (1.0, 1.0):
        ops.append(
            v2.RandomAffine(
                degrees=augment.rotation,
                translate=(augment.translate, augment.translate) if augment.translate else None,
                scale=augment.scale,
                interpolation=v2.InterpolationMode.BILINEAR,
            )
        )
    if augment.hflip_prob:
        ops.append(v2.RandomHorizontalFlip(augment.hflip_prob))
    if augment.vflip_prob:
        ops.append(v2.RandomVerticalFlip(augment.vflip_prob))
    if augment.policy == "trivial":
        ops.append(MedicalTrivialAugment(colour=in_chans == 3))
    if augment.brightness or augment.contrast:
        ops.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
    if augment.blur_prob:
        kernel = 2 * round(3 * augment.blur_sigma[1]) + 1  # covers +-3 sigma of the widest blur
        ops.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=augment.blur_sigma)], p=augment.blur_prob))
    return ops


def build_transform(
    img_size: int = 224,
    resize: str = "resize",
    in_chans: int = 3,
    normalize: str | tuple[Sequence[float], Sequence[float]] | None = "imagenet",
    train: bool = False,
    augment: AugmentConfig | None = None,
) -> v2.Compose:
    """One modality's pipeline: any image in, float32 (in_chans, img_size, img_size) tensor out.

    ``normalize``: ``"imagenet"`` (fixed statistics, for ImageNet-pretrained backbones), ``"zscore"``
    or ``"minmax"`` (per image), ``None`` (leave [0, 1]) or an explicit ``(mean, std)`` pair.
    Eval pipelines (``train=False``) contain no random operation, so they are deterministic.
    """
    if img_size <= 0:
        raise ValueError(f"img_size must be positive, got {img_size}")
    mean_std = resolve_mean_std(normalize, in_chans)
    ops: list[torch.nn.Module] = [ToUnitRange(), AdaptChannels(in_chans), *_resize_ops(img_size, resize)]
    if train:
        ops += _augment_ops(img_size, augment or AugmentConfig(), in_chans)
    if mean_std is not None:
        ops.append(v2.Normalize(*mean_std))
    elif normalize is not None:
        ops.append(PerImageNormalize(normalize))
    ops.append(_PureTensor())
    return v2.Compose(ops)


def build_transforms(
    modalities: Sequence[str],
    train: bool = False,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    **defaults,
) -> dict[str, v2.Compose]:
    """One pipeline per modality: shared ``defaults`` (``build_transform`` arguments) with per-modality
    ``overrides``, e.g. z-score for an MRI branch and ImageNet statistics for a CT branch."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(modalities)
    if unknown:
        raise ValueError(f"transform overrides for unknown modalities {sorted(unknown)}; known: {list(modalities)}")
    return {m: build_transform(train=train, **{**defaults, **overrides.get(m, {})}) for m in modalities}
