"""One way to name datasets and budgets everywhere in the report.

A reader should meet "PneumoniaMNIST" and "Linf 8/255" in the summary, the tables and the
captions alike, not "medmnist/pneumoniamnist" in one place and "eps=0.0314" in another; every
section formats these through the two helpers here, so the page cannot drift into two
conventions. Budgets follow the field: Linf as k/255 grey levels, L2 as the length of the
perturbation of an image on the [0, 1] scale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: MedMNIST flags as the MedMNIST papers write them
MEDMNIST_NAMES = {
    "pathmnist": "PathMNIST", "chestmnist": "ChestMNIST", "dermamnist": "DermaMNIST",
    "octmnist": "OCTMNIST", "pneumoniamnist": "PneumoniaMNIST", "retinamnist": "RetinaMNIST",
    "breastmnist": "BreastMNIST", "bloodmnist": "BloodMNIST", "tissuemnist": "TissueMNIST",
    "organamnist": "OrganAMNIST", "organcmnist": "OrganCMNIST", "organsmnist": "OrganSMNIST",
}
#: loaders whose name alone says which data it is
LOADER_NAMES = {"synthetic": "Synthetic (built-in)", "bccd": "BCCD",
                "bccd-detection": "BCCD", "voc": "Pascal VOC layout"}
#: folder names of the public sets the package documents (../shared/data)
FOLDER_NAMES = {"dsb2018": "DSB2018 nuclei", "isbi2015": "ISBI 2015 cephalograms",
                "bccd": "BCCD"}


def _folder_name(data_dir: Any) -> str | None:
    name = Path(str(data_dir)).name.lower() if data_dir else ""
    for prefix, shown in FOLDER_NAMES.items():
        if name.startswith(prefix):
            return shown
    return None


def dataset_display_name(spec: Mapping[str, Any] | str | None) -> str:
    """The name a reader knows a dataset by, from a run's dataset spec or a short name.

    Accepts what the store holds: a spec dict (``{"dataset": "medmnist", "flag": ...}``), the
    short name a defence summary records (``medrobust.defences.registry.dataset_name``: the
    MedMNIST flag or the loader name), or 'medmnist/<flag>'. Folder loaders are named by their
    folder when it is one of the documented public sets, else 'loader (folder)'.
    """
    if spec is None:
        return "-"
    if isinstance(spec, str):
        text = spec.strip()
        key = text.lower().split("/")[-1]
        if key in MEDMNIST_NAMES:
            return MEDMNIST_NAMES[key]
        return LOADER_NAMES.get(key, text or "-")
    flag = str(spec.get("flag") or "").lower()
    if flag in MEDMNIST_NAMES:
        return MEDMNIST_NAMES[flag]
    loader = str(spec.get("dataset") or "")
    folder = _folder_name(spec.get("data_dir"))
    if loader in ("segfolder", "landmarks", "folder", "voc") and folder:
        return folder
    if loader in LOADER_NAMES:
        return LOADER_NAMES[loader]
    if flag:
        return flag
    if spec.get("data_dir") and loader in ("segfolder", "landmarks", "folder", "voc"):
        return f"{loader} ({Path(str(spec['data_dir'])).name})"
    return loader or "-"


def data_text(spec: Mapping[str, Any] | None) -> str:
    """'PneumoniaMNIST test split': the display name and the split a run used."""
    spec = spec or {}
    split = spec.get("split")
    return f"{dataset_display_name(spec)} {split} split" if split else dataset_display_name(spec)


def budget_text(norm: str | None, eps: Any) -> str:
    """'Linf 8/255' or 'L2 0.5' (on the [0,1] scale); per-image budgets say so."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        return "per-image budgets" if isinstance(eps, (list, tuple)) else "-"
    n = str(norm or "").lower()
    if n == "linf":
        return f"Linf {float(eps) * 255:.3g}/255"
    if n == "l2":
        return f"L2 {float(eps):.3g}"
    return f"{norm} {float(eps):g}"


def norm_of(attack_key: str) -> str | None:
    """'linf' / 'l2' from an adaptive attack key ('pgd-linf', 'ensemble-l2'); None else."""
    m = re.search(r"-(linf|l2)$", attack_key)
    return m.group(1) if m else None
