"""Every probe of every MoE layer of a Hugging Face model into the tidy frame (``setting="hf"``),
through the row builders the other settings use (``moegeo.rows``)."""

from __future__ import annotations

import functools
import gc
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch
from tqdm.auto import tqdm

from .. import probes as _probes
from ..config import JacobianSite, PCASite
from ..frame import COLUMNS, Rows, check_finite_values, reading
from ..rows import expert_geometry_rows
from ..validate import MEMORY_FRACTION, available_memory, check_count, check_device
from .checkpoint import MAX_TOKENS, checkpoint_config, dtype_name, initialised, load, load_dtype, meta_model, tokenize
from .jacobians import tokenwise_jacobians, tokenwise_operator
from .large import (
    krylov_size,
    matrix_free_rows,
    pca_rows,
    pointwise_k,
    pointwise_spectra,
    spectrum_rows,
    top_spectrum,
)
from .layers import MoECapture, _model_type, captures, check_layers, moe_layers

#: the ``expert`` id of a layer's shared expert(s) in the frame (-1 already means "not one expert")
SHARED_EXPERT = -2


#: largest tensor a layer's probes materialise: the (E, N, d, d) per-point Jacobians, a PCA
#: site's (E, D, D) covariances, a Lanczos basis. Above it the matrix-free path is taken.
MAX_BYTES = 2**30
#: the probe groups of a layer (``probe_model(probes=...)``, ``--probes``): ``pointwise``, the
#: per-token Jacobian spectra (the matrix-free path: sigma_1 alone); ``spectrum``, on the
#: matrix-free path sigma_1..sigma_10 of every token's Jacobian (block Lanczos, a block of 12:
#: several times ``pointwise``'s cost; the dense path has every sigma_j under ``pointwise``);
#: ``mean``, J̄_e, its spectrum and the cross-expert cosines; ``pca``, the weighted PCA of every
#: site and the expert subspaces. The asymmetry paper's claims read ``mean`` and ``pca``.
PROBES = ("pointwise", "spectrum", "mean", "pca")
DEFAULT_PROBES = ("pointwise", "mean", "pca")
#: the default probe dtype (``default_probe_dtype``): float64 for layers of width d up to this, float32
#: above (Mixtral-8x7B's d = 4096, OLMoE's 2048), where float64 halves the rate and doubles
#: the memory of every product; the PCA's covariances are float64 whatever the probe dtype
FLOAT64_MAX_D = 1024


def default_probe_dtype(d: int) -> torch.dtype:
    """The default dtype of the probes' arithmetic for a layer of width ``d``: float64 up to
    ``FLOAT64_MAX_D``, float32 above."""
    return torch.float64 if d <= FLOAT64_MAX_D else torch.float32


def probe_model(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    layers: list[int] | None = None,
    max_tokens: int | None = MAX_TOKENS,
    seed: int = 0,
    max_bytes: int = MAX_BYTES,
    progress: bool | None = None,
    dtype: torch.dtype | None = None,
    probes: tuple[str, ...] = DEFAULT_PROBES,
    jacobian_tokens: int | None = None,
) -> pd.DataFrame:
    """Every probe of every MoE layer of a ``transformers`` causal LM on ``input_ids``: the tidy frame.

    Parameters
    ----------
    model : a causal LM with MoE layers (``load`` gives one with eager experts, on one device or
        dispatched with a ``device_map``), in any float dtype.
    input_ids : (B, T) or (T,) token ids.
    layers : decoder-layer indices (default: every MoE layer).
    max_tokens : tokens probed (the first ones; see ``capture``).
    seed : the ``seed`` column (e.g. the seed that drew the batch).
    max_bytes : largest tensor materialised per layer; above it the matrix-free path (module doc).
    progress : tqdm bar over layers (None: only on a terminal).
    dtype : the probes' arithmetic (float64 or float32; default ``default_probe_dtype(d)``): the captured
        tensors, in the model's dtype, are cast to it. The probes run where the layer's inputs
        are (the model's device), one layer at a time (``captures``): a layer's tensors are
        freed before the next is built.
    probes : the probe groups to compute (``PROBES``; default ``DEFAULT_PROBES``).
    jacobian_tokens : on the matrix-free path, at most this many routed tokens (the first, in
        text order) per expert for the per-token Jacobian probes (row ``jacobian_tokens``).

    Returns
    -------
    The frame of ``moegeo.frame.COLUMNS`` with ``setting="hf"``, ``arm`` and an extra
    ``model_type`` column the model's ``config.model_type``, ``step=0`` and ``layer`` the decoder
    layer. Routed experts keep their ids; the shared experts of a layer are ``expert=-2``
    (``SHARED_EXPERT``), probed with weight 1 on every token, input and output sites only.
    Experts without routing weight on the batch get an ``excluded`` row and a warning, nothing
    else. Per layer also ``n_tokens``, ``d_model`` (the width d of the layer input),
    ``probe_float64`` (1 when the probes computed in float64, 0 in float32) and
    ``routing_weight_sum`` (mean sum_e g_e over tokens: 1 for renormalised Top-k, not for Qwen2-MoE
    with ``norm_topk_prob=False`` or DeepSeek-V3's scaled sigmoid weights); per routed expert
    ``load``, its mean routing weight (1/N) sum_i g_e(x_i) with g as applied (so the loads of a
    layer sum to its ``routing_weight_sum``), and ``routed_tokens``, the tokens with g_e > 0.
    Without the matrix-free path these are exactly the rows of the other settings; with it
    (``jacobian_path`` metric 1) only sigma_1 of the per-point Jacobians (sigma_1..sigma_10 with
    ``spectrum``; ``sigma1_converged``, ``jacobian_tokens``) and sigma_1..sigma_10 of J̄_e
    (``MEAN_SPECTRUM_K``). A quantity undefined for an expert (e.g.
    the explained variance of one token, or of a text of one repeated word) is left out with an
    ``undefined`` row (``moegeo.frame``); no value is NaN (``frame.check_finite_values``).
    """
    dtype = _probe_dtype(dtype)
    check_probes(probes, jacobian_tokens)
    model_type = _model_type(model)
    restore = _eager_experts(model)
    try:
        layer_captures = captures(model, input_ids, layers=layers, max_tokens=max_tokens)
        rows = []
        total = len(set(layers)) if layers else len(moe_layers(model))
        bar = tqdm(total=total, desc=f"probe {model_type}", disable=_no_bar(progress))
        for cap in layer_captures:
            probe = dtype or default_probe_dtype(cap.x.shape[1])
            rows += layer_rows(
                cap,
                model_type,
                seed=seed,
                max_bytes=max_bytes,
                dtype=probe,
                probes=probes,
                jacobian_tokens=jacobian_tokens,
            )
            del cap
            bar.update()
        bar.close()
    finally:
        restore()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["setting"] = "hf"
    df["model_type"] = model_type
    return check_finite_values(df)


def _probe_dtype(dtype) -> torch.dtype | None:
    """A probe dtype: torch.float64 or torch.float32 (or their names), None for the width's default."""
    dtype = {"float64": torch.float64, "float32": torch.float32}.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in (None, torch.float64, torch.float32):
        raise ValueError(f"the probe dtype must be torch.float64 or torch.float32 (None: by width), got {dtype!r}")
    return dtype


def _no_bar(progress: bool | None) -> bool | None:
    """tqdm's ``disable``: None (a bar only on a terminal) when ``progress`` is None."""
    return None if progress is None else not progress


def _eager_experts(model) -> Callable[[], None]:
    """Switch a float64 model to the eager experts implementation (``grouped_mm`` rejects float64
    on the CPU); returns the undo."""
    get = getattr(model, "get_experts_implementation", None)
    dtype = next(model.parameters()).dtype
    if get is None or dtype != torch.float64 or model.config._experts_implementation == "eager":
        return lambda: None
    before = get()
    model.set_experts_implementation("eager")
    return lambda: model.set_experts_implementation(before)


def layer_rows(
    cap: MoECapture,
    arm: str,
    *,
    seed: int = 0,
    max_bytes: int = MAX_BYTES,
    dtype: torch.dtype = torch.float64,
    probes: tuple[str, ...] = DEFAULT_PROBES,
    jacobian_tokens: int | None = None,
) -> list[dict]:
    """The probe rows of one captured layer (see ``probe_model``), computed in ``dtype`` (float64
    or float32) on the capture's device; routing weights and the PCA in float64. ``probes``: the
    groups of ``PROBES`` to compute; ``jacobian_tokens``: on the matrix-free path, the per-token
    Jacobian probes of an expert use its first (in text order) this many routed tokens at most."""
    wanted = check_probes(probes, jacobian_tokens)
    rows = Rows(seed, arm, cap.layer, 0)
    g = cap.g.double()
    mass = _probes.expert_mass(g)
    live = torch.nonzero(mass > 0).flatten()
    experts = live.tolist()
    for e in torch.nonzero(mass <= 0).flatten().tolist():
        warnings.warn(
            f"{arm}, layer {cap.layer}: expert {e} received zero routing weight on these {g.shape[0]} tokens; excluded",
            stacklevel=2,
        )
        rows.add("excluded", "", 1.0, [e])
    x, gl = cap.x.to(dtype), g[:, live].to(dtype)
    rows.add("n_tokens", "", float(g.shape[0]))
    rows.add("d_model", "", float(x.shape[1]))
    rows.add("probe_float64", "", float(dtype == torch.float64))
    rows.add("load", "", mass[live] / g.shape[0], experts)
    rows.add("routed_tokens", "", (gl > 0).sum(0).double(), experts)
    rows.add("routing_weight_sum", "", g.sum(1).mean())
    pre, hidden = cap.hidden()
    # the PCA sites in the dtype the model computed them in: it sets their rounding floor (probes.weighted_pca)
    sites = {PCASite.INPUT: cap.x, PCASite.PRE_ACTIVATION: pre[live], PCASite.OUTPUT: cap.expert_outputs[live]}
    if hidden is not None:
        sites[PCASite.HIDDEN] = hidden[live]
    if "pca" not in wanted:
        sites = {}
    E, (N, d) = len(experts), x.shape
    dense = E * N * d * d * x.element_size() <= max_bytes
    rows.add("jacobian_path", "", 0.0 if dense else 1.0)
    if dense and wanted & {"pointwise", "spectrum", "mean"}:
        w = cap.weights[live].to(dtype)
        J = (
            _probes.swiglu_jacobians(w.Wg, w.Wu, w.Wd, x, bg=w.bg, bu=w.bu)
            if cap.silu_swiglu
            else torch.stack([tokenwise_jacobians(cap.expert_fn(e), cap.x).to(dtype) for e in experts])
        )
        expert_geometry_rows(rows, x, gl, J, sites, experts)
    elif dense:
        pca_rows(rows, gl, sites, experts, max_bytes, total_variance=True)
    else:
        matrix_free_rows(rows, cap, experts, gl, sites, max_bytes, dtype, wanted, jacobian_tokens)
    if cap.shared is not None:
        _shared_rows(rows, cap, max_bytes, dtype, wanted, jacobian_tokens)
    return _selected(rows, wanted)


def check_probes(probes, jacobian_tokens: int | None = None) -> set[str]:
    """``probes`` as a set of ``PROBES`` names (a non-empty collection of them) and
    ``jacobian_tokens`` None or an integer >= 1, else ``ValueError``."""
    if isinstance(probes, str) or not probes or not set(probes) <= set(PROBES):
        raise ValueError(f"probes must be a non-empty collection of {', '.join(PROBES)}; got {probes!r}")
    if jacobian_tokens is not None:
        check_count("jacobian_tokens", jacobian_tokens)
    return set(probes)


def _selected(rows: Rows, wanted: set[str]) -> Rows:
    """Only the rows of the wanted probe groups (the dense path computes them together)."""
    drop = {
        "jacobian=pointwise": not wanted & {"pointwise", "spectrum"},
        "jacobian=mean": "mean" not in wanted,
        "pca_site=": "pca" not in wanted,
    }
    kept = [r for r in rows if not any(key in r["reading"] for key, off in drop.items() if off)]
    rows[:] = kept
    return rows


def _shared_rows(
    rows: Rows, cap: MoECapture, max_bytes: int, dtype: torch.dtype, wanted: set[str], jacobian_tokens: int | None
) -> None:
    """The shared experts as one more expert (``SHARED_EXPERT``) with weight 1 on every token:
    Jacobians of their contribution (gate included) w.r.t. the block input by autograd (on the
    matrix-free path over the first ``jacobian_tokens`` tokens at most)."""
    X = cap.block_input.to(dtype)
    N, d = X.shape
    ones = torch.ones(N, 1, dtype=dtype, device=X.device)
    sites = {PCASite.INPUT: cap.block_input, PCASite.OUTPUT: cap.shared[None]} if "pca" in wanted else {}
    fn = cap.shared_fn()
    if N * d * d * X.element_size() <= max_bytes:
        J = tokenwise_jacobians(fn, cap.block_input).to(dtype)[None]
        expert_geometry_rows(rows, X, ones, J, sites, [SHARED_EXPERT])
        return
    experts, r_point = [SHARED_EXPERT], reading(jacobian=JacobianSite.POINTWISE)
    if wanted & {"pointwise", "spectrum"}:
        k, n = pointwise_k(wanted, d), len(ones[:jacobian_tokens])
        s, ok = pointwise_spectra(
            lambda t: tokenwise_operator(fn, cap.block_input[t]), ones[:n, 0].double(), max_bytes, dtype, X, k
        )
        rows.add("jacobian_tokens", r_point, float(n), experts)
        spectrum_rows(rows, r_point, s[None], experts)
        rows.add("sigma1_converged", r_point, float(ok), experts)
    if "mean" in wanted:
        jbar = tokenwise_jacobians(fn, cap.block_input, weights=torch.ones_like(cap.block_input[:, 0])).to(dtype)[None]
        top, r_mean = top_spectrum(jbar), reading(jacobian=JacobianSite.MEAN)
        spectrum_rows(rows, r_mean, top.values, experts)
        rows.add("sigma1_converged", r_mean, float(top.converged), experts)
    pca_rows(rows, ones, sites, experts, max_bytes)


def probe(
    path: str | os.PathLike,
    *,
    text: str | None = None,
    text_file: str | os.PathLike | None = None,
    tokens: int = MAX_TOKENS,
    layers: list[int] | None = None,
    context: int | None = None,
    dtype: torch.dtype | str = torch.float64,
    probe_dtype: torch.dtype | None = None,
    device="cpu",
    device_map=None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    progress: bool | None = None,
    allow_missing=(),
    announce: Callable[[str], None] | None = None,
    baseline: str | None = None,
    baseline_seed: int = 0,
    memory_fraction: float = MEMORY_FRACTION,
    probes: tuple[str, ...] = DEFAULT_PROBES,
    jacobian_tokens: int | None = None,
) -> pd.DataFrame:
    """What ``python -m moegeo probe`` runs: ``tokenize`` the text (``text``, the text itself;
    ``text_file``, a UTF-8 file; default: the shipped WikiText-2 test split) with the
    checkpoint's tokenizer in sequences of at most ``context`` tokens (default ``CONTEXT``, or the
    model's ``max_position_embeddings`` if smaller), ``load`` the checkpoint at ``path`` (refusing
    weights it lacks or has in excess unless ``allow_missing`` names them) and ``probe_model`` it
    on exactly ``tokens`` tokens (fewer only when the text is shorter, with a warning): the tidy
    frame. Beside ``n_tokens`` each layer gets the rows ``context`` (tokens per sequence) and
    ``unknown_tokens`` (``TokenBatch.unknown``). The config, the tokenizer, the text and
    ``layers`` (not empty, within the config's number of decoder layers; whether a layer in range
    is an MoE layer is known only once it is loaded) are checked before the model is loaded.

    ``dtype``: the load dtype (``load``; ``"auto"``: the checkpoint's own), the dtype of the
    forward pass and of the captured tensors. ``probe_dtype``: the probes' arithmetic
    (``probe_model``; default float64 up to width ``FLOAT64_MAX_D``, float32 above).
    ``device``, ``device_map``, ``max_memory``, ``offload_folder``: where the model runs, as in
    ``load``; the probes run where each layer's inputs are. ``probes``, ``jacobian_tokens``: as in
    ``probe_model`` (``--probes``, ``--jacobian-tokens``).

    The memory check: without a ``device_map``, the probe's estimated peak (``estimate_probe``:
    the model in ``dtype``, every layer's O(N d) captures and one layer's probe tensors) must fit
    in ``memory_fraction`` of the available memory, else ``MemoryError`` with the estimate,
    before loading; with one, only the probe tensors must (the model is ``accelerate``'s to
    place). ``announce``: called with one sentence, the estimated time and memory of the probe,
    after tokenising and before loading.

    ``baseline="init"``: also probe the same architecture freshly initialised (``initialised``,
    seed ``baseline_seed``) on the same tokens; its rows are step 0 and the checkpoint's step 1
    (the claims' init control, ``moegeo claims --baseline init``)."""
    if baseline not in (None, "init"):
        raise ValueError(f"baseline must be None or 'init', got {baseline!r}")
    if baseline == "init" and device_map is not None:
        raise ValueError(
            "baseline='init' builds the freshly initialised model whole on one device; it is not offered with a "
            "device_map (probe the checkpoint and its initialisation separately)"
        )
    probe_dtype = _probe_dtype(probe_dtype)
    check_probes(probes, jacobian_tokens)
    check_layers(layers)
    dev = check_device(device)
    config = checkpoint_config(path)
    dtype = load_dtype(config, dtype)
    limit = getattr(config, "max_position_embeddings", None)
    n_layers = getattr(config.get_text_config(), "num_hidden_layers", None)
    outside = sorted({l for l in layers or () if n_layers is not None and not 0 <= l < n_layers})
    if outside:
        raise ValueError(
            f"layers {outside} do not exist: the checkpoint has {n_layers} decoder layers (0 to {n_layers - 1})"
        )
    batch = tokenize(path, text=text, text_file=text_file, tokens=tokens, context=context, max_context=limit)
    est = estimate_probe(
        config,
        batch.n_tokens,
        layers=layers,
        dtype=dtype,
        probe_dtype=probe_dtype,
        probes=probes,
        jacobian_tokens=jacobian_tokens,
    )
    if announce is not None:
        announce(
            f"probing {batch.n_tokens} tokens on {est.layers} MoE layer(s): about {est.seconds:.2g} s "
            f"({est.seconds / max(est.layers, 1):.2g} s per layer) and "
            f"{_size(est.bytes)} of memory, {_size(est.model_bytes)} of it the model in {dtype_name(dtype)} "
            f"(a rough estimate: the probes' main products at the {est.rate / 1e9:.3g} GFLOP/s of a short "
            f"{_gemm_name(est.probe_dtype)} here)"
        )
    need = est.bytes - (est.model_bytes if device_map is not None else 0)
    have = torch.cuda.mem_get_info(dev)[0] if dev.type == "cuda" else available_memory()
    if need > memory_fraction * have:
        raise MemoryError(
            f"{path}: probing {batch.n_tokens} tokens needs about {_size(need)} at its peak on {dev} "
            f"({_size(est.model_bytes)} the model in {dtype_name(dtype)}) but only {_size(have)} of memory is "
            f"available (at most {memory_fraction:.0%} of it may be used); load it in a smaller dtype "
            "(dtype='bfloat16', --dtype bfloat16), offload it (device_map='auto' with max_memory, --device-map auto "
            "--max-memory cpu=SIZE --offload-folder DIR), or probe fewer tokens"
        )
    place = dict(device=device, device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
    model = load(path, dtype=dtype, allow_missing=allow_missing, memory_fraction=memory_fraction, **place)
    run = functools.partial(
        probe_model,
        input_ids=batch.input_ids,
        layers=layers,
        max_tokens=batch.n_tokens,
        progress=progress,
        probes=probes,
        jacobian_tokens=jacobian_tokens,
    )
    df = run(model, dtype=probe_dtype)
    del model
    gc.collect()  # a dispatched model's hooks hold reference cycles
    per_layer = df[df["metric"] == "n_tokens"]
    parts = [
        df,
        per_layer.assign(metric="context", value=float(batch.input_ids.shape[1])),
        per_layer.assign(metric="unknown_tokens", value=batch.unknown),
    ]
    if baseline == "init":
        init = initialised(path, seed=baseline_seed, dtype=dtype, device=device, memory_fraction=memory_fraction)
        base = run(init, dtype=probe_dtype)
        parts = [part.assign(step=1) for part in parts] + [base.assign(step=0)]
    return pd.concat(parts, ignore_index=True)


def _size(n: float) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


@dataclass(frozen=True)
class ProbeEstimate:
    """A rough cost of ``probe_model`` on a checkpoint: ``flops`` (the main products of the
    probes, summed over the ``layers`` probed), ``seconds`` (``flops / rate``), ``bytes`` (the
    peak: the model in its dtype, ``model_bytes``, every layer's O(N d) captures and the largest
    layer's probe tensors), ``rate`` (FLOP/s of a short matrix product in ``probe_dtype`` here,
    ``gemm_rate``) and the probes' dtype (``default_probe_dtype`` unless given)."""

    flops: float
    seconds: float
    bytes: int
    rate: float
    layers: int
    model_bytes: int = 0
    probe_dtype: torch.dtype = torch.float64


def estimate_probe(
    config,
    n_tokens: int,
    *,
    layers: list[int] | None = None,
    dtype: torch.dtype = torch.float64,
    probe_dtype: torch.dtype | None = None,
    max_bytes: int = MAX_BYTES,
    probes: tuple[str, ...] = DEFAULT_PROBES,
    jacobian_tokens: int | None = None,
) -> ProbeEstimate:
    """The rough cost of probing the model ``config`` describes, loaded in ``dtype``, on
    ``n_tokens`` tokens with the probes in ``probe_dtype`` (default by width, ``default_probe_dtype``),
    from the shapes of its experts on the meta device (nothing is allocated): per MoE layer with
    E experts of width h on inputs of width d, the per-point Jacobians (4 E N d^2 h) and their
    spectra (11 E N d^3) or, above ``max_bytes``, block Lanczos on them (a Krylov space of up to
    min(d, LANCZOS_STEPS) vectors, ``SPECTRUM_KRYLOV`` with ``spectrum``, each one J^T J product
    of 12 d h, per routed token; at most ``jacobian_tokens`` per expert) and J̄_e (2 d^2 h per expert),
    and the PCA of four sites (2 E N D m + 9 E m^3, m = min(N, D)), of the ``probes`` asked for,
    timed at the rate of one large matrix product. The dense path's count is a lower
    bound (small LAPACK problems run slower); the matrix-free path's counts Lanczos at its step
    cap, which runs that converge stop before (docs/huggingface.md compares it with measured
    times). Memory: the forward pass keeps
    4 N d numbers per layer (``captures``); one layer at a time holds its E N d expert outputs,
    its weights in the probe dtype (one expert at a time on the matrix-free path), its Jacobians
    or Krylov basis, its PCA sites in
    float64 and their covariances (three copies: covariance, eigenvectors, their flip)."""
    wanted = check_probes(probes)
    model = meta_model(config)
    found = moe_layers(model)
    if layers is not None:
        found = [m for m in found if m.layer in set(layers)]
    d = config.get_text_config().hidden_size
    probe = probe_dtype or default_probe_dtype(d)
    size, psize = (torch.empty((), dtype=t).element_size() for t in (dtype, probe))
    N, flops, largest, captured = n_tokens, 0.0, 0, 0
    for m in found:
        E = m.experts.gate_up_proj.shape[0]
        h = m.experts.down_proj.numel() // (E * d)
        if E * N * d * d * psize <= max_bytes:
            flops += 4 * E * N * d * d * h + 11 * E * N * d**3
            jacobians = 2 * E * N * d * d * psize
        else:
            pairs = N * min(_top_k(config, E), E)  # routed (token, expert) pairs only
            pairs = pairs if jacobian_tokens is None else min(pairs, E * jacobian_tokens)
            krylov = krylov_size(pointwise_k(wanted, d), d)[1] if wanted & {"pointwise", "spectrum"} else 0
            flops += krylov * 12 * d * h * pairs
            flops += 2 * E * d * d * h if "mean" in wanted else 0  # J̄_e
            jacobians = max_bytes + 4 * h * d * psize  # a Krylov basis; one expert in the probe dtype, [W_g; W_u], M_e
        flops += sum(2 * E * N * D * min(N, D) + 9 * E * min(N, D) ** 3 for D in (d, h, h, d)) if "pca" in wanted else 0
        captured += (4 * N * d + 2 * N * E) * size  # the forward pass's records: kept for every layer
        covariances = 3 * min(E * max(d, h) ** 2 * 8, max_bytes)  # a PCA site's, its eigenvectors, their flip
        weights = 3 * E * h * d * psize if E * N * d * d * psize <= max_bytes else 0  # dense: every expert cast
        layer = E * N * d * size + weights + jacobians + E * N * (3 * h + 2 * max(d, h)) * 8
        layer += covariances
        largest = max(largest, layer)
    model_bytes = sum(p.numel() for p in model.parameters()) * size
    rate = gemm_rate(probe)
    return ProbeEstimate(flops, flops / rate, model_bytes + captured + largest, rate, len(found), model_bytes, probe)


def _top_k(config, E: int) -> int:
    """Experts per token of a config (``num_experts_per_tok``; ERNIE's ``moe_k``); E when it names none."""
    text = config.get_text_config()
    return getattr(text, "num_experts_per_tok", None) or getattr(text, "moe_k", None) or E


def _gemm_name(dtype: torch.dtype) -> str:
    return {torch.float64: "dgemm", torch.float32: "sgemm"}.get(dtype, f"{dtype} matrix product")


@functools.cache
def gemm_rate(dtype: torch.dtype = torch.float64, n: int = 384, seconds: float = 0.2) -> float:
    """FLOP/s of an ``n x n`` matrix product in ``dtype`` on this machine, the best of repeats for
    about ``seconds`` (measured once per process)."""
    a = torch.randn(n, n, dtype=dtype, generator=torch.Generator().manual_seed(0))
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        a @ a
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2 * n**3 / max(best, 1e-9)
