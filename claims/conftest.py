"""`pytest claims/`: the replication verdict.

pytest_configure trains (or loads from the cache) the seed sweeps once, on the controller
process, evaluates every claim under every reading (the Holm families never depend on the
command line), and puts the verdict table in ``config.stash``. Each test asserts one claim at
its primary reading; ``--all-readings`` adds one test per sensitivity reading; ``--reading``
only filters which tests are shown. pytest_sessionfinish writes REPORT.md. Under pytest-xdist
the workers read the same cached runs, so the verdicts are the same. Uncached runs train through
``moegeo.sweeps`` on ``--executor`` (default one process per core), one single-threaded task per
run, so the numbers, and the verdicts, are the same on every executor.
"""

import dataclasses
import resource
import time
from pathlib import Path

import pytest

from moegeo import ExperimentConfig, executors, sweeps
from moegeo.cache import cache_dir
from moegeo.claims import Results, evaluate, geometric_asymmetry, routers_geometry
from moegeo.claims.dual_jacobian_pca import (
    CLAIMS,
    CONFIRMATORY_OFFSET,
    FAILURE_STEP,
    HOT_TEMPERATURE,
    LM_SEEDS,
    SEEDS,
    main_config,
)
from moegeo.cli_common import output_file_problem
from moegeo.config import Arm, LMConfig
from moegeo.data.wikitext import split_files
from moegeo.frame import compact

VERDICTS = pytest.StashKey()
STATE = pytest.StashKey()
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICK_SEEDS = 2
#: --quick's LM run: long enough to record twice and probe, not to learn much
QUICK_LM_STEPS = 30
#: --quick's smaller probe samples (a smoke run: half the points and tokens of the default, still
#: several times d = 64 so every PCA and Jacobian mean is well posed)
QUICK_MLP_SIZES = dict(n_samples=256, trajectory_points=32)
QUICK_LM_SIZES = dict(probe_tokens=256, eval_windows=32, trajectory_points=32)


def pytest_addoption(parser):
    g = parser.getgroup("moegeo claims")
    g.addoption("--seeds", type=int, default=SEEDS, help=f"number of seeds (default {SEEDS})")
    g.addoption(
        "--seed-offset",
        type=int,
        default=CONFIRMATORY_OFFSET,
        help=f"first seed (default {CONFIRMATORY_OFFSET}, the confirmatory range; 0: the exploratory seeds 0-23 "
        "the declarations were written with)",
    )
    g.addoption("--steps", type=int, default=None, help=f"training steps (default {ExperimentConfig().steps})")
    g.addoption("--lm-seeds", type=int, default=LM_SEEDS, help=f"number of language-model seeds (default {LM_SEEDS})")
    g.addoption(
        "--lm-steps", type=int, default=None, help=f"language-model training steps (default {LMConfig().steps})"
    )
    g.addoption(
        "--router-seeds",
        type=int,
        default=routers_geometry.ROUTER_SEEDS,
        help=f"seeds of the balancing routers (default {routers_geometry.ROUTER_SEEDS}; at most --lm-seeds: the "
        "learned router is the language model's topk arm)",
    )
    g.addoption(
        "--lm-data",
        default=None,
        help="a directory with the full WikiText-2 (wiki.{train,valid,test}.tokens): train the LM on its train "
        "split (default: the shipped copy, training on valid)",
    )
    g.addoption(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_SEEDS} seeds, {FAILURE_STEP} MLP steps and {QUICK_LM_STEPS} LM steps, half the probe points and tokens, report "
        "to REPORT-quick.md (verdicts: too few seeds)",
    )
    g.addoption("--all-readings", action="store_true", help="also one test per sensitivity reading")
    g.addoption(
        "--reading",
        action="append",
        default=[],
        help="only show tests whose reading contains this text, e.g. pca_site=hidden (repeatable; "
        "never changes what is corrected)",
    )
    g.addoption(
        "--hf-model",
        default=None,
        metavar="DIR",
        help="also test the asymmetry paper's pretrained-model claims on this local Hugging Face checkpoint "
        "(needs the [hf] extra; without it they are reported as not run)",
    )
    g.addoption(
        "--hf-tokens",
        type=int,
        default=512,
        help="tokens of the shipped WikiText-2 test split fed to --hf-model (default 512)",
    )
    g.addoption("--report", default=None, help="report path (default REPORT.md, REPORT-quick.md with --quick)")
    g.addoption(
        "--executor",
        default=None,
        metavar="SPEC",
        help="where uncached runs train: serial, processes:N (default: one process per core), dask://host:port, "
        "dask-local:N (the [dask] extra), slurm[:partition] (the [slurm] extra); the verdicts do not "
        "depend on it",
    )


def report_path(config) -> Path:
    """``--report``, or REPORT.md (REPORT-quick.md with ``--quick``) at the repository root."""
    default = "REPORT-quick.md" if config.getoption("--quick") else "REPORT.md"
    return Path(config.getoption("--report") or ROOT / default)


def check_options(config) -> None:
    """Every option a run reads, checked before anything trains: a ``pytest.UsageError`` naming
    the option and what it expects (counts >= 1, ``--seed-offset`` >= 0, a writable ``--report``
    file, an ``--lm-data`` directory with the WikiText splits, an ``--hf-model`` checkpoint
    directory, a usable ``$MOEGEO_CACHE``)."""
    for option in ("--seeds", "--lm-seeds", "--router-seeds", "--hf-tokens"):
        if config.getoption(option) < 1:
            raise pytest.UsageError(f"{option} must be >= 1, got {config.getoption(option)}")
    for option in ("--steps", "--lm-steps"):
        value = config.getoption(option)
        if value is not None and value < 1:
            raise pytest.UsageError(f"{option} must be >= 1, got {value}")
    if config.getoption("--seed-offset") < 0:
        raise pytest.UsageError(
            f"--seed-offset must be >= 0 (seeds are non-negative integers), got {config.getoption('--seed-offset')}"
        )
    why = output_file_problem(str(report_path(config)))
    if why:
        raise pytest.UsageError(f"--report: {why}")
    if config.getoption("--lm-data") is not None:
        try:
            split_files(config.getoption("--lm-data"))
        except (OSError, ValueError) as err:
            raise pytest.UsageError(f"--lm-data: {err}") from None
    hf_model = config.getoption("--hf-model")
    if hf_model is not None and not (Path(hf_model) / "config.json").is_file():
        raise pytest.UsageError(f"--hf-model: {hf_model} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        cache_dir()
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None


def configs(config) -> dict:
    """The runs of the claims: the MLP setting's main arms, soft routing at T=10 (§4 failure
    mode 1) and the coupled and deep Top-k arms (§4 failure modes 2 and 4), all on the same
    seeds; the language model's arms (the later version); and the routers paper's balancing
    routers on the same language model (its learned router is the LM's ``topk`` arm). A config
    the options make invalid is a ``pytest.UsageError``."""
    try:
        return _configs(config)
    except (ValueError, TypeError, OSError) as err:
        raise pytest.UsageError(str(err)) from None


def _configs(config) -> dict:
    quick = config.getoption("--quick")
    n = QUICK_SEEDS if quick else config.getoption("--seeds")
    steps = config.getoption("--steps")
    steps = (FAILURE_STEP if quick else ExperimentConfig().steps) if steps is None else steps
    if steps < FAILURE_STEP:
        raise pytest.UsageError(
            f"--steps must be at least {FAILURE_STEP}: the §4 claims compare with the main arms at that step"
        )
    offset = config.getoption("--seed-offset")
    main = main_config(n, offset, steps=steps, **(QUICK_MLP_SIZES if quick else {}))
    side = dataclasses.replace(main, steps=FAILURE_STEP, record_every=FAILURE_STEP, probe_steps=())
    n_lm = QUICK_SEEDS if quick else config.getoption("--lm-seeds")
    lm_steps = config.getoption("--lm-steps")
    lm_steps = (QUICK_LM_STEPS if quick else LMConfig().steps) if lm_steps is None else lm_steps
    lm = LMConfig(
        steps=lm_steps,
        record_every=min(LMConfig().record_every, max(1, lm_steps // 2)),
        seeds=tuple(range(offset, offset + n_lm)),
        data=config.getoption("--lm-data"),
        **(QUICK_LM_SIZES if quick else {}),
    )
    n_routers = QUICK_SEEDS if quick else config.getoption("--router-seeds")
    if n_routers > n_lm:
        raise pytest.UsageError(
            f"--router-seeds ({n_routers}) must not exceed --lm-seeds ({n_lm}): the learned router "
            "is the language model's topk arm on the same seeds"
        )
    routers = dataclasses.replace(
        lm, arms=(Arm.TOPK_AUX, Arm.TOPK_LOSS_FREE, Arm.KMEANS), seeds=tuple(range(offset, offset + n_routers))
    )
    return {
        "main": main,
        "hot": dataclasses.replace(side, temperature=HOT_TEMPERATURE, arms=(Arm.SOFT,)),
        "failure": dataclasses.replace(side, arms=(Arm.TOPK_COUPLED, Arm.TOPK_DEEP)),
        "lm": lm,
        "routers": routers,
    }


def executor_spec(config) -> str:
    """``--executor``, checked (a bad spec is a usage error), default one process per core."""
    spec = config.getoption("--executor") or executors.DEFAULT_EXECUTOR
    try:
        executors.parse_executor(spec)
    except ValueError as err:
        raise pytest.UsageError(f"--executor: {err}") from None
    return spec


def pretrained_frame(path: str, tokens: int):
    """The probes of every MoE layer of the checkpoint at ``path`` on the shipped text, layers as
    units (``geometric_asymmetry.layers_as_seeds``)."""
    try:
        from moegeo import hf
    except ImportError as err:
        raise pytest.UsageError(f'--hf-model needs the [hf] extra (pip install -e ".[hf]"): {err}') from None
    try:
        df = hf.probe(path, tokens=tokens)
    except (FileNotFoundError, ValueError, MemoryError, OSError) as err:
        raise pytest.UsageError(f"--hf-model {path}: {err}") from None
    return geometric_asymmetry.layers_as_seeds(df).assign(checkpoint=path)


def collects_claims(config) -> bool:
    """Whether this session collects claims/ (explicitly, from inside it, or from a parent)."""
    for arg in config.args or [str(config.invocation_params.dir)]:
        p = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if p == HERE or HERE in p.parents or p in HERE.parents:
            return True
    return False


def pytest_configure(config):
    if config.option.help or config.option.version or not collects_claims(config):
        return
    t0 = time.perf_counter()
    check_options(config)
    cfgs = configs(config)
    spec = executor_spec(config)
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():  # let the progress bars through on a terminal
        if not hasattr(config, "workerinput"):
            print(
                f"moegeo: MLP {len(cfgs['main'].seeds)} seeds x {cfgs['main'].steps} steps, LM "
                f"{len(cfgs['lm'].seeds)} seeds x {cfgs['lm'].steps} steps; finished runs are reused from {cache_dir()}; "
                f"uncached runs train on {spec}",
                flush=True,
            )
        # uncached runs train side by side, one single-threaded task per worker, longest first, one
        # task per config (all its seeds: the unchunked run, so the verdicts never depend on the
        # executor); xdist workers find them in the cache
        order = ["main", "lm", "routers", "failure", "hot"]
        try:
            result = sweeps.sweep({name: cfgs[name] for name in order}, executor=spec)
        except ImportError as err:
            raise pytest.UsageError(f"--executor {spec}: {err}") from None
        except (executors.ExecutorError, MemoryError, FloatingPointError) as err:
            pytest.exit(f"moegeo: error: {err}", returncode=2)
        # labels as categories, integers in 32 bits: the frames of a default run take a quarter of the memory
        frames, timings = {name: compact(df) for name, df in result.frames.items()}, result.seconds
        del result
    claims = CLAIMS + routers_geometry.CLAIMS + geometric_asymmetry.CLAIMS
    if config.getoption("--hf-model"):
        frames = dict(frames, hf=pretrained_frame(config.getoption("--hf-model"), config.getoption("--hf-tokens")))
        claims += geometric_asymmetry.PRETRAINED_CLAIMS
    config.stash[VERDICTS] = evaluate(Results(frames), claims)
    config.stash[STATE] = dict(frames=frames, configs=cfgs, t0=t0, timings=timings)


def pytest_generate_tests(metafunc):
    if "claim_reading" in metafunc.fixturenames:
        v = metafunc.config.stash[VERDICTS]
        if not metafunc.config.getoption("--all-readings"):
            v = v[v.primary]
        for text in metafunc.config.getoption("--reading"):
            v = v[v.reading.str.contains(text, regex=False)]
        metafunc.parametrize(
            "claim_reading",
            list(zip(v.claim, v.reading)),
            ids=[f"{c}[{r}]" if r else c for c, r in zip(v.claim, v.reading)],
        )


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
    path = report_path(config)
    # KiB -> GiB on Linux; the training workers are children
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 2**20
    write_report(
        path,
        state["frames"],
        config.stash[VERDICTS],
        state["configs"],
        time.perf_counter() - state["t0"],
        state["timings"],
        peak,
    )
    config.stash[STATE]["written"] = path


def pytest_terminal_summary(terminalreporter, config):
    if STATE in config.stash and "written" in config.stash[STATE]:
        v = config.stash[VERDICTS]
        terminalreporter.write_sep("=", "moegeo replication verdict (one per claim, primary reading)")
        for verdict, n in v[v.primary].verdict.value_counts().items():
            terminalreporter.write_line(f"{verdict}: {n}")
        terminalreporter.write_line(f"report written to {config.stash[STATE]['written']}")
