"""Paired training data: folder layouts of the public fusion datasets, identical augmentation of
both sources, and a resumable, distribution-aware sample stream.

Source order follows the reference: VIF A = visible, B = infrared; MEF A = over-exposed,
B = under-exposed; MFF A = far focus, B = near focus. Grey sources are repeated to 3 channels.
"""
from __future__ import annotations

import math
import pathlib
import re
import warnings
from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from tcmoa.config import task_index
from tcmoa.model import normalize

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pnm"})

# Random-resized-crop area ranges of the reference, per task.
TASK_SCALES: dict[str, tuple[float, float]] = {"vif": (0.81, 1.0), "mef": (0.2, 1.0), "mff": (0.64, 1.0)}
CROP_RATIO = (3 / 4, 4 / 3)


@dataclass(frozen=True)
class Layout:
    """Two sibling folders holding the A and B sources of one dataset (names matched case-insensitively)."""

    name: str
    task: str
    a: str
    b: str


LAYOUTS: tuple[Layout, ...] = (
    Layout("LLVIP", "vif", "visible", "infrared"),
    Layout("MSRS / M3FD / VIFB / RoadScene", "vif", "vi", "ir"),
    Layout("M3FD (original names)", "vif", "vis", "ir"),
    Layout("medical (Harvard atlas)", "vif", "MRI", "CT"),
    Layout("SICE", "mef", "oe", "ue"),
    Layout("MEFB", "mef", "over", "under"),
    Layout("RealMFF", "mff", "imageA", "imageB"),
    Layout("MFI-WHU", "mff", "source_1", "source_2"),
    Layout("MFIFB", "mff", "A", "B"),
)


class PairSource(Protocol):
    """Anything that yields aligned source pairs: (H, W, 3) float32 in [0, 1] each, and a name."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]: ...


# --- reading images -------------------------------------------------------------------------------
def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def read_image01(path: "str | pathlib.Path") -> np.ndarray:
    """Read any PIL-readable image by its content (not its extension): (H, W, 3) float32 in [0, 1]."""
    path = pathlib.Path(path)
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale (PNG/TIFF); Pillow widens some of it to 32-bit 'I'.
        arr = np.asarray(img, dtype=np.float64) / 65535.0
    elif mode == "F":
        arr = np.asarray(img, dtype=np.float64)
    elif mode in ("1", "L", "LA"):
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
    else:  # RGB, RGBA, P, CMYK, YCbCr, ...
        arr = np.asarray(img.convert("RGB"), dtype=np.float64) / 255.0
    arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr)


def image_size(path: pathlib.Path) -> tuple[int, int]:
    """(width, height) from the header, after EXIF orientation."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                width, height = height, width
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not a readable image ({exc})") from exc
    return width, height


# --- folder layouts -------------------------------------------------------------------------------
def _subdirs(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}


def find_layout(root: pathlib.Path) -> tuple[Layout, pathlib.Path, pathlib.Path] | None:
    subdirs = _subdirs(root)
    for layout in LAYOUTS:
        if layout.a.lower() in subdirs and layout.b.lower() in subdirs:
            return layout, subdirs[layout.a.lower()], subdirs[layout.b.lower()]
    return None


def detect_layout(root: "str | pathlib.Path") -> tuple[Layout, pathlib.Path, pathlib.Path]:
    """Find which known layout `root` holds. Returns (layout, folder A, folder B)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    found = find_layout(root)
    if found is not None:
        return found
    subdirs = _subdirs(root)
    known = "; ".join(f"{l.name}: {l.a}/{l.b}" for l in LAYOUTS)
    raise ValueError(
        f"{root}: no known pair layout (sub-folders: {sorted(p.name for p in subdirs.values()) or 'none'}). "
        f"Known layouts: {known}"
    )


def _side_suffix(stems: Sequence[str]) -> str | None:
    """A '_X' / '-X' ending every stem of one side shares (e.g. RealMFF-style '001_A'), else None."""
    endings = {re.split(r"[_-]", s)[-1] for s in stems if re.search(r"[_-]", s)}
    if len(endings) == 1 and all(re.search(r"[_-]", s) for s in stems):
        return endings.pop()
    return None


def _keyed(paths: list[pathlib.Path], suffix: str | None, folder: pathlib.Path) -> dict[str, pathlib.Path]:
    keyed: dict[str, pathlib.Path] = {}
    for path in paths:
        key = path.stem[: -len(suffix) - 1] if suffix else path.stem
        if key in keyed:
            raise ValueError(f"{folder}: two files for the same pair name {key!r}: {keyed[key].name}, {path.name}")
        keyed[key] = path
    return keyed


def match_pairs(dir_a: pathlib.Path, dir_b: pathlib.Path) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """Pairs of files with the same stem (or the same stem up to a side tag like '_A'/'_B')."""
    files_a, files_b = list_images(dir_a), list_images(dir_b)
    if not files_a or not files_b:
        empty = dir_a if not files_a else dir_b
        raise ValueError(f"{empty}: no image files")
    suffix_a = _side_suffix([p.stem for p in files_a])
    suffix_b = _side_suffix([p.stem for p in files_b])
    if suffix_a == suffix_b:  # a shared ending is part of the name, not a side tag
        suffix_a = suffix_b = None
    keyed_a, keyed_b = _keyed(files_a, suffix_a, dir_a), _keyed(files_b, suffix_b, dir_b)
    common = sorted(set(keyed_a) & set(keyed_b))
    if not common:
        raise ValueError(f"{dir_a} and {dir_b}: no file names in common, so no pairs")
    unmatched = sorted(set(keyed_a) ^ set(keyed_b))
    if unmatched:
        warnings.warn(f"{dir_a.parent}: {len(unmatched)} files without a partner skipped: {unmatched[:5]}",
                      stacklevel=2)
    return [(key, keyed_a[key], keyed_b[key]) for key in common]


class PairFolder:
    """Aligned pairs from one dataset folder in a known layout (or two explicit folders).

    split: a sub-folder level such as LLVIP's `visible/train` (inside the source folders) or
    MSRS's `train/vi` (above them). Sizes are checked from the headers up front, so a bad pair
    fails before training starts, naming both files.
    """

    def __init__(self, root: "str | pathlib.Path", task: str | None = None, split: str | None = None):
        root = pathlib.Path(root)
        if split and find_layout(root) is None and (root / split).is_dir():
            root = root / split
        self.layout, dir_a, dir_b = detect_layout(root)
        dir_a, dir_b = self._descend(dir_a, split), self._descend(dir_b, split)
        self.root = root
        self.task = self.layout.task if task is None else self._checked_task(task)
        self.pairs = match_pairs(dir_a, dir_b)
        for name, path_a, path_b in self.pairs:
            size_a, size_b = image_size(path_a), image_size(path_b)
            if size_a != size_b:
                raise ValueError(f"pair {name!r}: {path_a} is {size_a[0]}x{size_a[1]} but {path_b} is "
                                 f"{size_b[0]}x{size_b[1]} (sources must be co-registered and equal in size)")

    @staticmethod
    def _checked_task(task: str) -> str:
        task_index(task)
        return task.lower()

    @staticmethod
    def _descend(folder: pathlib.Path, split: str | None) -> pathlib.Path:
        if list_images(folder):
            return folder
        subdirs = _subdirs(folder)
        if split and split.lower() in subdirs:
            return subdirs[split.lower()]
        if subdirs:
            raise ValueError(f"{folder}: no images, only sub-folders {sorted(p.name for p in subdirs.values())}: "
                             f"choose one with split=")
        raise ValueError(f"{folder}: no image files")

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        name, path_a, path_b = self.pairs[index]
        a, b = read_image01(path_a), read_image01(path_b)
        if a.shape != b.shape:
            raise ValueError(f"pair {name!r}: {path_a} has shape {a.shape}, {path_b} has {b.shape}")
        return a, b, name


class ConcatPairs:
    """Several pair sources of one task as one (e.g. RealMFF + MFI-WHU)."""

    def __init__(self, sources: Sequence[PairSource]):
        if not sources:
            raise ValueError("no pair sources given")
        self.sources = list(sources)
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} out of range [0, {len(self)})")
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.sources[which].load(index - int(self.offsets[which]))


# --- augmentation ---------------------------------------------------------------------------------
def random_resized_crop_box(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a crop covering a random share `scale` of the area with a random aspect."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fall back to the largest central crop within the aspect range.
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _to_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()


class PairTransform:
    """The same random-resized crop and horizontal flip on both sources, then ImageNet normalisation."""

    def __init__(self, size: int, scale: tuple[float, float], flip: bool = True):
        if size < 1:
            raise ValueError(f"crop size must be positive, got {size}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"crop scale range must satisfy 0 < low <= high <= 1, got {scale}")
        self.size, self.scale, self.flip = size, tuple(scale), flip

    def _resize(self, pair: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(pair, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return out.clamp(0.0, 1.0)

    def __call__(self, a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        top, left, h, w = random_resized_crop_box(a.shape[0], a.shape[1], self.scale, rng)
        pair = torch.stack([_to_chw(a[top:top + h, left:left + w]), _to_chw(b[top:top + h, left:left + w])])
        pair = self._resize(pair)
        if self.flip and rng.random() < 0.5:
            pair = pair.flip(-1)
        return self._pack(pair)

    def center(self, a: np.ndarray, b: np.ndarray) -> dict[str, torch.Tensor]:
        """Deterministic view for previews: the largest central square, resized."""
        side = min(a.shape[:2])
        top, left = (a.shape[0] - side) // 2, (a.shape[1] - side) // 2
        pair = torch.stack([_to_chw(a[top:top + side, left:left + side]), _to_chw(b[top:top + side, left:left + side])])
        return self._pack(self._resize(pair))

    @staticmethod
    def _pack(pair: torch.Tensor) -> dict[str, torch.Tensor]:
        a01, b01 = pair[0], pair[1]
        normed = normalize(pair)
        return {"a": normed[0], "b": normed[1], "a01": a01, "b01": b01}


# --- the training stream ----------------------------------------------------------------------------
class PairStream(torch.utils.data.Dataset):
    """An endless, reproducible stream of augmented pairs for one stream (a task) and one rank.

    Sample q of rank r is a pure function of (seed, stream, world size, r, q): pass c = q // m
    over the data (m = len // world) uses the permutation drawn from (seed, stream, c), rank r
    takes every world-th entry; the crop and flip come from (seed, stream, c, index). Resuming at
    step s therefore only needs q = s * batch size: no sampler or worker RNG state is saved, and
    the number of loader workers does not change the data.

    stream: a number that keeps streams apart (training uses the task index).
    transform: called as transform(a, b, rng).
    """

    def __init__(self, source: PairSource, transform, stream: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1):
        if len(source) < world_size:
            raise ValueError(f"stream {stream}: {len(source)} items cannot be split over {world_size} workers")
        self.source, self.transform = source, transform
        self.stream = stream
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = len(source) // world_size
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _permutation(self, cycle: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != cycle:
            rng = np.random.default_rng([self.seed, self.stream, cycle])
            self._perm_cache = (cycle, rng.permutation(len(self.source)))
        return self._perm_cache[1]

    def index_of(self, position: int) -> tuple[int, int]:
        """(pass over the data, dataset index) of stream position `position` on this rank."""
        cycle, offset = divmod(position, self.per_rank)
        return cycle, int(self._permutation(cycle)[self.rank + self.world_size * offset])

    def __getitem__(self, position: int) -> dict:
        cycle, index = self.index_of(position)
        a, b, name = self.source.load(index)
        item = self.transform(a, b, np.random.default_rng([self.seed, self.stream, cycle, index, 1]))
        item["name"] = name
        return item

    def __len__(self) -> int:  # one pass; the stream itself is endless
        return self.per_rank


class StreamPositions(torch.utils.data.Sampler):
    """Positions start, start + 1, ... for `PairStream` (endless)."""

    def __init__(self, start: int = 0):
        self.start = start

    def __iter__(self):
        position = self.start
        while True:
            yield position
            position += 1


def stream_loader(stream: PairStream, batch_size: int, start_batch: int, num_workers: int,
                  pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of `stream` from batch `start_batch` on, in order, whatever the worker count."""
    # A private generator keeps the loader from drawing on the global torch RNG (router noise uses it).
    return torch.utils.data.DataLoader(
        stream, batch_size=batch_size, sampler=StreamPositions(start_batch * batch_size),
        num_workers=num_workers, pin_memory=pin_memory, persistent_workers=False,
        generator=torch.Generator().manual_seed(0), prefetch_factor=2 if num_workers else None,
    )
