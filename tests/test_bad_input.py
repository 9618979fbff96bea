"""Bad input, through the command lines as a user types them and through the public API: every
case is a clear error naming the argument and what was expected, or a documented, counted
exclusion (an ``undefined`` row), never a NaN, a silently wrong number or a raw traceback."""

import dataclasses
import importlib.util
import io
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from moegeo import (
    Arm,
    ExperimentConfig,
    LMConfig,
    MLPMoE,
    cli,
    executors,
    experiment,
    frame,
    probes,
    stats,
    sweeps,
    validate,
)
from moegeo.config import PCASite
from moegeo.routers import route, topk_route
from moegeo.rows import expert_geometry_rows

ROOT = Path(__file__).resolve().parents[1]
#: a run of one arm that takes about a second
MICRO = ExperimentConfig(
    n_experts=4,
    d_model=8,
    d_hidden=16,
    n_samples=64,
    steps=2,
    record_every=1,
    trajectory_points=16,
    seeds=(0,),
    arms=(Arm.TOPK,),
    probe_steps=(),
)
#: the sweep command line of MICRO (``python -m moegeo sweep``)
MICRO_SET = [
    "n_experts=4",
    "d_model=8",
    "d_hidden=16",
    "n_samples=64",
    "steps=2",
    "record_every=1",
    "trajectory_points=16",
    "arms=topk",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MOEGEO_CACHE", str(tmp_path / "cache"))


def cli_main(argv) -> int:
    """``moegeo.cli.main(argv)``'s exit status, argparse's usage errors (SystemExit) included."""
    try:
        return cli.main(argv)
    except SystemExit as exit_:
        return exit_.code


def no_training(*args, **kwargs):
    pytest.fail("the command trained before it checked its arguments")


def no_nan(df: pd.DataFrame) -> None:
    assert np.isfinite(df["value"].to_numpy(dtype=float)).all()


@pytest.fixture(scope="module")
def micro_frame():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return experiment.run(MICRO, cache=False, progress=False)


def undefined(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["metric"] == "undefined"]


# --------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(seeds=(1.2, 1.7)), TypeError, r"seeds entry must be an integer >= 0, got 1\.2 \(float\)"),
        (dict(seeds=(True, 2)), TypeError, r"seeds entry must be an integer >= 0, got True \(bool\)"),
        (dict(seeds=(-1,)), ValueError, "seeds entry must be an integer >= 0, got -1"),
        (dict(seeds=(3, 3)), ValueError, "seeds must be non-empty and distinct"),
        (dict(n_experts=True), TypeError, r"n_experts must be an integer >= 1, got True \(bool\)"),
        (dict(d_model=8.0), TypeError, r"d_model must be an integer >= 1, got 8\.0 \(float\)"),
        (dict(n_experts=0, top_k=1), ValueError, "n_experts must be an integer >= 1, got 0"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1, got 0"),
        (dict(top_k=True), TypeError, r"top_k must be an integer"),
        (dict(arms=()), ValueError, "arms must be a non-empty tuple of arms"),
        (dict(arms=("topk", "soft", "topk")), ValueError, r"arms must be distinct, got \['topk'\] more than once"),
        (dict(arms=("hash",)), ValueError, "'hash' is not a valid Arm"),
        (dict(probe_steps=(-5, 10)), ValueError, "probe_steps entry must be an integer >= 0, got -5"),
        (dict(probe_steps=(2.5,)), TypeError, "probe_steps entry must be an integer"),
        (dict(lr=float("nan")), ValueError, "lr must be a finite number > 0, got nan"),
        (dict(temperature=True), ValueError, "temperature must be a finite number > 0, got True"),
    ],
)
def test_a_config_refuses_what_it_cannot_run(kw, error, match):
    with pytest.raises(error, match=match):
        ExperimentConfig(**kw)


def test_a_config_normalises_numbers_so_equal_configs_share_a_key():
    assert ExperimentConfig(lr=1).key() == ExperimentConfig(lr=1.0).key()
    assert ExperimentConfig(seeds=(np.int64(3),)).seeds == (3,) and type(ExperimentConfig().lr) is float


def test_an_lm_config_refuses_an_empty_missing_or_empty_data_directory(tmp_path):
    with pytest.raises(ValueError, match="data must be a directory holding WikiText-2 .* got ''"):
        LMConfig(data="")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LMConfig(data=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="has no train split.*an empty directory"):
        LMConfig(data=str(tmp_path))
    with pytest.raises(TypeError, match="vocab_size must be an integer"):
        LMConfig(vocab_size=True)


# --------------------------------------------------------------------------- sizes
@pytest.mark.parametrize(
    "cfg, part",
    [
        (ExperimentConfig(n_samples=10**9), "data"),
        (ExperimentConfig(d_model=100_000), "per-point Jacobians"),
        (LMConfig(d_model=100_000), "per-point Jacobians"),
        (LMConfig(vocab_size=10**7, batch_size=512), "training activations"),
    ],
)
def test_a_run_too_large_for_memory_is_refused_before_it_allocates(cfg, part, monkeypatch):
    monkeypatch.setattr(validate, "available_memory", lambda: 16 * 2**30)
    monkeypatch.setattr(experiment, "make_data", no_training)
    monkeypatch.setattr(experiment.train, "train", no_training)
    with pytest.raises(
        MemoryError,
        match=rf"{type(cfg).__name__}\(.*\) \(.*{part} [0-9.e+]+ GiB.*\) needs about "
        r"[0-9.e+]+ GiB \([0-9.e+]+ bytes\) but only 16 GiB",
    ):
        experiment.run(cfg, cache=False, progress=False)


def test_the_size_estimate_counts_the_jacobians_of_each_seed_probed_at_once():
    cfg = ExperimentConfig(seeds=tuple(range(8)))
    jac = cfg.n_experts * cfg.n_samples * cfg.d_model**2 * 8
    assert cfg.estimate_bytes(workers=2)["per-point Jacobians"] == 2 * jac
    assert cfg.estimate_bytes(workers=64)["per-point Jacobians"] == 8 * jac  # never more than the seeds


# --------------------------------------------------------------------------- a diverged run
def test_a_diverged_run_names_the_config_the_arm_the_step_and_the_seeds():
    cfg = dataclasses.replace(MICRO, lr=1000.0, seeds=(4, 7), steps=5)
    with pytest.raises(
        FloatingPointError,
        match=r"ExperimentConfig\(.*lr=1000\.0.*seeds=\(4, 7\).*\), arm topk: "
        r"training diverged at step 1: for seed\(s\) \[4, 7\] the loss is "
        r"\[.*\], against \[.*\] at step 0; lower the learning rate",
    ):
        experiment.run(cfg, cache=False, progress=False)


def test_hidden_states_that_become_nan_are_a_divergence_naming_the_seed():
    """A layer whose input is no longer finite (its parameters went NaN) names that seed."""
    from moegeo import train

    model = experiment.build_model(Arm.TOPK_DEEP, dataclasses.replace(MICRO, seeds=(5, 6)))
    x = torch.randn(2, 16, 8)

    def loss_at(step):
        if step == 1:
            with torch.no_grad():
                model.layers[0].W2[1].fill_(float("nan"))
        return (model(x) ** 2).mean(dim=(1, 2))

    with pytest.raises(
        FloatingPointError,
        match=r"diverged at step 1: for seed\(s\) \[6\] the hidden states are not "
        "finite",
    ):
        train.train(model, loss_at, 3, 1e-3, progress=False)


def test_an_moe_layer_refuses_nan_input_naming_the_seed_index():
    with pytest.raises(validate.NonFiniteError, match=r"x holds NaN/Inf values at index\(es\) \[1\]") as err:
        x = torch.zeros(2, 5, 64)
        x[1, 3, 0] = float("nan")
        MLPMoE(seeds=(0, 1))(x)
    assert err.value.index == [1]
    with pytest.raises(ValueError, match="x holds NaN/Inf"):
        MLPMoE()(torch.full((5, 64), float("inf")))


# --------------------------------------------------------------------------- undefined values at the API
def test_undefined_values_at_the_api_are_errors_naming_the_argument():
    with pytest.raises(ValueError, match=r"s holds 2 spectrum\(s\) of zero energy .* out of 3"):
        probes.energy_curve(torch.tensor([[1.0, 0.5], [0.0, 0.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="curve holds 1 NaN/Inf"):
        probes.k_at(torch.tensor([0.5, float("nan"), 1.0]), 0.9)
    with pytest.raises(ValueError, match="g routes no token"):
        probes.load_fractions(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"R must hold at least two router vectors, shape \(E >= 2, d\), got \(1, 4\)"):
        probes.router_similarity(torch.randn(1, 4))
    logits = torch.randn(6, 4)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            route(logits, "soft", temperature=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            topk_route(logits, 2, temperature=bad)
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            MLPMoE(temperature=bad)
    W1, b1, W2 = torch.randn(3, 5, 4), torch.randn(3, 5), torch.randn(3, 4, 5)
    b2, Wr = torch.randn(3, 4), torch.randn(3, 4)
    x, g = torch.randn(6, 4), torch.softmax(torch.randn(6, 3), -1)
    for bad in (0.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            probes.moe_jacobian(W1, b1, W2, b2, x, g, Wr, temperature=bad)


def test_the_explained_variance_of_points_without_variance_is_an_error():
    """Constant points, whose weighted mean differs from them by rounding only: the PCA says they
    have no variance and refuses their ratios, instead of dividing rounding noise by itself."""
    h = torch.full((7, 3), 0.1) + torch.tensor([0.3, -0.7, 1.1])
    w = torch.tensor([[0.3, 0.1, 0.9, 0.2, 0.6, 0.05, 0.4], [1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 1.0]])
    pca = probes.weighted_pca(h, w)
    assert not pca.has_variance.any() and (pca.total_variance < 1e-28).all()
    with pytest.raises(ValueError, match=r"expert\(s\) \[0, 1\] .* have no variance .* pca\[pca.has_variance\]"):
        _ = pca.explained_variance_ratio
    with pytest.raises(ValueError, match="have no variance"):
        pca.k_at(0.9)
    mixed = probes.weighted_pca(torch.cat([h, torch.randn(7, 3)]), torch.cat([torch.ones(7), torch.ones(7)])[None])
    assert mixed.has_variance.all() and torch.isfinite(mixed.explained_variance_ratio).all()
    one = probes.weighted_pca(torch.randn(5, 3), torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0]))  # one routed point
    assert not bool(one.has_variance) and float(one.total_variance) == 0.0


@pytest.mark.parametrize("fn", ["power", "lanczos"])
@pytest.mark.parametrize(
    "kw, error, match",
    [
        (dict(tol=float("nan")), ValueError, "tol must be a finite number > 0, got nan"),
        (dict(tol=-1.0), ValueError, "tol must be a finite number > 0, got -1.0"),
        (dict(tol=float("inf")), ValueError, "tol must be a finite number > 0"),
        (dict(max_iter=0), ValueError, "max_iter must be an integer >= 1, got 0"),
        (dict(max_iter=2.5), TypeError, "max_iter must be an integer"),
    ],
)
def test_iterative_spectra_refuse_a_stopping_rule_that_cannot_stop_or_never_runs(fn, kw, error, match):
    g = torch.Generator().manual_seed(0)
    op = probes.mlp_jacobian_operator(
        torch.randn(2, 5, 4, generator=g),
        torch.randn(2, 5, generator=g),
        torch.randn(2, 4, 5, generator=g),
        torch.randn(3, 4, generator=g),
    )
    method = probes.power_iteration_sigma1 if fn == "power" else probes.lanczos_sigma1
    with pytest.raises(error, match=match):
        method(op, **kw)


def test_the_batched_lanczos_refuses_a_nan_tolerance():
    g = torch.Generator().manual_seed(0)
    args = (
        torch.randn(2, 5, 4, generator=g),
        torch.randn(2, 5, generator=g),
        torch.randn(2, 4, 5, generator=g),
        torch.randn(3, 4, generator=g),
    )
    with pytest.raises(ValueError, match="tol must be a finite number > 0, got nan"):
        probes.mlp_lanczos_sigma1(*args, tol=float("nan"))


def test_statistics_refuse_a_confidence_or_p_values_outside_their_range():
    with pytest.raises(ValueError, match=r"confidence must lie in \(0, 1\), got 1.5"):
        stats.median_ci([0.1, 0.2, 0.3, 0.4, 0.5], confidence=1.5)
    for p in ([0.01, 1.2], [-0.1, 0.5], [0.2, float("nan")]):
        with pytest.raises(ValueError, match=r"p-values must lie in \[0, 1\]"):
            stats.holm(p)


# --------------------------------------------------------------------------- undefined values inside a run: counted
def test_an_expert_with_one_routed_token_gets_undefined_rows_not_nan():
    g_ = torch.Generator().manual_seed(0)
    E, h, d, N = 3, 6, 4, 12
    W1, b1, W2 = torch.randn(E, h, d, generator=g_), torch.randn(E, h, generator=g_), torch.randn(E, d, h, generator=g_)
    x = torch.randn(N, d, generator=g_, dtype=torch.float64)
    g = torch.softmax(torch.randn(N, E, generator=g_, dtype=torch.float64), -1)
    g[:, 2] = 0.0
    g[5, 2] = 0.4  # expert 2: one routed token
    rows = frame.Rows(0, "topk", 0, 3)
    J = probes.expert_jacobians(W1.double(), b1.double(), W2.double(), x)
    with pytest.warns(UserWarning, match=r"expert\(s\) \[2\] have routed points without variance"):
        expert_geometry_rows(rows, x, g, J, {PCASite.INPUT: x}, [0, 1, 2])
    df = pd.DataFrame(rows)
    no_nan(df)
    u = undefined(df)
    assert set(u.expert) == {2} and (u.value == 1).all()
    assert set(u.reading) == {
        "metric=explained_variance;pca_site=input",
        "metric=cumvar@4;pca_site=input",
        "metric=k@0.9;pca_site=input",
    }
    assert set(df[df.metric == "k@0.9"].expert) == {0, 1}
    assert df[(df.metric == "total_variance") & (df.expert == 2)].value.tolist() == [0.0]  # defined: 0


def test_a_zero_jacobian_leaves_its_energy_and_cosine_out():
    E, h, d, N = 3, 5, 4, 8
    W1, b1, W2 = torch.randn(E, h, d).double(), torch.randn(E, h).double(), torch.randn(E, d, h).double()
    W2[1] = 0.0  # expert 1: a zero Jacobian everywhere
    x = torch.randn(N, d).double()
    g = torch.softmax(torch.randn(N, E).double(), -1)
    rows = frame.Rows(0, "soft", 0, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expert_geometry_rows(rows, x, g, probes.expert_jacobians(W1, b1, W2, x), {}, [0, 1, 2])
    df = pd.DataFrame(rows)
    no_nan(df)
    u = undefined(df)
    assert set(u.expert) == {1}
    assert {
        "metric=energy;jacobian=pointwise",
        "metric=sigma_ratio@4;jacobian=mean",
        "metric=cosine;jacobian=mean",
        "metric=energy_k@0.9;jacobian=mean",
    } <= set(u.reading)
    assert set(df[df.metric == "cosine"].expert) == {0, 2}


@pytest.mark.parametrize(
    "kw, left_out",
    [
        (dict(n_samples=1), "metric=explained_variance;pca_site=input"),  # one point: no variance anywhere
        (dict(d_model=1, arms=(Arm.TOPK, Arm.TOPK_COUPLED)), "metric=cosine;jacobian=mean;chart=ln"),  # LN of 1 number
        (dict(n_experts=1, top_k=1, arms=(Arm.SOFT,)), "metric=router_similarity"),  # one router
    ],
)
def test_a_degenerate_run_counts_what_is_undefined_and_writes_no_nan(kw, left_out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        df = experiment.run(dataclasses.replace(MICRO, **kw), cache=False, progress=False)
    no_nan(df)
    assert left_out in set(undefined(df).reading)
    table = frame.summary_table(df)
    assert np.isfinite(table.to_numpy(dtype=float)[~np.isnan(table.to_numpy(dtype=float))]).all()
    assert "undefined" not in set(table.index.get_level_values("metric"))


def test_a_frame_with_a_nan_is_refused():
    rows = frame.Rows(0, "topk", 0, 1)
    rows.add("sigma1", "jacobian=mean", torch.tensor([1.0, float("nan")]), [0, 1])
    with pytest.raises(
        ValueError,
        match=r"1 NaN/Inf value\(s\) reached the frame, in \(metric, reading\): sigma1 "
        r"\[jacobian=mean\] x1",
    ):
        frame._frame(list(rows), MICRO)


# --------------------------------------------------------------------------- the LM data: keyed on content
def _wikitext(root: Path, words: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (root / f"wiki.{split}.tokens").write_text(f"{words} {split}\n" * 20)
    return root


def test_the_lm_key_holds_the_data_content_not_its_path(tmp_path, monkeypatch):
    a, b = _wikitext(tmp_path / "a" / "data", "one two three"), _wikitext(tmp_path / "b" / "data", "four five six")
    monkeypatch.chdir(tmp_path / "a")
    in_a = LMConfig(data="data")
    monkeypatch.chdir(tmp_path / "b")
    in_b = LMConfig(data="data")  # the same relative path from another directory: other data
    assert in_a.data == str(a.resolve()) and in_b.data == str(b.resolve())
    assert in_a.key() != in_b.key() and in_a.data_digest() != in_b.data_digest()
    before = in_b.key()
    test = b / "wiki.test.tokens"
    test.write_text("seven eight nine\n" * 20)  # rewritten in place, same size
    st = test.stat()
    os.utime(test, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert LMConfig(data=str(b)).key() != before
    c, d = _wikitext(tmp_path / "c", "x y z"), _wikitext(tmp_path / "d", "x y z")
    assert LMConfig(data=str(c)).data_digest() == LMConfig(data=str(d)).data_digest()  # the digest is of the content
    assert LMConfig().data_digest() == LMConfig().data_digest() and len(LMConfig().data_digest()) == 64


def test_the_lm_frame_and_the_command_line_report_the_data_digest(tmp_path, monkeypatch, capsys, micro_frame):
    data = _wikitext(tmp_path / "wt", "a b c")
    cfg = LMConfig(data=str(data))
    r = frame.Rows(0, "dense", -1, cfg.steps)
    r.add("loss", "", 1.0)
    assert frame._frame(list(r), cfg)["data_digest"].tolist() == [cfg.data_digest()]
    monkeypatch.setattr(cli, "run", lambda cfg, **kw: micro_frame.assign(steps=cfg.steps))
    assert cli_main(["--setting", "lm", "--lm-data", str(data), "--quiet"]) == 0
    assert f"data: {data.resolve()}, sha256 {cfg.data_digest()}" in capsys.readouterr().out


# --------------------------------------------------------------------------- python -m moegeo
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--steps", "-3"], "steps must be an integer >= 1, got -3"),
        (["--seed-offset", "-1"], "--seed-offset must be >= 0 (seeds are non-negative integers), got -1"),
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--setting", "lm", "--lm-data", "NOWHERE"], "--lm-data: WikiText path"),
        (["--lm-data", "DIR"], "--lm-data needs --setting lm"),
    ],
)
def test_the_run_command_refuses_bad_arguments_before_training(argv, message, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run", no_training)
    assert cli_main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_empty_lm_data_directory_and_an_empty_cache_variable_are_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "run", no_training)
    assert cli_main(["--setting", "lm", "--lm-data", str(tmp_path)]) == 2
    assert "has no train split" in capsys.readouterr().err
    monkeypatch.setenv("MOEGEO_CACHE", "")
    for argv in ([], ["sweep", "--set", "steps=2"]):
        assert cli_main(argv) == 2
        assert "MOEGEO_CACHE is set but empty" in capsys.readouterr().err
    assert cli_main(["--no-cache", "--steps", "0"]) == 2  # --no-cache: the cache is not looked at
    assert "MOEGEO_CACHE" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "where, message",
    [
        ("missing/out.csv", "the directory {tmp}/missing of {tmp}/missing/out.csv does not exist"),
        (".", "{tmp} is a directory; expected a file name"),
    ],
)
@pytest.mark.parametrize("command", [[], ["sweep", "--set", "steps=2"]])
def test_a_csv_that_cannot_be_written_is_refused_before_training(
    where, message, command, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(cli, "run", no_training)
    monkeypatch.setattr(sweeps, "sweep", no_training)
    path = os.path.normpath(tmp_path / where)
    assert cli_main([*command, "--csv", path]) == 2
    assert f"--csv: {message.format(tmp=tmp_path)}" in capsys.readouterr().err


def test_the_json_output_carries_the_version_date_and_config(tmp_path, monkeypatch, micro_frame, capsys):
    """`--json`: strict JSON (no NaN can be written) whose rows read back as the frame, with the
    moegeo version, the date and the run's config beside them."""
    import json

    from moegeo import __version__

    monkeypatch.setattr(cli, "run", lambda cfg, **kw: micro_frame)
    out = tmp_path / "frame.json"
    assert cli_main(["--json", str(out), "--quiet", "--seeds", "2"]) == 0
    record = json.loads(out.read_text())
    assert record["moegeo"] == __version__ and record["date"].endswith("+00:00")
    assert record["config"]["seeds"] == [0, 1] and record["config"]["key"]
    back = pd.DataFrame(record["rows"], columns=record["columns"])
    np.testing.assert_allclose(back["value"].to_numpy(float), micro_frame["value"].to_numpy(float), rtol=1e-14)
    assert list(back["metric"]) == list(micro_frame["metric"])
    assert f"results frame written to {out} (json)" in capsys.readouterr().out
    assert cli_main(["--json", str(tmp_path / "missing" / "f.json")]) == 2
    assert "--json: " in capsys.readouterr().err


class ClosedPipe(io.TextIOBase):
    """A standard output whose reader has gone (``| head``)."""

    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise io.UnsupportedOperation("fileno")


def test_a_closed_standard_output_ends_quietly_and_keeps_the_csv(tmp_path, monkeypatch, micro_frame):
    monkeypatch.setattr(cli, "run", lambda cfg, **kw: micro_frame)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    out = tmp_path / "frame.csv"
    assert cli_main(["--csv", str(out), "--quiet"]) == 141
    assert len(pd.read_csv(out)) == len(micro_frame)


def test_a_sweep_into_a_closed_pipe_ends_quietly_and_keeps_the_csv(tmp_path):
    """``python -m moegeo sweep ... --csv FILE | head -c 0``, as a shell runs it."""
    out = tmp_path / "frame.csv"
    env = dict(os.environ, MOEGEO_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT), TQDM_DISABLE="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moegeo",
            "sweep",
            "--set",
            *MICRO_SET,
            "--executor",
            "serial",
            "--quiet",
            "--csv",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=tmp_path,
    )
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert len(pd.read_csv(out)) > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "n_experts=0", "top_k=1"], "n_experts must be an integer >= 1, got 0"),
        (["--set", "seeds=1"], "no field 'seeds' to set"),
        (["--set", "arms=topk+topk"], "arms must be distinct"),
        (["--seed-offset", "-2"], "--seed-offset must be >= 0"),
        (["--grid", "small"], "a declared grid is `moegeo sensitivity small`"),
        (["sensitivity", "small", "--report", "."], "--report: "),
    ],
)
def test_the_sweep_command_refuses_bad_arguments_before_training(argv, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweeps, "sweep", no_training)
    assert cli_main(argv if argv[0] == "sensitivity" else ["sweep", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_diverged_sweep_is_an_error_naming_the_step_not_a_traceback(capsys):
    assert cli_main(["sweep", "--set", *MICRO_SET, "lr=1000", "--executor", "serial", "--no-cache", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "python -m moegeo sweep: error: ExperimentConfig(" in err and "training diverged at step 1" in err


def test_an_executor_fault_is_an_error_with_status_2(capsys, monkeypatch):
    """A killed pool worker (``executors.ExecutorError``, from the sweep itself: tests/test_sweep_faults.py)."""

    def dies(*args, **kwargs):
        raise executors.ExecutorError("executor 'processes:2': a worker process died while it ran task 0 (signal 9)")

    monkeypatch.setattr(sweeps, "sweep", dies)
    assert cli_main(["sweep", "--set", *MICRO_SET]) == 2
    assert "python -m moegeo sweep: error: executor 'processes:2': a worker process died" in capsys.readouterr().err


def test_an_unreachable_dask_scheduler_is_an_error_with_status_2(capsys, monkeypatch):
    pytest.importorskip("distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MOEGEO_DASK_CONNECT_TIMEOUT", "1")
    assert cli_main(["sweep", "--set", *MICRO_SET, "--executor", f"dask://127.0.0.1:{port}", "--no-cache"]) == 2
    assert "error: executor 'dask://127.0.0.1:" in capsys.readouterr().err


def test_the_probe_command_refuses_an_output_that_is_a_file_before_anything_loads(tmp_path, capsys):
    (tmp_path / "taken").write_text("mine")
    assert cli_main(["probe", "--hf-model", str(tmp_path), "--out", str(tmp_path / "taken")]) == 2
    assert f"--out: {tmp_path / 'taken'} exists and is not a directory" in capsys.readouterr().err
    assert (tmp_path / "taken").read_text() == "mine"
    assert (
        cli_main(
            [
                "probe",
                "--hf-model",
                str(tmp_path),
                "--text-file",
                str(tmp_path / "no.txt"),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 2
    )
    assert f"--text-file: {tmp_path / 'no.txt'} is not a file" in capsys.readouterr().err


# --------------------------------------------------------------------------- pytest claims/
def _pytest_claims(args, tmp_path, timeout=60):
    env = dict(os.environ, MOEGEO_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "claims/", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_pytest_claims_help_prints_help_without_training(tmp_path):
    run = _pytest_claims(["--help"], tmp_path)
    assert run.returncode == 0, run.stderr
    assert "moegeo claims" in run.stdout and "--seed-offset" in run.stdout
    assert not (tmp_path / "cache").exists(), "--help trained"


def test_pytest_claims_refuses_a_negative_seed_offset_before_training(tmp_path):
    run = _pytest_claims(["--seed-offset", "-1"], tmp_path)
    assert run.returncode == 4, run.stdout + run.stderr  # pytest's usage error
    assert "--seed-offset must be >= 0" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "cache").exists()


@pytest.fixture(scope="module")
def claims_conftest():
    spec = importlib.util.spec_from_file_location("claims_conftest_under_test", ROOT / "claims" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Options:
    """A stand-in for pytest's config: the claims options at their defaults, some overridden."""

    def __init__(self, module, **given):
        self.values = {
            "--seeds": module.SEEDS,
            "--seed-offset": module.CONFIRMATORY_OFFSET,
            "--steps": None,
            "--lm-seeds": module.LM_SEEDS,
            "--lm-steps": None,
            "--router-seeds": 10,
            "--lm-data": None,
            "--quick": False,
            "--hf-model": None,
            "--hf-tokens": 512,
            "--report": None,
            **given,
        }

    def getoption(self, name):
        return self.values[name]


@pytest.mark.parametrize(
    "given, message",
    [
        ({"--seeds": 0}, "--seeds must be >= 1, got 0"),
        ({"--lm-seeds": 0}, "--lm-seeds must be >= 1, got 0"),
        ({"--seed-offset": -3}, "--seed-offset must be >= 0"),
        ({"--steps": 0}, "--steps must be >= 1, got 0"),
        ({"--lm-steps": 0}, "--lm-steps must be >= 1, got 0"),
        ({"--report": "{tmp}"}, "--report: {tmp} is a directory"),
        (
            {"--report": "{tmp}/missing/R.md"},
            "--report: the directory {tmp}/missing of {tmp}/missing/R.md does not exist",
        ),
        ({"--lm-data": "{tmp}/nowhere"}, "--lm-data: WikiText path {tmp}/nowhere does not exist"),
        ({"--lm-data": "{tmp}"}, "--lm-data: {tmp} has no train split"),
        ({"--hf-model": "{tmp}"}, "--hf-model: {tmp} is not a Hugging Face checkpoint directory"),
    ],
)
def test_pytest_claims_checks_every_option_before_training(claims_conftest, given, message, tmp_path):
    given = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in given.items()}
    with pytest.raises(pytest.UsageError, match=message.format(tmp=tmp_path).replace("(", r"\(").replace(")", r"\)")):
        claims_conftest.check_options(Options(claims_conftest, **given))


def test_pytest_claims_takes_steps_0_as_given_not_as_the_default(claims_conftest):
    with pytest.raises(pytest.UsageError, match="--steps must be at least"):
        claims_conftest.configs(Options(claims_conftest, **{"--steps": 0}))
    with pytest.raises(pytest.UsageError, match="steps must be an integer >= 1, got 0"):
        claims_conftest.configs(Options(claims_conftest, **{"--lm-steps": 0}))


# --------------------------------------------------------------------------- reports
def test_a_report_keeps_its_mode_and_writes_through_a_symbolic_link(tmp_path):
    from moegeo.report.markdown import write_atomic

    report = tmp_path / "REPORT.md"
    report.write_text("old")
    report.chmod(0o640)
    assert write_atomic(report, "new") == report and report.read_text() == "new"
    assert report.stat().st_mode & 0o7777 == 0o640
    link = tmp_path / "link.md"
    link.symlink_to(report)
    assert write_atomic(link, "through the link") == report
    assert link.is_symlink() and report.read_text() == "through the link"
    assert report.stat().st_mode & 0o7777 == 0o640


# --------------------------------------------------------------------------- Hugging Face checkpoints
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    pytest.importorskip("transformers")
    import test_hf

    path = tmp_path_factory.mktemp("hf") / "tiny-mixtral"
    test_hf._save_checkpoint(path)
    return path


@pytest.fixture
def damaged(checkpoint, tmp_path):
    """A copy of the tiny checkpoint whose weights file the test changes."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(checkpoint, copy)
    return copy


def test_missing_expert_weights_are_refused_by_name_unless_allowed(damaged, capsys):
    from safetensors.torch import load_file, save_file

    from moegeo import hf

    weights = damaged / "model.safetensors"
    tensors = load_file(weights)
    save_file(
        {k: v for k, v in tensors.items() if not (".layers.1." in k and ".experts." in k)},
        weights,
        metadata={"format": "pt"},
    )
    with pytest.raises(
        ValueError,
        match=r"does not match its mixtral architecture: 2 weight\(s\) of the model missing "
        r"from the checkpoint \(they would be initialised at random\): "
        r"model\.layers\.1\.mlp\.experts\.down_proj, "
        r"model\.layers\.1\.mlp\.experts\.gate_up_proj\. .*--allow-missing PATTERN",
    ):
        hf.load(damaged)
    assert hf.load(damaged, allow_missing=["model.layers.1.mlp.experts.*"]) is not None
    assert cli_main(["probe", "--hf-model", str(damaged), "--tokens", "8", "--out", str(damaged / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "model.layers.1.mlp.experts.gate_up_proj" in err and "Traceback" not in err
    save_file(
        {k: v for k, v in tensors.items() if ".layers.1." not in k} | {"stray.weight": torch.zeros(2)},
        weights,
        metadata={"format": "pt"},
    )
    with pytest.raises(
        ValueError,
        match=r"weight\(s\) of the model missing .* and \d+ more; 1 checkpoint tensor\(s\) "
        r"the model has no place for: stray\.weight",
    ):
        hf.load(damaged)


@pytest.mark.parametrize(
    "damage",
    [lambda b: b[:100], lambda b: b"\xff" * 8 + b"garbage" * 8, lambda b: b"", lambda b: b[:-64]],
    ids=["truncated-header", "garbage", "empty", "truncated-data"],
)
def test_a_damaged_safetensors_file_is_a_clear_error(damaged, damage, capsys):
    from moegeo import hf

    weights = damaged / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(
        ValueError,
        match=r"model\.safetensors: not a readable safetensors file \(.*\); it is truncated "
        "or damaged",
    ):
        hf.load(damaged)
    assert cli_main(["probe", "--hf-model", str(damaged), "--tokens", "8", "--out", str(damaged / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "not a readable safetensors file" in err and "Traceback" not in err


def test_hf_arguments_outside_their_range_are_refused(checkpoint):
    from moegeo import hf

    for bad in (float("nan"), 0.0, 1.5, True):
        with pytest.raises(ValueError, match=r"memory_fraction must be a number in \(0, 1\]"):
            hf.load(checkpoint, memory_fraction=bad)
    with pytest.raises(ValueError, match=r"layers must name at least one decoder layer .* got \[\]"):
        hf.probe(checkpoint, text="the", tokens=1, layers=[])
    import test_hf

    with pytest.raises(ValueError, match="layers must name at least one decoder layer"):
        hf.capture(test_hf.build("mixtral"), test_hf.ids(), layers=[])


def test_the_text_and_a_text_file_are_separate_arguments(checkpoint, tmp_path):
    from moegeo import hf

    f = tmp_path / "words.txt"
    f.write_text("the , . of and in " * 3)
    from_file = hf.tokenize(checkpoint, text_file=f, tokens=8)
    assert torch.equal(from_file.input_ids, hf.tokenize(checkpoint, text=f.read_text(), tokens=8).input_ids)
    with pytest.raises(ValueError, match="text= .* or text_file= .*, not both"):
        hf.tokenize(checkpoint, text="the", text_file=f)
    with pytest.raises(TypeError, match="text must be the text itself, a str, got PosixPath; pass a path as text_"):
        hf.tokenize(checkpoint, text=f)
    with pytest.warns(UserWarning, match="the text has only 1 tokens"):  # the literal string, one unknown word
        assert hf.tokenize(checkpoint, text=str(f), tokens=8).n_tokens == 1
    f.write_bytes(b"\xff\xfe not utf-8")
    with pytest.raises(ValueError, match="words.txt: not UTF-8 text"):
        hf.tokenize(checkpoint, text_file=f)


def test_a_text_of_long_words_is_read_far_enough_and_no_word_is_cut(tmp_path):
    """Words of 200 characters: the first 64 x (tokens + context) characters hold only 12 of them,
    and cut the 13th; the whole text has 300."""
    pytest.importorskip("transformers")
    import test_hf

    from moegeo import hf

    words = [chr(ord("a") + i) * 200 for i in range(10)]
    test_hf._word_tokenizer(words).save_pretrained(tmp_path)
    text = " ".join(words[i % 10] for i in range(300))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no unknown token, no "only N tokens"
        batch = hf.tokenize(tmp_path, text=text, tokens=30, context=10)
    assert batch.n_tokens == 30 and batch.unknown == 0
    assert batch.input_ids.flatten().tolist() == [1 + i % 10 for i in range(30)]
    with pytest.warns(UserWarning, match="the text has only 300 tokens: all 300 are probed, not the 100000000"):
        assert hf.tokenize(tmp_path, text=text, tokens=10**8, context=10).n_tokens == 300


@pytest.mark.parametrize("text, tokens", [("the " * 40, 16), (None, 1)], ids=["one-repeated-word", "one-token"])
def test_points_without_variance_reach_no_frame_csv_or_report_as_nan(checkpoint, tmp_path, capsys, text, tokens):
    args = ["--tokens", str(tokens), "--out", str(tmp_path / "r"), "--quiet"]
    if text is not None:
        (tmp_path / "t.txt").write_text(text)
        args += ["--text-file", str(tmp_path / "t.txt")]
    assert cli_main(["probe", "--hf-model", str(checkpoint), *args]) == 0
    err = capsys.readouterr().err
    assert (
        f"probing {tokens} tokens on 2 MoE layer(s): about" in err
        and "of it the model in float64 (a rough estimate" in err
    )
    df = pd.read_csv(tmp_path / "r" / "probe.csv", keep_default_na=False)
    no_nan(df)
    left_out = set(df[df.metric == "undefined"].reading)
    assert "metric=explained_variance;pca_site=input" in left_out and "metric=k@0.9;pca_site=input" in left_out
    assert "nan" not in (tmp_path / "r" / "PROBE.md").read_text().lower()


def test_the_hf_frame_refuses_a_nan_from_any_row_builder(monkeypatch):
    pytest.importorskip("transformers")
    import test_hf

    from moegeo import hf

    def nan_rows(cap, arm, **kw):
        r = frame.Rows(0, arm, cap.layer, 0)
        r.add("sigma1", "jacobian=mean", float("nan"))
        return r

    monkeypatch.setattr(hf.rows, "layer_rows", nan_rows)
    with pytest.raises(ValueError, match="NaN/Inf value"):
        hf.probe_model(test_hf.build("mixtral"), test_hf.ids(), progress=False)


def test_the_probe_estimate_grows_with_the_tokens(checkpoint):
    from moegeo import hf

    config = hf.checkpoint_config(checkpoint)
    small, large = hf.estimate_probe(config, 16), hf.estimate_probe(config, 1600)
    assert small.layers == 2 and 0 < small.seconds < large.seconds and small.bytes < large.bytes
    assert large.flops > 50 * small.flops and math.isfinite(small.rate) and small.rate > 0
