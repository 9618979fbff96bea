"""Hypothesis profiles, registered once and chosen by HYPOTHESIS_PROFILE (CI=... selects "ci"), and the Dask cluster fixture."""

import os

import pytest
from hypothesis import settings

settings.register_profile("dev", max_examples=25, deadline=None)
# CI: derandomised, so a CI run is deterministic; no example database on a fresh clone.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="module")
def dask_cluster():
    """A real Dask LocalCluster of 2 single-threaded worker processes (skips without the [dask] extra)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        yield cluster
