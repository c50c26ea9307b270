"""Certificates: lower bounds on robustness, beside the attacks' upper bounds.

An attack that fails proves nothing; a certificate proves that no perturbation within a radius
changes the answer (with a stated probability of error ``alpha``). Randomized smoothing (Cohen,
Rosenfeld & Kolter 2019) certifies the L2 radius of a classifier smoothed by Gaussian noise;
SegCertify (Fischer, Baader & Vechev 2021) certifies a segmenter's pixels at one radius,
abstaining on the rest; median smoothing (Chiang et al. 2020) certifies intervals for
regression outputs: landmark and box coordinates.
"""

from medrobust.certify.bounds import binomial_p_value, clopper_pearson_lower
from medrobust.certify.median import (
    MISSING_BOX,
    MedianCertificate,
    MedianSmoother,
    iou_lower_bound,
    match_to_reference,
    percentile_bounds,
    radial_error_bound,
)
from medrobust.certify.segmentation import (
    SegCertificate,
    SmoothedSegmenter,
    certified_dice,
    certified_pixel_accuracy,
    smoothed_dice,
)
from medrobust.certify.smoothing import ABSTAIN, Certificate, SmoothedClassifier

__all__ = ["ABSTAIN", "MISSING_BOX", "Certificate", "MedianCertificate", "MedianSmoother",
           "SegCertificate", "SmoothedClassifier", "SmoothedSegmenter", "binomial_p_value",
           "certified_dice", "certified_pixel_accuracy", "clopper_pearson_lower",
           "iou_lower_bound", "match_to_reference", "percentile_bounds", "radial_error_bound",
           "smoothed_dice"]
