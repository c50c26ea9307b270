"""The run store: every medrobust run and its per-item results in one SQLite file per workspace.

``Store`` keeps runs (with fingerprint-based resume) and result tables declared by the code that
fills them (``ResultTable``); ``Campaign`` is the resumable loop every long computation uses;
``export_table``/``export_runs`` write flat CSV or Parquet.
"""

from medrobust.store.campaign import Campaign
from medrobust.store.database import Store, run_fingerprint
from medrobust.store.errors import StoreError
from medrobust.store.export import export_runs, export_table
from medrobust.store.files import check_store_file, check_store_path
from medrobust.store.tables import ResultTable

__all__ = [
    "Campaign",
    "ResultTable",
    "Store",
    "StoreError",
    "check_store_file",
    "check_store_path",
    "export_runs",
    "export_table",
    "run_fingerprint",
]
