"""Where each claim holds (moegeo.claims.sensitivity): the declared grids, the per-point verdict table on a
tiny grid, the rule corrected across the grid on planted data (found where planted, not
elsewhere; the rate of any false "holds" under a global null at most alpha), the report section,
the CLI, and a Dask LocalCluster giving the serial run's verdicts."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from moegeo import ExperimentConfig, report, stats
from moegeo.claims import Claim, dual_jacobian_pca, sensitivity, single
from moegeo.cli import main
from moegeo.report.markdown import SENSITIVITY_MARKERS, existing_section, splice

TINY_CENTRE = ExperimentConfig(
    n_experts=4,
    d_model=16,
    d_hidden=16,
    n_samples=64,
    steps=20,
    record_every=10,
    probe_steps=(10,),
    trajectory_points=16,
    seeds=(0, 1, 2),
)
VERDICT_COLUMNS = ["config", "step", "claim", "effect", "p_adj", "verdict", "grid_verdict"]


def tiny_grid() -> sensitivity.Grid:
    """3 tiny configs (k = 1 and 2, and lr = 3e-3 at k = 2) x 2 checkpoints (10, 20) = 6 points."""
    return sensitivity.Grid(
        "tiny",
        sensitivity.design(TINY_CENTRE, {"top_k": (1, 2)}, {"lr": (3e-3,)}),
        "a tiny test grid",
        "runs in seconds",
    )


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def serial_run():
    return sensitivity.run(tiny_grid(), executor="serial", cache=False, progress=False)


# --------------------------------------------------------------------------- the declared grids
@pytest.mark.parametrize("name, configs, points, seeds, steps", [("small", 9, 18, 16, 500), ("full", 15, 45, 24, 1000)])
def test_declared_grids_are_built_from_the_claims_main_config(name, configs, points, seeds, steps):
    g = sensitivity.grid(name)
    assert (len(g.configs), len(g.points()), g.name) == (configs, points, name)
    main = dual_jacobian_pca.main_config(seeds)
    assert g.configs["centre"] == dataclasses.replace(main, steps=steps)
    assert g.configs["centre"].seeds[0] == dual_jacobian_pca.CONFIRMATORY_OFFSET  # fresh seeds, as the main run
    for cfg_name, cfg in g.configs.items():
        changed = {
            f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(g.configs["centre"], f.name)
        }
        assert changed <= set(sensitivity.AXES), (cfg_name, changed)  # only the axes move
        assert all(getattr(cfg, a) in values for a, values in sensitivity.AXES.items())
        assert cfg.checkpoints() == tuple(
            s for s in (250, 500, 1000) if s <= steps
        )  # the steps axis: probe checkpoints
    for axis in sensitivity.AXES:  # every axis is varied somewhere
        assert len({getattr(c, axis) for c in g.configs.values()}) >= 2
    # rule 5: enough seeds that a unanimous sweep passes Holm's first step in the largest family: a
    # claim's map holds at most 5 hypotheses per part (rep, con, pos, neg, eq) at each point
    parts = max(len(c.parts({k: v[0] for k, v in c.axes.items()})) for c in sensitivity.IN_GRID)
    assert seeds >= sensitivity.min_seeds(5 * parts * points)


def test_small_grid_has_the_e_by_k_factorial_for_the_heat_map():
    g = sensitivity.grid("small")
    cells = {
        (c.n_experts, c.top_k) for c in g.configs.values() if (c.lr, c.temperature, c.d_hidden) == (1e-3, 1.0, 128)
    }
    assert cells == {(4, 1), (4, 2), (8, 1), (8, 2)}


@given(st.integers(1, 5000))
def test_min_seeds_is_the_fewest_that_can_pass_the_first_holm_step(M):
    n = sensitivity.min_seeds(M)
    assert stats.min_p(n) <= stats.ALPHA / M < stats.min_p(n - 1)


def test_claims_in_and_outside_the_grid_partition_the_three_papers():
    inside = {c.id for c in sensitivity.IN_GRID}
    assert {"C1", "C8d", "G1-mlp", "G5-mlp"} <= inside and not inside & set(sensitivity.NOT_IN_GRID)
    assert {"C9a", "C10", "C11", "C12", "C2-lm", "G1", "R1", "G1-hf"} <= set(sensitivity.NOT_IN_GRID)
    assert all(c.frame == "main" for c in sensitivity.IN_GRID)


def test_an_unknown_grid_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="unknown grid 'medium': the declared grids are small, full"):
        sensitivity.grid("medium")
    with pytest.raises(SystemExit) as err:
        main(["sensitivity", "medium"])
    assert err.value.code == 2
    assert "unknown grid 'medium'" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--seeds", "3"], ["--set", "steps=10"], ["--setting", "lm"], ["--chunk", "2"]])
def test_a_named_grid_refuses_options_it_declares_itself(capsys, extra):
    """A declared grid fixes its configs, seeds and setting: `moegeo sensitivity` has no option
    to change them, and `moegeo sweep --grid` takes only axes."""
    with pytest.raises(SystemExit) as err:
        main(["sensitivity", "small"] + extra)
    assert err.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["sweep", "--grid", "small"] + extra)
    assert err.value.code == 2
    assert "a declared grid is `moegeo sensitivity small`" in capsys.readouterr().err


# --------------------------------------------------------------------------- the per-point table
def test_the_per_point_table_has_one_row_per_point_and_readable_claim(serial_run):
    tab, g = serial_run.table, serial_run.grid
    assert list(tab.columns[: len(sensitivity.POINT_COLUMNS)]) == sensitivity.POINT_COLUMNS
    assert {"effect", "ci_low", "ci_high", "p_adj", "M", "verdict", "control_init", "grid_M", "grid_verdict"} <= set(
        tab.columns
    )
    assert sorted(set(zip(tab.config, tab.step))) == sorted(g.points())
    assert not tab.duplicated(["config", "step", "claim"]).any()
    # a 20-step run cannot read the claims that need step 250 or 500 (C8a-C8d): no rows, not a crash
    assert set(tab.claim) == {c.id for c in sensitivity.IN_GRID} - {"C8a", "C8b", "C8c", "C8d", "C8e"}
    assert (tab.n == 3).all() and set(tab.top_k) == {1, 2} and set(tab.lr) == {1e-3, 3e-3}
    # the per-point verdict is the main run's rule on that point alone
    name, step = g.points()[0]
    alone = sensitivity.evaluate_point(serial_run.sweep.frames[name], step)
    mine = tab[(tab.config == name) & (tab.step == step)]
    assert list(mine.verdict) == list(alone.verdict) and np.allclose(mine.p_adj, alone.p_adj)
    # 3 seeds can never pass a sign test: the verdicts say so rather than "not replicated" (a
    # magnitude's prediction test can decide with 3 seeds)
    direction = tab[tab.claim.map(lambda i: next(c for c in sensitivity.IN_GRID if c.id == i).kind == "direction")]
    assert set(direction.raw_verdict) == set(direction.grid_verdict) == {stats.Verdict.TOO_FEW_SEEDS.value}


def test_a_run_read_at_an_earlier_checkpoint_is_that_run_stopped_there(serial_run):
    frame = serial_run.sweep.frames["centre"]
    early = sensitivity.at_step(frame, 10)
    assert early.step.max() == 10 and (early.steps == 10).all()
    pd.testing.assert_frame_equal(early.drop(columns="steps"), frame[frame.step <= 10].drop(columns="steps"))
    with pytest.raises(ValueError, match="step 15 is not a step of this run"):
        sensitivity.at_step(frame, 15)


# --------------------------------------------------------------------------- the rule on planted data
PLANTED = Claim(
    "P",
    "planted",
    "planted",
    "test",
    "planted x",
    "direction",
    "direction",
    {},
    "test",
    lambda R, r: single(R.per_seed("topk", "x", ""), "x"),
    paper="planted",
    steps=False,
)


def planted_frame(x) -> pd.DataFrame:
    """A run frame holding one per-seed value ``x`` (arm topk, metric x) at its final step 10."""
    return pd.DataFrame(
        dict(
            arm="topk",
            layer=0,
            metric="x",
            reading="",
            step=10,
            index=-1,
            seed=range(len(x)),
            value=np.asarray(x, dtype=float),
            steps=10,
        )
    )


def planted_table(xs: list) -> pd.DataFrame:
    """The grid table of PLANTED with one point (config "g<i>", step 10) per per-seed vector."""
    points = [
        sensitivity.evaluate_point(planted_frame(x), 10, [PLANTED]).assign(config=f"g{i}", step=10)
        for i, x in enumerate(xs)
    ]
    return sensitivity.correct_across_grid(pd.concat(points, ignore_index=True), [PLANTED])


@given(st.lists(st.sampled_from(["up", "down", "null"]), min_size=1, max_size=12))
def test_a_planted_effect_is_found_where_planted_and_nowhere_else(plan):
    n = sensitivity.min_seeds(2 * len(plan))  # enough for a unanimous sweep to pass Holm over the grid
    magnitudes = np.linspace(0.5, 2.0, n)
    null = magnitudes * np.where(np.arange(n) % 2, 1, -1)  # half the seeds each way: no evidence either way
    xs = [{"up": magnitudes, "down": -magnitudes, "null": null}[p] for p in plan]
    tab = planted_table(xs)
    assert (tab.grid_M == 2 * len({tuple(x) for x in xs})).all()  # identical tests counted once
    w = sensitivity.where(tab)["P"]
    assert w["holds"] == [(f"g{i}", 10) for i, p in enumerate(plan) if p == "up"]
    assert w["fails"] == [(f"g{i}", 10) for i, p in enumerate(plan) if p == "down"]
    assert w["undecided"] == [(f"g{i}", 10) for i, p in enumerate(plan) if p == "null"]


#: a joint direction claim: both parts must hold
PLANTED_JOINT = Claim(
    "Q",
    "planted joint",
    "planted",
    "test",
    "planted x",
    "direction",
    "direction",
    {"part": [("a", "b")]},
    "test",
    lambda R, r: single(R.per_seed("topk", f"x{r['part']}", ""), "x"),
    paper="planted",
    steps=False,
)


@pytest.mark.parametrize("points", [1, 6])
def test_a_planted_failure_of_a_joint_claim_is_found_with_min_seeds_and_not_with_one_fewer(points):
    """Rule 5 on a joint claim (two parts, rep and con each): one part unanimously against at
    every point, the other without evidence either way (the same values at every point: one
    pair of hypotheses). With ``min_seeds`` seeds every point fails; with one seed fewer none can."""
    need = sensitivity.min_seeds(2 * points + 2)
    for n, fails in [(need, True), (need - 1, False)]:
        null = np.arange(1.0, n + 1) * np.where(np.arange(n) % 2, 1, -1)
        frame = pd.concat(
            [planted_frame(-np.arange(1.0, n + 1)).assign(metric="xa"), planted_frame(null).assign(metric="xb")]
        )
        rows = [
            sensitivity.evaluate_point(
                frame.assign(value=frame.value + 1e-3 * i * (frame.metric == "xa")), 10, [PLANTED_JOINT]
            ).assign(config=f"g{i}", step=10)
            for i in range(points)
        ]
        tab = sensitivity.correct_across_grid(pd.concat(rows, ignore_index=True), [PLANTED_JOINT])
        assert (tab.grid_M == (2 * points + 2 if fails else 0)).all()  # Tarone drops what cannot pass
        assert len(sensitivity.where(tab)["Q"]["fails"]) == (points if fails else 0), n


def test_under_a_global_null_any_call_on_the_grid_stays_below_alpha():
    """10 independent null points of 12 seeds, 200 simulated grids: the rate of grids with any
    "holds" or any "fails" is at most alpha (exactly about 2 x 10 x 2^-12 = 0.005 here);
    without the correction across the grid a "holds" would come in about 0.18 (each point
    79/4096 at alpha = 0.05)."""
    rng = np.random.default_rng(0)
    points, n, sims = 10, 12, 200
    any_call = uncorrected = 0
    for _ in range(sims):
        tab = planted_table([rng.standard_normal(n) for _ in range(points)])
        w = sensitivity.where(tab)["P"]
        any_call += bool(w["holds"] or w["fails"] or w["negligible"])
        uncorrected += any(min(d.parts[0].p.values()) <= stats.ALPHA for d in tab.decision)
    assert any_call / sims <= stats.ALPHA
    assert uncorrected / sims > 2 * stats.ALPHA  # the simulation can tell a missing correction


def test_a_significant_effect_below_the_smallest_meaningful_one_is_neither_a_hold_nor_a_fail():
    """Rule 3: NEGLIGIBLE (a point estimate below the smallest effect) is its own outcome; a call
    needs the grid-corrected and the per-point verdicts to agree."""
    small = dataclasses.replace(PLANTED, smallest_effect=1.0)
    n = sensitivity.min_seeds(3 * 5)
    xs = [np.linspace(2.0, 3.0, n), np.linspace(0.1, 0.5, n), -np.linspace(2.0, 3.0, n)]  # big, small, opposite
    rows = [
        sensitivity.evaluate_point(planted_frame(x), 10, [small]).assign(config=f"g{i}", step=10)
        for i, x in enumerate(xs)
    ]
    tab = sensitivity.correct_across_grid(pd.concat(rows, ignore_index=True), [small])
    assert list(tab.grid_verdict) == ["REPLICATED", "NEGLIGIBLE", "CONTRADICTED"]  # |median| 2.5 > 1 > 0.3
    w = sensitivity.where(tab)["P"]
    assert (w["holds"], w["negligible"], w["fails"]) == ([("g0", 10)], [("g1", 10)], [("g2", 10)])
    assert sensitivity.outcome("REPLICATED", "NOT REPLICATED") == "undecided"  # the corrections disagree
    assert (
        sensitivity.outcome("CONTRADICTED", "CONTRADICTED")
        == sensitivity.outcome("DIFFERENT SIZE", "DIFFERENT SIZE")
        == "fails"
    )


# --------------------------------------------------------------------------- the report section
def test_the_section_has_the_heat_maps_and_sentences_and_leaves_the_rest_alone(serial_run, tmp_path):
    tab = serial_run.table.copy()
    # plant grid verdicts so that the sentences have both kinds of point
    for col in ("grid_verdict", "raw_verdict"):  # rule 3: a call needs both corrections to agree
        tab.loc[(tab.claim == "C1") & (tab.config == "k=1"), col] = "REPLICATED"
        tab.loc[(tab.claim == "C1") & (tab.config == "lr=0.003") & (tab.step == 20), col] = "CONTRADICTED"
    tab.loc[(tab.claim == "C1") & (tab.config == "lr=0.003") & (tab.step == 10), "grid_verdict"] = "REPLICATED"
    result = dataclasses.replace(serial_run, table=tab)
    path = tmp_path / "REPORT.md"
    path.write_text("# moegeo report\n\nabove\n\n<!-- benchmarks:begin -->\nbench\n<!-- benchmarks:end -->\n")
    report.write_sensitivity(path, result, "moegeo sensitivity tiny --executor serial")
    text = path.read_text()
    assert text.startswith("# moegeo report\n\nabove\n\n<!-- benchmarks:begin -->\nbench\n<!-- benchmarks:end -->")
    section = existing_section(text, SENSITIVITY_MARKERS)
    first = min(c.seeds[0] for c in serial_run.grid.configs.values())
    assert "Grid `tiny`" in section and f"; exploratory seeds from {first})" in section
    page = (tmp_path / "figures" / "sensitivity_tiny.md").read_text()
    assert "[`figures/sensitivity_tiny.md`](figures/sensitivity_tiny.md)" in section
    assert (
        "- **C1 Lower local sensitivity** holds at `k=1`; fails at `lr=0.003` @20; undecided at 3 of the 6 points. "
        "Holding at some points and failing at others is a significant difference between them."
    ) in page
    assert "![C1 over the grid](sensitivity_tiny_C1.png)" in page
    assert "C8a" not in section  # in the grid, but a 20-step run cannot read it anywhere: no row, no sentence
    assert "C9a, C9b (§4 soft routing at T = 10 (its own run))" in section
    for name in ["overview", "C1", "G5-mlp"]:
        png = tmp_path / "figures" / f"sensitivity_tiny_{name}.png"
        assert png.stat().st_size > 1000 and f"sensitivity_tiny_{name}.png" in section + page
    assert len(pd.read_csv(tmp_path / "figures" / "sensitivity_tiny.csv")) == len(tab)
    report.write_sensitivity(path, serial_run, "again")  # a second run replaces the section, once
    again = path.read_text()
    assert again.count(SENSITIVITY_MARKERS[0]) == 1 and "holds at `k=1`" not in again and "`again`" in again


def test_pytest_claims_report_keeps_the_sensitivity_and_benchmark_sections(tmp_path, monkeypatch):
    monkeypatch.setattr(report.papers, "make_figures", lambda *a, **k: {})
    monkeypatch.setattr(report.papers, "render", lambda *a, **k: "# new claims report\n")
    path = tmp_path / "REPORT.md"
    path.write_text(
        "# old\n<!-- sensitivity:begin -->\nmaps\n<!-- sensitivity:end -->\n"
        "<!-- benchmarks:begin -->\nbench\n<!-- benchmarks:end -->\n"
    )
    report.write_report(path, {}, pd.DataFrame(), {}, 1.0)
    assert path.read_text() == (
        "# new claims report\n\n<!-- sensitivity:begin -->\nmaps\n<!-- sensitivity:end -->\n"
        "\n<!-- benchmarks:begin -->\nbench\n<!-- benchmarks:end -->\n"
    )


def test_splice_and_existing_section_take_any_markers():
    markers = ("<!-- a:begin -->", "<!-- a:end -->")
    text = "head\n<!-- a:begin -->\nold\n<!-- a:end -->\ntail\n"
    new = splice(text, "<!-- a:begin -->\nnew\n<!-- a:end -->\n", markers)
    assert new == "head\n<!-- a:begin -->\nnew\n<!-- a:end -->\ntail\n"
    assert existing_section(new, markers) == "<!-- a:begin -->\nnew\n<!-- a:end -->\n"
    assert existing_section(new) == ""  # the benchmark section's markers by default


def test_cli_runs_a_named_grid_and_writes_the_section(serial_run, capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sensitivity.GRIDS, "tiny", tiny_grid)
    path = tmp_path / "REPORT.md"
    assert main(["sensitivity", "tiny", "--executor", "serial", "--quiet", "--report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "grid tiny (a tiny test grid): 3 configs, 6 points" in out and "3 configs trained, 0 from the cache" in out
    assert "C1 holds at no point; fails at no point; undecided at 6 of the 6 points." in out
    assert "sensitivity section (grid tiny) written to" in out
    assert "Grid `tiny`" in path.read_text()
    assert main(["sensitivity", "tiny", "--executor", "serial", "--quiet", "--report", str(path)]) == 0
    assert "0 configs trained, 3 from the cache" in capsys.readouterr().out  # resumes from the cache


# --------------------------------------------------------------------------- Dask
def test_a_dask_cluster_gives_the_serial_runs_verdicts(dask_cluster, serial_run):
    """The tiny grid on a real Dask LocalCluster of 2 worker processes: the same per-point table
    (effects, p-values, per-point and grid-corrected verdicts) as the serial run."""
    res = sensitivity.run(
        tiny_grid(), executor="dask://" + dask_cluster.scheduler_address.removeprefix("tcp://"), progress=False
    )
    assert len(res.sweep.computed) == 3
    pd.testing.assert_frame_equal(res.table[VERDICT_COLUMNS], serial_run.table[VERDICT_COLUMNS], check_exact=True)
