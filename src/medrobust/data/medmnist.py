"""MedMNIST v2 / MedMNIST+ 2D datasets from their official ``.npz`` files.

Facts (class names in label-index order, tasks, channels, sample counts, per-size MD5s and the
Zenodo record) are copied from the official ``medmnist/info.py`` (MedMNIST v3.0.2, GitHub
MedMNIST/MedMNIST), so a file is only accepted when it is byte-identical to the release, or a
documented variant of it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medrobust.data.base import ImageDataset
from medrobust.data.catalog import SPLITS, register_dataset
from medrobust.data.download import describe_error, file_md5
from medrobust.data.download import download as fetch
from medrobust.errors import DataError

SIZES = (28, 64, 128, 224)
ZENODO_URL = "https://zenodo.org/records/10519652/files/{filename}?download=1"

_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right",
           "liver", "lung-left", "lung-right", "pancreas", "spleen")


@dataclass(frozen=True)
class MedMNISTInfo:
    """What MedMNIST's INFO says about one 2D flag (``md5`` maps image size to the file's MD5)."""

    task: str
    n_channels: int
    class_names: tuple[str, ...]
    md5: dict[int, str | None]
    n_samples: dict[str, int] = field(default_factory=dict)
    license: str = "CC BY 4.0"


def _md5s(m28: str, m64: str, m128: str, m224: str) -> dict[int, str | None]:
    return {28: m28, 64: m64, 128: m128, 224: m224}


MEDMNIST_FLAGS: dict[str, MedMNISTInfo] = {
    "pathmnist": MedMNISTInfo(
        "multi-class", 3,
        ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
         "normal colon mucosa", "cancer-associated stroma",
         "colorectal adenocarcinoma epithelium"),
        _md5s("a8b06965200029087d5bd730944a56c1", "55aa9c1e0525abe5a6b9d8343a507616",
              "ac42d08fb904d92c244187169d1fd1d9", "2c51a510bcdc9cf8ddb2af93af1eadec"),
        {"train": 89996, "val": 10004, "test": 7180}),
    "chestmnist": MedMNISTInfo(
        "multi-label, binary-class", 1,
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule",
         "pneumonia", "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis",
         "pleural", "hernia"),
        _md5s("02c8a6516a18b556561a56cbdd36c4a8", "9de6cd0b934ebb5b7426cfba5efbae16",
              "db107e5590b27930b62dbaf558aebee3", "45bd33e6f06c3e8cdb481c74a89152aa"),
        {"train": 78468, "val": 11219, "test": 22433}),
    "dermamnist": MedMNISTInfo(
        "multi-class", 3,
        ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
         "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
         "vascular lesions"),
        _md5s("0744692d530f8e62ec473284d019b0c7", "b70a2f5635c6199aeaa28c31d7202e1f",
              "2defd784463fa5243564e855ed717de1", "8974907d8e169bef5f5b96bc506ae45d"),
        {"train": 7007, "val": 1003, "test": 2005}, license="CC BY-NC 4.0"),
    "octmnist": MedMNISTInfo(
        "multi-class", 1,
        ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
        _md5s("c68d92d5b585d8d81f7112f81e2d0842", "e229e9440236b774d9f0dfef9d07bdaf",
              "0a97e76651ace45c5d943ee3f65b63ae", "abc493b6d529d5de7569faaef2773ba3"),
        {"train": 97477, "val": 10832, "test": 1000}),
    "pneumoniamnist": MedMNISTInfo(
        "binary-class", 1, ("normal", "pneumonia"),
        _md5s("28209eda62fecd6e6a2d98b1501bb15f", "8f4eceb4ccffa70c672198ea285246c6",
              "05b46931834c231683c68f40c47b2971", "d6a3c71de1b945ea11211b03746c1fe1"),
        {"train": 4708, "val": 524, "test": 624}),
    "retinamnist": MedMNISTInfo(
        "ordinal-regression", 3, ("0", "1", "2", "3", "4"),
        _md5s("bd4c0672f1bba3e3a89f0e4e876791e4", "afda852cc34dcda56f86ad2b2457dbcc",
              "e48e916a24454daf90583d4e6efb1a18", "eae7e3b6f3fcbda4ae613ebdcbe35348"),
        {"train": 1080, "val": 120, "test": 400}),
    "breastmnist": MedMNISTInfo(
        "binary-class", 1, ("malignant", "normal, benign"),
        _md5s("750601b1f35ba3300ea97c75c52ff8f6", "742edef2a1fd1524b2efff4bd7ba9364",
              "363e4b3f8d712e9b5de15470a2aaadf1", "b56378a6eefa9fed602bb16d192d4c8b"),
        {"train": 546, "val": 78, "test": 156}),
    "bloodmnist": MedMNISTInfo(
        "multi-class", 3,
        ("basophil", "eosinophil", "erythroblast",
         "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte",
         "monocyte", "neutrophil", "platelet"),
        _md5s("7053d0359d879ad8a5505303e11de1dc", "2b94928a2ae4916078ca51e05b6b800b",
              "adace1e0ed228fccda1f39692059dd4c", "b718ff6835fcbdb22ba9eacccd7b2601"),
        {"train": 11959, "val": 1712, "test": 3421}),
    "tissuemnist": MedMNISTInfo(
        "multi-class", 1,
        ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
         "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
         "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
        _md5s("ebe78ee8b05294063de985d821c1c34b", "123ece2eba09d0aa5d698fda57103344",
              "61b955355d7425a89687b06cca3ce0c2", "b077128c4a949f0a4eb01517f9037b9c"),
        {"train": 165466, "val": 23640, "test": 47280}),
    # The Organ{A,C,S}MNIST 28px files were re-released with the v3 record (10519652); the
    # older v2 record (6496656) files have other MD5s and contents and are not accepted.
    "organamnist": MedMNISTInfo(
        "multi-class", 1, _ORGANS,
        _md5s("68e3f8846a6bd62f0c9bf841c0d9eacc", "2dcccc29b88e6da5a01161ef20cda288",
              "eeae80d0a227a8d099027e1b3cfd3b60", "50747347e05c87dd3aaf92c49f9f3170"),
        {"train": 34561, "val": 6491, "test": 17778}),
    "organcmnist": MedMNISTInfo(
        "multi-class", 1, _ORGANS,
        _md5s("b9ceb9546e10131b32923c5bbeaea2b1", "3ce34a8724ea6f548e6db4744d03b6a9",
              "773c1f009daa3fe5d9a2a201b2a7ed94", "050f5e875dc056f6768abf94ec9995d1"),
        {"train": 12975, "val": 2392, "test": 8216}),
    "organsmnist": MedMNISTInfo(
        "multi-class", 1, _ORGANS,
        _md5s("9ab87b696fb54e2a387ebe992d6ed5f1", "53a6d115339d874c25e309a994ff46d3",
              "ded0c5fa01a95dc4978b956f613e9b8e", "b354719e553fbbb2513d5533f52a4cb1"),
        {"train": 13932, "val": 2452, "test": 8827}),
}

# Files that are not byte-identical to the release but hold the same data, by file name.
KNOWN_VARIANT_MD5: dict[str, tuple[str, ...]] = {
    # ../shared/data/pneumoniamnist.npz: same images and labels as the official release
    # (train 4,708 incl. 1,214 normal; val 524; test 624) but the train order differs, so its
    # MD5 is not the official one (see ../shared/data/README.md).
    "pneumoniamnist.npz": ("238a40f8f78b9a61dfdd21e86aac35f9",),
}

CHEST_BINARY_CLASSES = ("no finding", "finding")
CHEST_BINARY_TASK = "binary-class (any of the 14 ChestMNIST findings; multi-label source)"

# Files already verified in this process, keyed by (path, size, mtime), to hash each only once.
_VERIFIED: set[tuple[str, int, int]] = set()


def medmnist_filename(flag: str, size: int = 28) -> str:
    """The release's file name: ``{flag}.npz`` at 28 px, ``{flag}_{size}.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def medmnist_url(flag: str, size: int = 28) -> str:
    """Official Zenodo download address of a flag at a size."""
    return ZENODO_URL.format(filename=medmnist_filename(flag, size))


def accepted_md5s(flag: str, size: int = 28) -> tuple[str, ...]:
    """Official MD5 plus documented variants; empty when no checksum is known."""
    official = MEDMNIST_FLAGS[flag].md5.get(size)
    variants = KNOWN_VARIANT_MD5.get(medmnist_filename(flag, size), ())
    return ((official,) if official else ()) + tuple(variants)


def _check_options(flag: str, size: int) -> tuple[str, int]:
    key = str(flag).lower()
    if key not in MEDMNIST_FLAGS:
        raise DataError(f"unknown MedMNIST flag {flag!r}: choose from {', '.join(MEDMNIST_FLAGS)}")
    if size not in SIZES:
        raise DataError(f"MedMNIST size must be one of {', '.join(map(str, SIZES))}, got {size!r}")
    return key, int(size)


def _verify(path: Path, flag: str, size: int) -> None:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _VERIFIED:
        return
    accepted = accepted_md5s(flag, size)
    if not accepted:
        return  # no published checksum for this file: nothing to check against
    actual = file_md5(path)
    if actual not in accepted:
        raise DataError(
            f"wrong MD5 checksum for {path}: expected {' or '.join(accepted)}, got {actual} "
            f"(re-download {medmnist_url(flag, size)}, or pass verify=False / --no-verify to "
            f"skip the check)"
        )
    _VERIFIED.add(key)


def _obtain(path: Path, flag: str, size: int, download: bool, verify: bool) -> None:
    filename, folder, url = path.name, path.parent, medmnist_url(flag, size)
    hint = f"download {url} and put {filename} in {folder}"
    if not download:
        raise DataError(f"MedMNIST file {filename} not found in {folder}: {hint}")
    md5s = accepted_md5s(flag, size) if verify else ()
    try:
        fetch(url, path, md5s or None)
    except DataError as exc:
        reason = describe_error(exc.__cause__ or exc)
        raise DataError(f"MedMNIST file {filename} not found in {folder} and downloading it "
                        f"failed ({reason}): {hint}") from exc


def _labels(raw: np.ndarray, flag: str, n_classes: int, where: str) -> np.ndarray:
    if flag == "chestmnist":
        # Multi-label (N, 14) 0/1 findings collapsed to "any finding".
        return (np.asarray(raw).reshape(len(raw), -1) > 0).any(axis=1).astype(np.int64)
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: expected labels of shape (N, 1), got {raw.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        # astype(int64) would truncate 0.7 to 0 and turn NaN into a random class
        raise DataError(f"{where}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise DataError(f"{where}: labels outside 0..{n_classes - 1}")
    return labels


@register_dataset("medmnist")
def load_medmnist(split: str, data_dir: str | Path, flag: str = "pneumoniamnist", size: int = 28,
                  download: bool = True, verify: bool = True) -> ImageDataset:
    """Load one split of a 2D MedMNIST flag from ``data_dir/{flag}[_{size}].npz``.

    A missing file is downloaded from Zenodo when ``download`` is true. With ``verify`` the file
    must have the official MD5 (or a documented variant in ``KNOWN_VARIANT_MD5``). Greyscale
    images gain a channel axis (N, H, W, 1); labels become int64 (N,).

    ChestMNIST is multi-label (14 findings); it is served honestly as the binary task "any
    finding" with classes ("no finding", "finding"), and ``spec["task"]`` says so.
    """
    flag, size = _check_options(flag, size)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    info = MEDMNIST_FLAGS[flag]
    data_dir = Path(data_dir).expanduser()
    path = data_dir / medmnist_filename(flag, size)
    if not path.is_file():
        _obtain(path, flag, size, download, verify)
    elif verify:
        _verify(path, flag, size)

    if not zipfile.is_zipfile(path):  # np.load would read other bytes as a pickle and say so
        raise DataError(f"{path} is not an npz file (not a zip archive): re-download "
                        f"{medmnist_url(flag, size)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images = npz[f"{split}_images"]
            raw_labels = npz[f"{split}_labels"]
    except KeyError as exc:
        raise DataError(f"{path} has no {split}_images / {split}_labels arrays") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as a MedMNIST npz: {describe_error(exc)}") from exc

    key = f"{split}_images"
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise DataError(f"{path}: {key} contain NaN or infinite values (expected uint8 0..255)")
    if images.ndim == 3:
        images = images[..., None]  # MedMNIST stores greyscale as (N,H,W)
    if images.ndim != 4 or images.shape[3] not in (1, 3) or images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 {key} (N,H,W) or (N,H,W,3), got "
                        f"{images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{path}: {key} holds 0 images")
    if images.shape[1:3] != (size, size):
        raise DataError(f"{path}: {key} are {images.shape[2]}x{images.shape[1]} but a MedMNIST "
                        f"size-{size} file holds {size}x{size} images")
    if len(raw_labels) != images.shape[0]:
        raise DataError(f"{path}: {images.shape[0]} {key} but {len(raw_labels)} {split}_labels")
    if flag == "chestmnist":
        class_names, task = CHEST_BINARY_CLASSES, CHEST_BINARY_TASK
    else:
        class_names, task = info.class_names, info.task
    labels = _labels(raw_labels, flag, len(class_names), str(path))
    spec = {"dataset": "medmnist", "flag": flag, "size": size, "data_dir": str(data_dir),
            "task": task}
    return ImageDataset(np.ascontiguousarray(images), labels, class_names, flag, split, spec)
