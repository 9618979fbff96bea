"""`pytest --benchmark-only`: Jacobian and spectrum methods timed side by side (pytest-benchmark).

Benchmarks are collected only with ``--benchmark-only`` (plain ``pytest`` runs the test suite
alone). The run's JSON goes to ``benchmarks/results.json`` unless ``--benchmark-json`` is
given, and the benchmark section of REPORT.md is rendered from it at the end
(``python benchmarks/bench_report.py`` re-renders it from a saved JSON).
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results.json"


def pytest_ignore_collect(collection_path, config):
    if collection_path.suffix == ".py" and not config.getoption("benchmark_only"):
        return True
    return None


def pytest_configure(config):
    if config.getoption("benchmark_only") and not config.getoption("benchmark_json"):
        config.option.benchmark_json = open(RESULTS, "wb")  # pytest-benchmark writes and closes it


def pytest_collection_modifyitems(session, config, items):
    """The first of the two sgemm benchmarks runs before everything else (see ``test_sgemm_rate``)."""
    first = [i for i in items if i.name == "test_sgemm_rate[first]"]
    items[:] = first + [i for i in items if i not in first]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    config = session.config
    if not config.getoption("benchmark_only") or hasattr(config, "workerinput"):
        return
    path = Path(config.getoption("benchmark_json").name)
    if path.exists() and path.stat().st_size:
        from bench_report import update_report

        try:
            update_report(path, ROOT / "REPORT.md")
        except Exception as err:  # a partial run must still print its own failures
            print(f"\nREPORT.md's benchmark section not written: {type(err).__name__}: {err}")
            session.exitstatus = session.exitstatus or 1
