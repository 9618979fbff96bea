"""moegeo.hf on checkpoints as users hold them: load dtypes and sharded files, big-model offload,
the probe dtype, devices, the memory check, one layer at a time, and a checkpoint that learned
something (``transformers``' own Mixtral, trained here on the shipped WikiText-2).

Every comparison is against an independent computation: the same weights loaded another way, a
float64 probe, the model's own loss, the textbook SwiGLU formula rebuilding the block output."""

import functools
import math
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")

import test_hf  # noqa: E402
from test_hf import CONFIGS, _save_checkpoint, _word_tokenizer, build, ids  # noqa: E402

from moegeo import hf  # noqa: E402
from moegeo.cli import main  # noqa: E402
from moegeo.cli_hf import too_few_units  # noqa: E402

KEYS = ["layer", "expert", "metric", "reading", "index"]


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(KEYS + ["step"]).reset_index(drop=True)


def _tokenizer_to(src, dst):
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, dst / f.name)


def _values(df, metric, reading):
    return df[(df.metric == metric) & (df.reading == reading)].sort_values(KEYS).value.to_numpy(float)


# --------------------------------------------------------------------------- dtypes and sharded files
@pytest.mark.parametrize("model_type", CONFIGS)
def test_a_sharded_bfloat16_checkpoint_loads_in_its_own_dtype_and_probes_as_one_file(tmp_path, model_type):
    """``dtype="auto"`` takes the config's bfloat16 (as ``transformers`` applies it); a checkpoint in shards (an index and several
    ``model-0000x-of-0000y.safetensors``) gives exactly the frame of the same weights in one file."""
    one, sharded = tmp_path / "one", tmp_path / "sharded"
    _save_checkpoint(one, model_type=model_type)
    model = build(model_type).to(torch.bfloat16)
    model.save_pretrained(one)
    model.save_pretrained(sharded, max_shard_size="30KB")
    _tokenizer_to(one, sharded)
    assert (sharded / "model.safetensors.index.json").is_file() and len(list(sharded.glob("model-*.safetensors"))) > 1
    loaded = _quiet(hf.load, sharded, dtype="auto")
    # the experts in bfloat16 (a model may keep some modules in float32: DeepSeek-V3's router bias)
    assert {p.dtype for name, p in loaded.named_parameters() if ".experts." in name} == {torch.bfloat16}
    a, b = (_sorted(_quiet(hf.probe, p, dtype="auto", tokens=48, progress=False)) for p in (one, sharded))
    assert len(a) > 0 and (a[KEYS].to_numpy() == b[KEYS].to_numpy()).all()
    np.testing.assert_array_equal(a.value.to_numpy(float), b.value.to_numpy(float))
    assert (a[a.metric == "probe_float64"].value == 1).all()  # d = 32: float64 probes


def test_a_bfloat16_forward_pass_is_probed_within_its_rounding(tmp_path):
    """The same bfloat16 weights run in bfloat16 and in float64: sigma_1 of every expert whose
    routing did not change agrees within the bfloat16 capture tolerance (2e-2,
    ``layers._tolerance``), and is not identical (the forward pass did run in bfloat16). A token
    whose Top-2 choice flips under bfloat16 rounding changes its experts' token sets, so those
    experts (a different routed-token count) are not compared; most experts keep theirs."""
    _save_checkpoint(tmp_path)
    build("mixtral").to(torch.bfloat16).save_pretrained(tmp_path)
    half, full = (_quiet(hf.probe, tmp_path, dtype=t, tokens=48, progress=False) for t in ("bfloat16", "float64"))
    same = _values(half, "routed_tokens", "") == _values(full, "routed_tokens", "")
    assert same.mean() >= 0.5
    for reading in ("jacobian=pointwise", "jacobian=mean"):
        a, b = _values(half, "sigma1", reading), _values(full, "sigma1", reading)
        assert len(a) == len(b) == len(same)
        np.testing.assert_allclose(a[same], b[same], rtol=2e-2)
        assert not np.array_equal(a, b)
    with pytest.raises(ValueError, match="dtype must be a torch float dtype or one of auto, bfloat16"):
        hf.load(tmp_path, dtype="int8")


# --------------------------------------------------------------------------- big-model loading
def test_an_offloaded_model_gives_the_numbers_of_one_in_memory(tmp_path):
    """``device_map="auto"`` with a ``max_memory`` below the model's size puts its weights on disk
    (``accelerate``); the probe then reads each layer's weights from the offload and gives the
    frame of the model loaded whole."""
    pytest.importorskip("accelerate")
    ckpt = tmp_path / "ckpt"
    _save_checkpoint(ckpt)
    place = dict(device_map="auto", max_memory={"cpu": 40_000}, offload_folder=tmp_path / "offload")
    model = _quiet(hf.load, ckpt, dtype=torch.float32, **place)
    assert "disk" in set(model.hf_device_map.values())
    assert model.model.layers[1].mlp.experts.gate_up_proj.device.type == "meta"  # not in memory
    del model
    whole = _sorted(_quiet(hf.probe, ckpt, dtype=torch.float32, tokens=48, progress=False))
    offloaded = _sorted(_quiet(hf.probe, ckpt, dtype=torch.float32, tokens=48, progress=False, **place))
    assert len(whole) > 0 and (whole[KEYS].to_numpy() == offloaded[KEYS].to_numpy()).all()
    np.testing.assert_allclose(offloaded.value.to_numpy(float), whole.value.to_numpy(float), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not offered with a device_map"):
        hf.probe(ckpt, tokens=8, baseline="init", **place)
    with pytest.raises(ValueError, match="take effect with a device_map"):
        hf.load(ckpt, max_memory={"cpu": 40_000})
    with pytest.raises(ValueError, match=r"part of it must go to disk: give an offload folder \(offload_folder=DIR"):
        _quiet(hf.load, ckpt, device_map="auto", max_memory={"cpu": 40_000})
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        hf.load(ckpt, device_map="auto", offload_folder=tmp_path / "a-file")


@pytest.mark.parametrize("model_type", ["gpt_oss", "qwen2_moe"])
def test_an_offloaded_model_runs_the_autograd_operators_of_the_matrix_free_path(tmp_path, model_type):
    """The matrix-free path through the model's own modules (GPT-OSS's experts, Qwen2-MoE's shared
    expert: autograd JVPs and VJPs) on weights offloaded to disk: the numbers of the model in memory."""
    pytest.importorskip("accelerate")
    _save_checkpoint(tmp_path / "ckpt", model_type=model_type)
    place = dict(device_map="auto", max_memory={"cpu": 40_000}, offload_folder=tmp_path / "offload")
    x = ids()
    whole, offloaded = (
        _sorted(
            _quiet(
                hf.probe_model,
                _quiet(hf.load, tmp_path / "ckpt", dtype=torch.float64, **p),
                x,
                progress=False,
                max_bytes=100_000,
            )
        )
        for p in ({}, place)
    )
    assert set(whole[whole.metric == "jacobian_path"].value) == {1.0}
    np.testing.assert_allclose(offloaded.value.to_numpy(float), whole.value.to_numpy(float), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- the probe dtype
def test_the_default_probe_dtype_is_float64_up_to_its_declared_width():
    assert hf.default_probe_dtype(hf.FLOAT64_MAX_D) == torch.float64
    assert hf.default_probe_dtype(hf.FLOAT64_MAX_D + 1) == torch.float32


@pytest.mark.parametrize("max_bytes", [hf.MAX_BYTES, 100_000], ids=["dense", "matrix-free"])
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_float32_probes_agree_with_float64_ones(model_type, max_bytes):
    """sigma_1 of the per-point Jacobians and of J̄_e, and the cosines of J̄_e, from float32 probes
    within 1e-4 (relative) of float64 ones on the same float64 captures, on the dense and the
    matrix-free path (Lanczos at ``LANCZOS_TOL_FLOAT32``); the frame says which dtype ran."""
    model = build(model_type)
    f64, f32 = (
        _quiet(hf.probe_model, model, ids(), progress=False, max_bytes=max_bytes, dtype=t)
        for t in (torch.float64, torch.float32)
    )
    for metric, reading in (("sigma1", "jacobian=pointwise"), ("sigma1", "jacobian=mean"), ("cosine", "jacobian=mean")):
        a, b = _values(f32, metric, reading), _values(f64, metric, reading)
        assert len(a) == len(b) > 0
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())
    assert set(f32[f32.metric == "probe_float64"].value) == {0.0}
    assert set(f64[f64.metric == "probe_float64"].value) == {1.0}
    if max_bytes < hf.MAX_BYTES:
        assert set(f32[f32.metric == "jacobian_path"].value) == {1.0}
    with pytest.raises(ValueError, match="probe dtype must be torch.float64 or torch.float32"):
        hf.probe_model(model, ids(), dtype=torch.bfloat16)
    named = _quiet(hf.probe_model, model, ids(), progress=False, max_bytes=max_bytes, dtype="float32")
    np.testing.assert_array_equal(named.value.to_numpy(float), f32.value.to_numpy(float))


# --------------------------------------------------------------------------- devices
@pytest.mark.parametrize("max_bytes", [hf.MAX_BYTES, 100_000], ids=["dense", "matrix-free"])
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "gpt_oss"])
def test_the_probe_creates_no_tensor_off_its_inputs_device(model_type, max_bytes):
    """With torch's default device set to ``meta`` (no data), a probe on the CPU still gives its
    frame: every tensor it creates is put on its inputs' device explicitly, none on the default
    one. It cannot catch a tensor put on the CPU explicitly beside CUDA inputs: the GPU path
    itself has not been run."""
    model, x = build(model_type), ids()
    want = _quiet(hf.probe_model, model, x, progress=False, max_bytes=max_bytes)
    torch.set_default_device("meta")
    try:
        got = _quiet(hf.probe_model, model, x, progress=False, max_bytes=max_bytes)
    finally:
        torch.set_default_device(None)
    np.testing.assert_array_equal(got.value.to_numpy(float), want.value.to_numpy(float))


def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    _save_checkpoint(tmp_path)
    monkeypatch.setattr(hf.rows, "load", lambda *a, **k: pytest.fail("loaded before the device was checked"))
    with pytest.raises(ValueError, match=r"device 'cuda:99': torch sees"):
        hf.probe(tmp_path, device="cuda:99", tokens=8)
    with pytest.raises(ValueError, match="device must be cpu, cuda or cuda:N"):
        hf.probe(tmp_path, device="tpu", tokens=8)
    bad = [
        (["--device", "cuda:99"], "--device: device 'cuda:99': torch sees"),
        (["--max-memory", "cpu=1GiB"], "--max-memory and --offload-folder take effect with --device-map auto"),
        (["--device-map", "auto", "--max-memory", "cpu=lots"], "--max-memory: expected DEVICE=SIZE"),
        (["--device-map", "auto", "--max-memory", "gpu0=1GiB"], "--max-memory: expected DEVICE=SIZE"),
        (["--baseline-seed", "3"], "--baseline-seed takes effect with --baseline init"),
        (["--baseline", "init", "--baseline-seed", str(2**63)], f"must be <= {2**63 - 1}"),
    ]
    if not torch.cuda.is_available():
        bad.append((["--device-map", "auto", "--max-memory", "0=1GiB"], "--max-memory: device 'cuda:0': torch sees"))
    for args, message in bad:
        for command in (["probe", "--out", str(tmp_path / "out")], ["claims"]):
            with pytest.raises(SystemExit) as err:
                main([*command, "--hf-model", str(tmp_path), *args])
            assert err.value.code == 2 and message in capsys.readouterr().err, args


# --------------------------------------------------------------------------- memory, one layer at a time
def test_the_memory_check_counts_the_probes_peak_before_loading(tmp_path, monkeypatch):
    _save_checkpoint(tmp_path)
    config = hf.checkpoint_config(tmp_path)
    n, _ = hf.estimate_bytes(config)
    est = hf.estimate_probe(config, 48, dtype=torch.bfloat16)
    assert est.model_bytes == 2 * n and est.bytes > est.model_bytes and est.probe_dtype == torch.float64
    assert hf.estimate_probe(config, 48, dtype=torch.float32, probe_dtype=torch.float32).probe_dtype == torch.float32
    monkeypatch.setattr(hf.rows, "load", lambda *a, **k: pytest.fail("loaded before the memory check"))
    monkeypatch.setattr(hf.rows, "available_memory", lambda: est.bytes // 2)
    with pytest.raises(MemoryError, match=r"probing 48 tokens needs about .* at its peak"):
        hf.probe(tmp_path, dtype=torch.bfloat16, tokens=48)


def test_layers_are_built_one_at_a_time(monkeypatch):
    """``captures`` runs the forward pass first (keeping O(N d) per layer), then builds each
    layer's capture, with its (E, N, d) expert outputs, only when it is taken."""
    built, forwards = [], []
    build_one = hf.layers._build
    monkeypatch.setattr(hf.layers, "_build", lambda m, rec, n: built.append(m.layer) or build_one(m, rec, n))
    model = build("mixtral")
    model.register_forward_hook(lambda *_: forwards.append(1))
    with pytest.raises(ValueError, match="not MoE layers"):
        hf.captures(model, ids(), layers=[7])  # checked when called, not when first iterated
    layers = hf.captures(model, ids())
    assert built == [] and forwards == [1]  # the forward pass ran, no layer is built yet
    first = next(layers)
    assert built == [0] and first.layer == 0
    assert [c.layer for c in layers] == [1] and built == [0, 1]


# --------------------------------------------------------------------------- a checkpoint that learned something
#: the trained checkpoint: transformers' own Mixtral, d = 64, 2 layers, 4 experts, Top-2, trained
#: for TRAIN_STEPS steps of AdamW on the shipped WikiText-2 validation split (word-level vocabulary
#: of its VOCAB - 1 most frequent words), probed on the test split
VOCAB, TRAIN_STEPS, BATCH, CONTEXT = 512, 200, 16, 64


@functools.cache
def _word_ids(split: str):
    from moegeo.data.wikitext import shipped_text

    words = shipped_text(split).split()
    if split == "valid":
        counts = {}
        for w in words:
            if w != "<unk>":
                counts[w] = counts.get(w, 0) + 1
        _word_ids.tokenizer = _word_tokenizer(sorted(counts, key=lambda w: (-counts[w], w))[: VOCAB - 1])
    return torch.tensor(_word_ids.tokenizer(" ".join(words), add_special_tokens=False)["input_ids"])


def _held_out_loss(model) -> float:
    test = _word_ids("test")[: 8 * CONTEXT].reshape(8, CONTEXT)
    with torch.no_grad():
        return float(model(input_ids=test, labels=test).loss)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint directory, held-out loss at init, after training)."""
    train = _word_ids("valid")
    config = transformers.MixtralConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=2 * CONTEXT,
        num_local_experts=4,
        num_experts_per_tok=2,
        output_router_logits=True,  # the router's auxiliary load-balancing loss, transformers' default 0.02
    )
    torch.manual_seed(0)
    model = transformers.MixtralForCausalLM(config)
    before = _held_out_loss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(train) - CONTEXT, (BATCH,), generator=g)
        x = torch.stack([train[s : s + CONTEXT] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("trained-mixtral")
    model.save_pretrained(path)
    _word_ids.tokenizer.save_pretrained(path)
    return path, before, _held_out_loss(model.eval())


def test_the_trained_checkpoint_learned_something(trained):
    """Held-out loss at least 2 nats below the uniform predictor's log V (and below its init)."""
    _, before, after = trained
    assert after < math.log(VOCAB) - 2 and after < before - 2


def test_a_trained_checkpoints_capture_rebuilds_its_own_block_output(trained):
    """The textbook SwiGLU formula on the captured weights and routing rebuilds each layer's
    output (``test_hf``'s oracle), on weights that learned something."""
    path, _, _ = trained
    model = _quiet(hf.load, path)
    batch = _quiet(hf.tokenize, path, tokens=256)
    for cap in hf.captures(model, batch.input_ids, max_tokens=batch.n_tokens):
        rebuilt = torch.einsum("ne,end->nd", cap.g, test_hf.swiglu(cap.weights, cap.x))
        torch.testing.assert_close(rebuilt, cap.output, rtol=1e-9, atol=1e-12)
        assert (cap.g > 0).sum(1).eq(2).all() and cap.shared is None


def test_the_claims_command_on_a_trained_checkpoint_beside_its_initialisation(trained, capsys):
    """`moegeo claims --hf-model DIR --baseline init` on the trained checkpoint: every claim
    with its init control's verdict, and, with 2 MoE layers as units, what TOO FEW SEEDS means."""
    path, _, _ = trained
    argv = ["claims", "--hf-model", str(path), "--tokens", "256", "--baseline", "init", "--quiet"]
    assert _quiet(main, argv) == 0
    out = capsys.readouterr().out
    assert "2 MoE layer(s) as units" in out and "control init" in out
    assert too_few_units(2, 12) in out  # the pretrained family's 12 hypotheses need 8 layers
    assert "needs at least 8 units" in too_few_units(2, 12)
    assert "Expert pairs within a layer are not offered as a second unit" in too_few_units(2, 12)
    assert "effect minus init" in out


def test_the_claims_csv_carries_the_init_control_and_the_tokens_probed(tmp_path, capsys):
    _save_checkpoint(tmp_path / "m")
    argv = ["claims", "--hf-model", str(tmp_path / "m"), "--text", str(tmp_path / "t.txt"), "--quiet"]
    (tmp_path / "t.txt").write_text(test_hf.TEXT)  # 120 tokens
    assert _quiet(main, [*argv, "--tokens", "512", "--baseline", "init", "--csv", str(tmp_path / "v.csv")]) == 0
    assert "2 MoE layer(s) as units, 120 tokens" in capsys.readouterr().out
    v = pd.read_csv(tmp_path / "v.csv")
    assert {"control_init", "delta_init"} <= set(v.columns) and v[v.primary].control_init.notna().all()
    assert _quiet(main, [*argv, "--tokens", "48", "--csv", str(tmp_path / "w.csv")]) == 0
    assert "control_init" not in pd.read_csv(tmp_path / "w.csv").columns


# --------------------------------------------------------------------------- chance levels in PROBE.md
@pytest.mark.parametrize("d", [3, 16])
def test_the_cosine_chance_level_is_that_of_independent_random_matrices(d):
    """``chance_abs_cosine(d)`` against a Monte Carlo of Gaussian d x d pairs (4 standard errors),
    and its large-d form sqrt(2 / (pi d^2))."""
    from moegeo.report.probe import chance_abs_cosine

    g = torch.Generator().manual_seed(0)
    A, B = (torch.randn(40_000, d * d, generator=g, dtype=torch.float64) for _ in range(2))
    cos = ((A * B).sum(1) / (A.norm(dim=1) * B.norm(dim=1))).abs()
    assert abs(cos.mean().item() - chance_abs_cosine(d)) < 4 * cos.std().item() / math.sqrt(len(cos))
    assert chance_abs_cosine(64) == pytest.approx(math.sqrt(2 / math.pi) / 64, rel=1e-3)


def test_probe_cli_runs_the_probe_groups_asked_for(tmp_path, capsys):
    """``--probes mean,pca``: no per-token rows and no sigma_1 figure; a group it does not know is a
    usage error naming the groups, before anything loads."""
    test_hf._save_checkpoint(tmp_path / "m")
    argv = ["probe", "--hf-model", str(tmp_path / "m"), "--tokens", "64", "--quiet", "--out", str(tmp_path / "r")]
    assert _quiet(main, [*argv, "--probes", "mean,pca", "--jacobian-tokens", "4"]) == 0
    df = pd.read_csv(tmp_path / "r" / "probe.csv")
    assert not df["reading"].fillna("").str.contains("jacobian=pointwise").any() and (df.metric == "cosine").any()
    assert not (tmp_path / "r" / "figures" / "sigma1.png").exists()
    assert "PROBE.md" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--probes", "mean,sigma"])
    assert (
        "--probes: probes must be a non-empty collection of pointwise, spectrum, mean, pca" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([*argv, "--jacobian-tokens", "0"])
    assert "--jacobian-tokens: must be >= 1, got 0" in capsys.readouterr().err


def test_probe_md_shows_chance_levels_and_the_initialisation(tmp_path, capsys):
    """`python -m moegeo probe --baseline init`: per layer, the cosine and subspace figures beside
    their chance levels and the initialisation's values; a checkpoint that is its own
    initialisation shows the same value in both places."""
    from moegeo.report.probe import chance_abs_cosine

    _save_checkpoint(tmp_path / "m")
    hf.initialised(tmp_path / "m", seed=3).save_pretrained(tmp_path / "m")
    argv = ["probe", "--hf-model", str(tmp_path / "m"), "--tokens", "96", "--quiet", "--out", str(tmp_path / "r")]
    assert _quiet(main, [*argv, "--baseline", "init", "--baseline-seed", "3"]) == 0
    report = (tmp_path / "r" / "PROBE.md").read_text()
    df = pd.read_csv(tmp_path / "r" / "probe.csv")
    assert set(df.step) == {0, 1}
    cos = [line for line in report.splitlines() if line.startswith("Cross-expert |cos|")]
    assert len(cos) == 2
    for line in cos:
        mean = line.split("Jacobians: mean ")[1].split(",")[0]
        assert f"d = 32): mean {chance_abs_cosine(32):.3g}" in line
        assert line.endswith(f"at initialisation (seed 3, same tokens): {mean}.")
    overlap = [line for line in report.splitlines() if line.startswith("Mean overlap index")]
    assert len(overlap) == 2 and all("chance (random subspaces of the same dimensions)" in o for o in overlap)
    assert _quiet(main, argv) == 0  # without a baseline: chance levels only
    plain = (tmp_path / "r" / "PROBE.md").read_text()
    assert "d = 32): mean" in plain and "at initialisation" not in plain
    with pytest.raises(SystemExit):
        main([*argv, "--baseline-seed", "-1"])
    assert "--baseline-seed: must be >= 0" in capsys.readouterr().err


def test_the_matrix_free_estimate_counts_routed_token_expert_pairs():
    """``estimate_probe``'s Lanczos term is a Krylov space of min(d, LANCZOS_STEPS) vectors, each
    a J^T J product of 12 d h, per routed (token, expert) pair, N k of them: two configs that
    differ only in k differ by it."""
    d, h, N = test_hf.SMALL["hidden_size"], 48, 64

    def flops(k):
        cfg = transformers.AutoConfig.for_model(
            "mixtral", **{**test_hf.SMALL, "intermediate_size": h, "num_local_experts": 8, "num_experts_per_tok": k}
        )
        return hf.estimate_probe(cfg, N, max_bytes=1).flops

    per_pair_per_layer = min(d, hf.LANCZOS_STEPS) * 12 * d * h
    layers = test_hf.SMALL["num_hidden_layers"]
    assert flops(4) - flops(2) == pytest.approx(per_pair_per_layer * N * 2 * layers, rel=1e-12)
