"""Hypothesis profiles, registered once and chosen by HYPOTHESIS_PROFILE (CI=... selects "ci")."""
import os
from hypothesis import settings

settings.register_profile("dev", max_examples=25, deadline=None)
# CI: derandomised, so a CI run is deterministic; no example database on a fresh clone.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
