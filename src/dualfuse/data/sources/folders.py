"""Image folders: `root/<class>/*` or `root/<split>/<class>/*`, any format PIL reads."""
from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from dualfuse.data.base import (
    DEFAULT_MODALITY,
    DEFAULT_TASK,
    CaseDataset,
    CaseRecord,
    DataError,
    ImageRef,
    Transform,
    skip_or_raise,
    to_chw,
    validate_pixels,
)

__all__ = ["SPLIT_ALIASES", "ImageFolderDataset", "image_extensions", "open_image", "read_pil"]

#: Folder names accepted as split folders, mapped to the canonical train/val/test.
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}

# Modes PIL converts faithfully to grey/RGB. Anything else (LAB, HSV, ...) needs a colour-managed
# conversion that PIL does not do, so it is rejected rather than silently mis-converted.
_TO_RGB = {"RGB", "RGBX", "CMYK", "YCbCr"}
_WITH_ALPHA = {"LA": "LA", "PA": "RGBA", "RGBA": "RGBA", "La": "LA", "RGBa": "RGBA"}


def image_extensions() -> frozenset[str]:
    """File suffixes PIL can open (lower case, with the dot)."""
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _to_unit(array: np.ndarray, mode: str, where: object) -> np.ndarray:
    """Integer/float pixel array -> float32 in [0,1].

    8-bit modes divide by 255 and 16-bit modes by 65535 (intensities stay comparable between
    images); 32-bit "I" and float "F" images have no fixed range, so they are min-max scaled per
    image, except "I" images whose values fit 16 bits (how older Pillow opens 16-bit PNGs).
    """
    validate_pixels(array.astype(np.float32) if array.dtype.kind == "f" else array, where)
    if mode.startswith("I;16"):
        return array.astype(np.float32) / 65535.0
    if mode in ("I", "F"):
        if mode == "I" and array.min() >= 0 and array.max() <= 65535:
            return array.astype(np.float32) / 65535.0
        lo, hi = float(array.min()), float(array.max())
        return ((array.astype(np.float64) - lo) / (hi - lo)).astype(np.float32)
    return array.astype(np.float32) / 255.0


@contextlib.contextmanager
def open_image(path: str | Path):
    """`PIL.Image.open` that turns every failure into one `DataError` line naming the file.

    A header claiming more than `Image.MAX_IMAGE_PIXELS` pixels (PIL's decompression-bomb limit,
    e.g. a 20000x20000 PNG) is refused before any pixel is decoded; PIL's own warning for it is
    silenced because the error says the same thing once.
    """
    where = str(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        claimed = re.search(r"\((\d+) pixels\)", str(error))  # PIL names the size only in its message
        size = f"{claimed.group(1)} pixels" if claimed else "too many pixels"
        raise DataError(where, f"image too large ({size}, over PIL's decompression-bomb limit of {_pixel_limit()})") from None
    except (OSError, SyntaxError, ValueError) as error:  # UnidentifiedImageError is an OSError
        raise _pil_error(where, error) from None
    with image:
        width, height = image.size
        limit = _pixel_limit()
        if limit and width * height > limit:
            raise DataError(where, f"image too large ({width}x{height} pixels, over PIL's decompression-bomb limit of {limit})")
        yield image


def _pixel_limit() -> int:
    return int(Image.MAX_IMAGE_PIXELS or 0)


def _pil_error(where: str, error: Exception) -> DataError:
    """PIL's many exception types as one `DataError` line."""
    if isinstance(error, UnidentifiedImageError):
        return DataError(where, "not an image (PIL cannot identify the file)")
    if "truncated" in str(error).lower():
        return DataError(where, "truncated image file")
    return DataError(where, f"cannot decode image ({error})")


def read_pil(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Decode one 2D image file with PIL into a float32 (C,H,W) tensor in [0,1].

    EXIF orientation is applied; palette images go through their palette; alpha is composited
    onto black (transparent = background); `channels` 1 or 3 converts, None keeps native.
    """
    where = str(path)
    with open_image(path) as image:
        try:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise DataError(where, f"multi-frame image ({frames} frames); expected one 2D image")
            image.load()
            image = ImageOps.exif_transpose(image)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError) as error:
            raise _pil_error(where, error) from None

    mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    elif mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode in _TO_RGB:
        image, mode = image.convert("RGB"), "RGB"
    elif mode in _WITH_ALPHA:
        image, mode = image.convert(_WITH_ALPHA[mode]), _WITH_ALPHA[mode]
    elif mode != "L" and not mode.startswith("I") and mode != "F":
        raise DataError(where, f"unsupported image mode {mode!r}")

    array = np.asarray(image)
    if mode in ("LA", "RGBA"):
        alpha = array[..., -1:].astype(np.float32) / 255.0
        array = _to_unit(array[..., :-1], "L", where) * alpha
    else:
        array = _to_unit(array, mode, where)
    return to_chw(array, channels, where)


class ImageFolderDataset(CaseDataset):
    """Class-per-folder images, with or without split folders above the class folders.

    Layout is detected: if every sub-folder of `root` is a split name (`SPLIT_ALIASES`), it is
    `root/<split>/<class>/*`, otherwise `root/<class>/*` (records then have `split=None`). Class
    names are the union of class folder names, sorted. Files whose suffix PIL does not know are
    not images and are listed in `ignored`; an empty class folder is a `DataError`, a broken
    symlink an unreadable image, a folder that cannot be listed a `DataError` naming it. Case ids
    are paths below `root` without suffix, with suffix where two files differ only in it.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        channels: int | None = None,
        classes: Sequence[str] | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
        modality: str = DEFAULT_MODALITY,
        task: str = DEFAULT_TASK,
    ):
        self.root = Path(root)
        self.channels = channels
        self.ignored: list[str] = []
        if not self.root.is_dir():
            raise DataError(str(self.root), "image folder not found")
        folders = _subdirs(self.root)
        if not folders:
            raise DataError(str(self.root), "empty folder (no class folders)")
        split_names = {f.name.lower() in SPLIT_ALIASES for f in folders}
        if split_names == {True}:
            groups = [(SPLIT_ALIASES[f.name.lower()], f) for f in folders]
        elif split_names == {False}:
            groups = [(None, self.root)]
        else:
            raise DataError(str(self.root), f"mixes split folders and class folders: {[f.name for f in folders]}")
        if split is not None and split not in set(SPLIT_ALIASES.values()):
            raise ValueError(f"split must be one of train/val/test, got {split!r}")
        if split is not None and split not in {name for name, _ in groups}:
            raise DataError(str(self.root), f"no {split!r} split folder (found {[f.name for f in folders]})")

        skipped: list[tuple[str, str]] = []
        found: list[tuple[str | None, str, Path]] = []
        extensions = image_extensions()
        for split_name, folder in groups:
            if split is not None and split_name != split:
                continue
            class_dirs = _subdirs(folder)
            if not class_dirs:
                skip_or_raise(DataError(str(folder), "empty folder (no class folders)"), folder, skip_bad, skipped)
            for class_dir in class_dirs:
                entries = [p for p in _listdir(class_dir) if not p.name.startswith(".")]
                broken = [p for p in entries if p.is_symlink() and not p.exists()]
                files = [p for p in entries if p.is_file()]
                images = [p for p in files if p.suffix.lower() in extensions]
                self.ignored.extend(str(p) for p in files if p.suffix.lower() not in extensions)
                for link in broken:
                    skip_or_raise(DataError(str(link), "broken symlink"), link, skip_bad, skipped)
                if not images and not broken:
                    skip_or_raise(DataError(str(class_dir), "empty class folder (no image files)"), class_dir, skip_bad, skipped)
                found.extend((split_name, class_dir.name, p) for p in images)

        names = list(classes) if classes is not None else sorted({c for _, c, _ in found})
        index = {name: i for i, name in enumerate(names)}
        records = []
        ids = _case_ids(self.root, [path for _, _, path in found])
        for (split_name, class_name, path), case_id in zip(found, ids):
            if class_name not in index:
                raise DataError(str(path.parent), f"class folder {class_name!r} not in classes {names}")
            records.append(
                CaseRecord(
                    case_id=case_id,
                    images={modality: ImageRef(str(path))},
                    labels={task: index[class_name]},
                    split=split_name,
                )
            )
        super().__init__(records, (modality,), {task: names}, transform, skip_bad, skipped)

    def probe(self, ref: ImageRef) -> None:
        """Existence, non-zero size and a readable header (cheap: PIL reads no pixels here)."""
        super().probe(ref)
        with open_image(ref.path):
            pass

    def read_image(self, ref: ImageRef) -> torch.Tensor:
        return read_pil(ref.path, self.channels)


def _listdir(folder: Path) -> list[Path]:
    """Sorted entries of `folder`; a folder that cannot be listed is one `DataError` line naming it."""
    try:
        return sorted(folder.iterdir())
    except OSError as error:  # PermissionError, or the folder vanished / is not a folder
        raise DataError(str(folder), f"cannot list folder ({error.strerror or type(error).__name__})") from None


def _subdirs(folder: Path) -> list[Path]:
    return [p for p in _listdir(folder) if p.is_dir() and not p.name.startswith(".")]


def _case_ids(root: Path, paths: Sequence[Path]) -> list[str]:
    """Case ids: the path below `root` without its suffix (`train/a/0`), unique.

    Files that only differ in suffix (`a/x.png`, `a/x.jpg`) keep their suffix (`a/x.png`) so they
    stay two cases; every other id is unchanged, so split files saved before still match.
    """
    stems = [path.relative_to(root).with_suffix("").as_posix() for path in paths]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem] = counts.get(stem, 0) + 1
    ids = [path.relative_to(root).as_posix() if counts[stem] > 1 else stem for stem, path in zip(stems, paths)]
    owner: dict[str, Path] = {}
    for case_id, path in zip(ids, paths):  # only odd names still collide, e.g. `x.png` and `x.png.jpg`
        if case_id in owner:
            raise DataError(str(path), f"case id {case_id!r} is also the id of {owner[case_id]}; rename one of them")
        owner[case_id] = path
    return ids
