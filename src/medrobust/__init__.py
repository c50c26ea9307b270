"""medrobust: find out how easily medical-imaging models can be fooled, see why, harden them.

The package is organised by idea: ``data`` (datasets), ``models`` (zoo, Classifier wrapper,
checkpoints), ``attacks``, ``analysis``, ``defences``, ``training``, ``store`` (SQLite run
store), ``report`` (HTML) and ``cli``.
"""

from medrobust.errors import MedrobustError

__version__ = "0.1.0"
__all__ = ["MedrobustError", "__version__"]
