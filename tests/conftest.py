"""Shared pytest configuration.

Property tests are derandomized so the suite is deterministic (the same examples on every run,
in CI too); set ``SIMFLUENCE_HYPOTHESIS=explore`` to draw fresh random examples locally.
Longer fuzzing campaigns live in ``bench/fuzz_campaign.py``.
"""

import os

from hypothesis import settings

os.environ.setdefault("NO_COLOR", "1")
os.environ.pop("SIMFLUENCE_STORE", None)

settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(
    "explore" if os.environ.get("SIMFLUENCE_HYPOTHESIS") == "explore" else "deterministic"
)
