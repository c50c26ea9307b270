"""medrobust: find out how easily medical-imaging models can be fooled, see why, harden them.

The package is organised by idea: ``data`` (datasets), ``models`` (zoo, Classifier wrapper,
checkpoints), ``attacks``, ``analysis``, ``defences``, ``training``, ``store`` (SQLite run
store), ``report`` (HTML) and ``cli``.
"""

import os

# PyTorch's CPU kernels run on OpenMP threads that busy-wait between parallel regions. The cone
# engine issues many small kernels, and on a shared machine (another process on the same cores)
# the spinning threads starve each other: measured 25x slower on 2 busy cores. Sleeping waiters
# cost little when the machine is idle (see README, "Performance"). It only takes effect when
# medrobust is imported before torch, and a user's own setting always wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medrobust.errors import MedrobustError

__version__ = "0.1.0"
__all__ = ["MedrobustError", "__version__"]
