"""Certificates: lower bounds on robustness, beside the attacks' upper bounds.

An attack that fails proves nothing; a certificate proves that no perturbation within a radius
changes the answer (with a stated probability of error ``alpha``). Randomized smoothing (Cohen,
Rosenfeld & Kolter 2019) certifies the L2 radius of a classifier smoothed by Gaussian noise.
"""

from medrobust.certify.bounds import binomial_p_value, clopper_pearson_lower
from medrobust.certify.smoothing import ABSTAIN, Certificate, SmoothedClassifier

__all__ = ["ABSTAIN", "Certificate", "SmoothedClassifier", "binomial_p_value",
           "clopper_pearson_lower"]
