"""Load the PBC single-cell images as preprocessed uint8 arrays, split with a fixed seed.

Labels follow vocabulary 2.0: the folder is the class, except that promyelocytes (``PMY_``
files in ``ig/``) are labelled ``promyelocyte``. The split is stratified by folder, so it is
the same split that the 1.x models used (their test cells stay unseen).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from shared.preprocessing import DEFAULT_DECODER, IMAGE_SIZE, PREPROCESSING_VERSION, preprocess_file
from shared.vocabulary import CELL_TYPES

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"
SPLIT_SEED = 20261126


PBC_FOLDERS: tuple[str, ...] = (
    "basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet",
)
FILE_PREFIX_LABELS = {"PMY_": "promyelocyte"}  # finer types carried by PBC file names


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # (n, IMAGE_SIZE, IMAGE_SIZE, 3) uint8
    labels: np.ndarray  # (n,) int, index into CELL_TYPES
    paths: list[str]
    source: str = "pbc"

    def __len__(self) -> int:
        return len(self.labels)


def concatenate(splits: list[Split], source: str) -> Split:
    return Split(np.concatenate([s.images for s in splits]), np.concatenate([s.labels for s in splits]),
                 [p for s in splits for p in s.paths], source)


def label_of(folder: str, file_name: str) -> str:
    for prefix, label in FILE_PREFIX_LABELS.items():
        if file_name.startswith(prefix):
            return label
    return folder


def data_dir() -> Path:
    return Path(os.environ.get("PBC_DIR", DEFAULT_DATA_DIR))


def list_images(root: Path, per_class_limit: int | None = None) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """All image files under ``root/<folder>/`` in a stable order, with their folder index and label index."""
    paths: list[Path] = []
    folders: list[int] = []
    for index, cell_type in enumerate(PBC_FOLDERS):
        folder = root / cell_type
        if not folder.is_dir():
            raise FileNotFoundError(f"missing class folder {folder}: see README, 'Data'")
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".tif", ".tiff"))
        if per_class_limit is not None:
            files = files[:per_class_limit]
        paths.extend(files)
        folders.extend([index] * len(files))
    labels = [CELL_TYPES.index(label_of(PBC_FOLDERS[f], p.name)) for f, p in zip(folders, paths)]
    return paths, np.asarray(folders, dtype=np.int64), np.asarray(labels, dtype=np.int64)


def _load(path: Path, decoder: str = DEFAULT_DECODER, size: int = IMAGE_SIZE) -> np.ndarray:
    """The network input of one file, by the service's own path (``shared.preprocessing.preprocess_file``);
    ``size`` other than the input side: the same steps at another side (training's ``--source-scale``)."""
    return preprocess_file(path, size, decoder)


def cache_key(paths: list[Path], decoder: str = DEFAULT_DECODER, size: int = IMAGE_SIZE) -> str:
    """Cache name part: the file list, the size and the preprocessing (its version and decoder path)."""
    version = PREPROCESSING_VERSION if decoder == DEFAULT_DECODER else f"{PREPROCESSING_VERSION}-{decoder}"
    text = "\n".join(map(str, paths)) + f"|{size}|preprocessing {version}"
    return f"p{version}_" + hashlib.sha256(text.encode()).hexdigest()[:16]


def load_arrays(paths: list[Path], cache_dir: Path | None, name: str = "pbc",
                decoder: str = DEFAULT_DECODER, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode and preprocess every image to ``size`` x ``size`` (cached as .npy keyed by the file list, the size
    and the preprocessing)."""
    cache = cache_dir / f"{name}_{size}_{cache_key(paths, decoder, size)}.npy" if cache_dir else None
    if cache is not None and cache.exists():
        return np.load(cache)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        images = np.stack(list(pool.map(lambda p: _load(p, decoder, size), paths)))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, images)
    return images


def split_dataset(
    root: Path, cache_dir: Path | None = None, per_class_limit: int | None = None,
    val_fraction: float = 0.1, test_fraction: float = 0.1, decoder: str = DEFAULT_DECODER,
) -> tuple[Split, Split, Split]:
    """Train/validation/test split stratified by folder with the fixed seed ``SPLIT_SEED``
    (``decoder``: ``shared.preprocessing.DECODERS``, the earlier path only to measure against)."""
    paths, folders, labels = list_images(root, per_class_limit)
    images = load_arrays(paths, cache_dir, decoder=decoder)
    index = np.arange(len(paths))
    train_val, test = train_test_split(index, test_size=test_fraction, stratify=folders, random_state=SPLIT_SEED)
    train, val = train_test_split(
        train_val, test_size=val_fraction / (1 - test_fraction), stratify=folders[train_val], random_state=SPLIT_SEED
    )

    def subset(rows: np.ndarray) -> Split:
        return Split(images[rows], labels[rows], [str(paths[i]) for i in rows])

    return subset(train), subset(val), subset(test)
