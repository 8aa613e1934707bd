"""Shared pytest configuration."""

import os

os.environ.setdefault("NO_COLOR", "1")
os.environ.pop("SIMFLUENCE_STORE", None)
