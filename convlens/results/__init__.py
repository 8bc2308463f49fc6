"""The results of a run, in one place: ``RUN/results``, shared by the CLI, the demo, the report and the
web explorer.

``ResultStore(run_dir)`` (or ``ResultStore.of(run)``) knows where each analysis's result lives, writes
it atomically with a record of what produced it (weights, data, options, time), says whether a saved
result is still current, lists what a run has computed, and picks what the report shows. Results of
options other than the defaults are kept beside the default one. The registry (registry.py) names
every analysis, the options that define it and its file format.
"""
from .registry import ANALYSES, Analysis, analysis
from .store import CURRENT, STALE, UNKNOWN, Entry, Listing, ResultStore, Saver, saving

__all__ = ["ANALYSES", "Analysis", "analysis", "ResultStore", "Entry", "Listing", "Saver", "saving",
           "CURRENT", "STALE", "UNKNOWN"]
