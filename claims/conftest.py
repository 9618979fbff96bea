"""`pytest claims/`: the replication verdict.

pytest_configure trains (or loads from the cache) the seed sweeps once, on the controller
process, and puts the verdict table in ``config.stash``; each test asserts one claim under one
reading; pytest_sessionfinish writes REPORT.md. Under pytest-xdist the workers read the same
cached runs, so the verdicts are the same.
"""
import dataclasses
import time
from pathlib import Path

import pytest

from moegeo import ExperimentConfig, run
from moegeo.cache import cache_dir
from moegeo.claims import CLAIMS, HOT_TEMPERATURE, PLATEAU_STEP, evaluate
from moegeo.config import Arm

VERDICTS = pytest.StashKey()
STATE = pytest.StashKey()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def pytest_addoption(parser):
    g = parser.getgroup("moegeo claims")
    g.addoption("--seeds", type=int, default=20, help="number of seeds (default 20)")
    g.addoption("--seed-offset", type=int, default=0, help="first seed (default 0)")
    g.addoption("--steps", type=int, default=None, help=f"training steps (default {ExperimentConfig().steps})")
    g.addoption("--quick", action="store_true",
                help="smoke run: 3 seeds, 300 steps, report to REPORT-quick.md (verdicts: too few seeds)")
    g.addoption("--reading", action="append", default=[],
                help="only test readings containing this text, e.g. pca_site=hidden (repeatable)")
    g.addoption("--report", default=None, help="report path (default REPORT.md, REPORT-quick.md with --quick)")


def configs(config):
    quick = config.getoption("--quick")
    n = 3 if quick else config.getoption("--seeds")
    steps = config.getoption("--steps") or (300 if quick else ExperimentConfig().steps)
    if steps <= PLATEAU_STEP:
        raise pytest.UsageError(f"--steps must exceed {PLATEAU_STEP}: the Fig. 1A claims compare step {PLATEAU_STEP} with the end")
    offset = config.getoption("--seed-offset")
    main = ExperimentConfig(steps=steps, seeds=tuple(range(offset, offset + n)))
    hot = dataclasses.replace(main, temperature=HOT_TEMPERATURE, arms=(Arm.SOFT,))
    return {"main": main, "hot": hot}


def collects_claims(config) -> bool:
    """Whether this session collects claims/ (explicitly, from inside it, or from a parent)."""
    for arg in config.args or [str(config.invocation_params.dir)]:
        p = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if p == HERE or HERE in p.parents or p in HERE.parents:
            return True
    return False


def pytest_configure(config):
    if not collects_claims(config):
        return
    t0 = time.perf_counter()
    cfgs = configs(config)
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # let the progress bars through on a terminal
        if not hasattr(config, "workerinput"):
            print(f"moegeo: {len(cfgs['main'].seeds)} seeds x {cfgs['main'].steps} steps; finished runs are "
                  f"reused from {cache_dir()}", flush=True)
        frames = {name: run(cfg) for name, cfg in cfgs.items()}  # xdist workers find these in the cache
    selected = [dataclasses.replace(c, readings=tuple(r for r in c.readings
                                                       if all(s in c.label(r) for s in config.getoption("--reading"))))
                for c in CLAIMS]
    config.stash[VERDICTS] = evaluate(frames, [c for c in selected if c.readings])
    config.stash[STATE] = dict(frames=frames, configs=cfgs, t0=t0)


def pytest_generate_tests(metafunc):
    if "claim_reading" in metafunc.fixturenames:
        v = metafunc.config.stash[VERDICTS]
        metafunc.parametrize("claim_reading", list(zip(v.claim, v.reading)),
                             ids=[f"{c}[{r}]" for c, r in zip(v.claim, v.reading)])


@pytest.fixture
def verdict(request, claim_reading):
    v = request.config.stash[VERDICTS]
    return v[(v.claim == claim_reading[0]) & (v.reading == claim_reading[1])].iloc[0]


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workerinput") or STATE not in config.stash:
        return
    from moegeo.report import write_report

    state = config.stash[STATE]
    default = "REPORT-quick.md" if config.getoption("--quick") else "REPORT.md"
    path = Path(config.getoption("--report") or ROOT / default)
    write_report(path, state["frames"], config.stash[VERDICTS], state["configs"], time.perf_counter() - state["t0"])
    config.stash[STATE]["written"] = path


def pytest_terminal_summary(terminalreporter, config):
    if STATE in config.stash and "written" in config.stash[STATE]:
        v = config.stash[VERDICTS]
        terminalreporter.write_sep("=", "moegeo replication verdict")
        for verdict, n in v.verdict.value_counts().items():
            terminalreporter.write_line(f"{verdict}: {n}")
        terminalreporter.write_line(f"report written to {config.stash[STATE]['written']}")
