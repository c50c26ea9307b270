"""Campaigns: every loop that writes the run store, between the library and the CLI.

The library rooms below (attacks, analysis, defences, tasks, models, data) compute; a campaign
opens a run in the store, feeds the pending items through them in batches and commits each
result, so a stop of any kind loses nothing computed and the same command resumes. Nothing
below this package imports it.
"""

from medrobust.campaigns.base import BatchRun, CampaignOutcome, batch_run

__all__ = ["BatchRun", "CampaignOutcome", "batch_run"]
