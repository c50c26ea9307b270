"""Datasets: one registry, every loader yields uint8 (N,H,W,C) images and integer labels."""

from medrobust.data.base import ImageDataset
from medrobust.data.catalog import register_dataset
from medrobust.data.registry import (
    available_datasets,
    default_data_dir,
    load_dataset,
    load_from_spec,
)

__all__ = [
    "ImageDataset",
    "available_datasets",
    "default_data_dir",
    "load_dataset",
    "load_from_spec",
    "register_dataset",
]
