"""Every metric in one room: task metrics in MONAI's cumulative style (``update`` per batch,
``aggregate``, ``reset``) and the per-image functions they and the campaigns use.

``classification`` (accuracy, AUC, recall, confusion), ``segmentation`` (Dice, IoU, pixel
accuracy per image), ``landmarks`` (radial error, SDR), ``detection`` (COCO mAP via pycocotools),
``image_quality`` (MSE, PSNR, SSIM of a defence's output). Submodules import their heavy
dependencies (scikit-learn, MONAI, pycocotools) only when used.
"""

from medrobust.metrics.base import CumulativeMetric

__all__ = ["CumulativeMetric"]
