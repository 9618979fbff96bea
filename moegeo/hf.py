"""Probes on Hugging Face ``transformers`` MoE models (the ``[hf]`` extra; issue 10).

A data source, not a new probe: for every MoE layer of a causal LM this module captures the
tensors the probes take (the hidden states entering the experts, the routing weights as the
model applies them, the expert weights, the expert outputs, the shared experts' contribution
and the block's own output) and runs the probes every setting shares
(``moegeo.experiment.expert_geometry_rows``) into the tidy frame with ``setting="hf"``.

How a layer is read (transformers >= 5):

- **Detection is structural.** An experts module is any module holding 3-D ``gate_up_proj`` and
  ``down_proj`` parameters (``(E, 2h, d)`` and ``(E, d, h)``, or both transposed); its parent
  module is the MoE block. Its layout flags (``is_transposed``, ``is_concatenated``,
  ``has_bias``, ``has_gate``, ``has_post_expert_norm``, set by ``transformers``'
  ``@use_experts_implementation``) say how to read the weights.
- **Routing is captured, never recomputed.** The block calls ``experts(hidden_states,
  top_k_index, top_k_weights)``; a forward pre-hook records that call, so ``g`` is the routing
  exactly as applied, whatever the router (softmax, sigmoid, group-limited, bias-corrected,
  renormalised or not, scaled). Router outputs named ``router_logits`` are never used (some
  versions returned probabilities under that name).
- **Every capture checks itself.** ``sum_e g_e f_e(x)``, with ``f_e`` the model's own expert
  forward (the experts module called with every token sent to expert e at weight 1), must equal
  the experts module's output, and the block's output must equal ``scale * routed + shared``,
  where ``shared`` is the block's output with the routed experts zeroed (the shared experts of
  Qwen2-MoE, with their sigmoid gate, or DeepSeek; absent elsewhere) and ``scale`` a constant
  (1 unless the block scales the experts' sum, e.g. Laguna; it is then folded into ``g``). A
  layer that fails either check raises ``ValueError`` instead of being probed wrongly.
- **Jacobians.** SiLU-gated experts in the default layout (Mixtral, Qwen-MoE, OLMoE, DeepSeek
  and most others) use the closed form ``probes.swiglu_jacobians``. Any other gate (GPT-OSS:
  interleaved gate/up, clamps, ``alpha``, ``up + 1``, biases; any custom ``_apply_gate`` or
  activation) takes autograd through the model's own expert forward, so it follows the model's
  code instead of a re-implementation that could drift from it. The shared experts' Jacobians
  are always autograd through the block.
- **Large models.** Above ``MAX_BYTES`` for the ``(E, N, d, d)`` per-point Jacobians of a layer
  (Mixtral, E = 8, d = 4096: 1 GiB per token) the per-point spectra are not
  materialised: sigma_1 of every J_e(x_i) comes from Lanczos on a matrix-free JVP/VJP operator
  (``probes.swiglu_jacobian_operator``), the mean Jacobian J̄_e in closed form
  (``probes.swiglu_mean_jacobian``; E d^2 numbers), and the PCA sites whose covariances would
  exceed ``MAX_BYTES`` are skipped with a warning.

Probe in float64 (``load`` does): transformers' default ``grouped_mm`` experts kernel rejects
float64 on the CPU, so ``load`` and ``probe_model`` use the ``"eager"`` experts implementation.
"""
from __future__ import annotations

import inspect
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import probes
from .config import JacobianSite, PCASite
from .experiment import COLUMNS, PCA_K, PCA_TAU, SUBSPACE_SITES, Rows, expert_geometry_rows, reading, subspace_rows

#: the ``expert`` id of a layer's shared expert(s) in the frame (-1 already means "not one expert")
SHARED_EXPERT = -2
#: largest tensor a layer's probes materialise: the (E, N, d, d) per-point Jacobians, a PCA
#: site's (E, D, D) covariances, a Lanczos basis. Above it the matrix-free path is taken.
MAX_BYTES = 2**30
#: Lanczos on J^T J for sigma_1 in the matrix-free path: relative residual and steps at most
LANCZOS_TOL, LANCZOS_STEPS = 1e-8, 100
#: fraction of the available memory a model may take when loaded (probing needs the rest)
MEMORY_FRACTION = 0.8
#: default number of tokens probed
MAX_TOKENS = 512
#: default tokens per sequence (fewer when the model's max_position_embeddings is smaller)
CONTEXT = 512
#: fraction of unknown tokens in the probed text above which the probe warns: a few rare words are
#: normal for a word-level vocabulary, more means the text does not suit the tokenizer
UNKNOWN_TOKENS_WARN = 0.05


# --------------------------------------------------------------------------- finding MoE layers
@dataclass(frozen=True)
class MoELayer:
    """One MoE layer of a model: its decoder-layer index, the module path of its experts module,
    the block that calls it (the experts module's parent) and the experts module."""

    layer: int
    name: str
    block: torch.nn.Module = field(repr=False)
    experts: torch.nn.Module = field(repr=False)


def _is_experts(module: torch.nn.Module) -> bool:
    gu, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
    return all(isinstance(t, torch.Tensor) and t.dim() == 3 for t in (gu, down))


def moe_layers(model: torch.nn.Module) -> list[MoELayer]:
    """The MoE layers of ``model``, in module order, found structurally (a module holding 3-D
    ``gate_up_proj`` and ``down_proj`` parameters). ``layer`` is the index in the module path
    (``model.layers.3.mlp.experts`` -> 3). Raises ``ValueError`` saying what was found when
    there is none."""
    found = []
    for name, module in model.named_modules():
        if _is_experts(module):
            parent = name.rpartition(".")[0]
            m = re.search(r"(?:^|\.)(?:layers|h|blocks|layer)\.(\d+)\.", name + ".")
            found.append(MoELayer(int(m.group(1)) if m else len(found), name, model.get_submodule(parent), module))
    if not found:
        raise ValueError(f"{type(model).__name__} (model_type {_model_type(model)!r}) has no MoE layer that moegeo "
                         f"can read: no module holds 3-D `gate_up_proj` and `down_proj` expert parameters "
                         f"(the transformers >= 5 layout). Found: {_describe(model)}")
    if len({m.layer for m in found}) != len(found):
        raise ValueError(f"several experts modules share a layer index: {[m.name for m in found]}")
    return found


def _describe(model: torch.nn.Module) -> str:
    """What a model holds where MoE experts were expected: 3-D parameters and feed-forward types."""
    three_d = [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters() if p.dim() == 3]
    ffn = sorted({type(m).__name__ for n, m in model.named_modules()
                  if re.search(r"(mlp|moe|ffn|feed_forward|expert)[^.]*$", n, re.I)})
    return (f"3-D parameters: {three_d[:6] or 'none'}{' ...' if len(three_d) > 6 else ''}; "
            f"feed-forward modules: {ffn or 'none'}")


def _model_type(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


# --------------------------------------------------------------------------- reading the weights
@dataclass(frozen=True)
class ExpertWeights:
    """Gated experts in moegeo's layout: ``Wg, Wu: (E, h, d)``, ``Wd: (E, d, h)``, biases
    ``bg, bu: (E, h)``, ``bd: (E, d)`` or None. For SiLU-gated experts
    f_e(x) = Wd_e (SiLU(Wg_e x + bg_e) ⊙ (Wu_e x + bu_e)) + bd_e."""

    Wg: torch.Tensor
    Wu: torch.Tensor
    Wd: torch.Tensor
    bg: torch.Tensor | None = None
    bu: torch.Tensor | None = None
    bd: torch.Tensor | None = None

    def __getitem__(self, experts) -> "ExpertWeights":
        """The weights of a subset of experts (any index of the leading dimension)."""
        return ExpertWeights(*(None if t is None else t[experts] for t in
                               (self.Wg, self.Wu, self.Wd, self.bg, self.bu, self.bd)))

    def to(self, dtype: torch.dtype) -> "ExpertWeights":
        return ExpertWeights(*(None if t is None else t.to(dtype) for t in
                               (self.Wg, self.Wu, self.Wd, self.bg, self.bu, self.bd)))


def expert_weights(experts: torch.nn.Module, d: int) -> ExpertWeights:
    """Read an experts module's fused 3-D parameters into ``ExpertWeights``.

    ``gate_up_proj`` is ``(E, 2h, d)`` (``(E, d, 2h)`` when ``is_transposed``; GPT-OSS), gate
    rows first then up rows (``is_concatenated``, the default) or alternating gate, up, gate, ...
    (GPT-OSS); ``down_proj`` is ``(E, d, h)`` (``(E, h, d)`` transposed). Modules without the
    flags (not built by ``@use_experts_implementation``) are read as concatenated, transposed
    only when the shapes say so. Raises ``ValueError`` naming the shapes when they do not fit.
    """
    if getattr(experts, "has_gate", True) is False:
        raise ValueError(f"{type(experts).__name__} has ungated experts (has_gate=False); moegeo reads gated "
                         "(gate_up_proj) experts only")
    gu, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    transposed = getattr(experts, "is_transposed", None)
    if transposed is None:
        transposed = gu.shape[1] == d and gu.shape[2] != d
    W = gu.transpose(1, 2) if transposed else gu  # (E, 2h, d)
    Wd = down.transpose(1, 2) if transposed else down  # (E, d, h)
    E, h = W.shape[0], W.shape[1] // 2
    if W.shape != (E, 2 * h, d) or Wd.shape != (E, d, h):
        raise ValueError(f"{type(experts).__name__}: cannot read gate_up_proj {tuple(gu.shape)} and down_proj "
                         f"{tuple(down.shape)} (is_transposed={transposed}) as experts of a model with hidden size "
                         f"d = {d}: expected (E, 2h, d) and (E, d, h), or both transposed")
    interleaved = getattr(experts, "is_concatenated", True) is False
    gate, up = (slice(0, None, 2), slice(1, None, 2)) if interleaved else (slice(0, h), slice(h, 2 * h))
    b = getattr(experts, "gate_up_proj_bias", None)
    bd = getattr(experts, "down_proj_bias", None)
    b = b.detach() if isinstance(b, torch.Tensor) else None
    return ExpertWeights(W[:, gate], W[:, up], Wd, None if b is None else b[:, gate], None if b is None else b[:, up],
                         bd.detach() if isinstance(bd, torch.Tensor) else None)


def _is_silu_swiglu(experts: torch.nn.Module, dtype: torch.dtype) -> bool:
    """Whether the experts compute SiLU(gate) * up in the default layout, the closed form's case."""
    from transformers.integrations.moe import _default_apply_gate

    gate_fn = getattr(type(experts), "_apply_gate", _default_apply_gate)
    act = getattr(experts, "act_fn", None)
    if gate_fn is not _default_apply_gate or act is None or getattr(experts, "has_post_expert_norm", False):
        return False
    if getattr(experts, "is_concatenated", True) is False:
        return False
    z = torch.linspace(-6, 6, 25, dtype=dtype)
    with torch.no_grad():
        return bool(torch.allclose(act(z), torch.nn.functional.silu(z)))


# --------------------------------------------------------------------------- capture
@dataclass(frozen=True)
class MoECapture:
    """One MoE layer's tensors on a batch of N tokens, as the model computed them.

    Attributes
    ----------
    layer, name : the decoder-layer index and the experts module's path.
    x : (N, d) the hidden states entering the experts.
    g : (N, E) the routing weights as applied (zero for unselected experts), times ``scale``.
    weights : the expert weights (``ExpertWeights``).
    expert_outputs : (E, N, d) f_e(x_i) by the model's own expert forward.
    routed : (N, d) the experts module's output, sum_e g_e f_e(x) / scale.
    shared : (N, d) or None, the shared experts' contribution (the block with its routed experts
        zeroed); None when the block has none.
    block_input, output : (N, d) the block's input and output;
        ``output = scale * routed + shared`` (checked at capture).
    scale : the constant by which the block multiplies the experts' sum (1 for most models).
    silu_swiglu : True when the closed-form SwiGLU Jacobian applies (else autograd).
    """

    layer: int
    name: str
    x: torch.Tensor
    g: torch.Tensor
    weights: ExpertWeights
    expert_outputs: torch.Tensor
    routed: torch.Tensor
    shared: torch.Tensor | None
    block_input: torch.Tensor
    output: torch.Tensor
    scale: float
    silu_swiglu: bool
    _module: MoELayer = field(repr=False, compare=False)

    def expert_fn(self, e: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """f_e as the model computes it (``expert_forward``)."""
        return expert_forward(self._module.experts, e)

    def shared_fn(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The shared experts' contribution as the model computes it (``shared_forward``)."""
        return shared_forward(self._module)

    def hidden(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The experts' gate pre-activation ``Wg x + bg`` and hidden activation (the input of the
        down projection, from the model's own ``_apply_gate`` when it has one), both ``(E, N, h)``;
        the hidden activation is None for a module that exposes neither."""
        w = self.weights
        a, _, hid = probes.swiglu_hidden(w.Wg, w.Wu, self.x, w.bg, w.bu)
        experts = self._module.experts
        if self.silu_swiglu:
            return a, hid
        if not hasattr(experts, "_apply_gate"):
            return a, None
        gu = experts.gate_up_proj.detach()
        raw = (torch.einsum("nd,edk->enk", self.x, gu) if getattr(experts, "is_transposed", False)
               else torch.einsum("nd,ekd->enk", self.x, gu))
        bias = getattr(experts, "gate_up_proj_bias", None)
        if isinstance(bias, torch.Tensor):
            raw = raw + bias.detach()[:, None]
        with torch.no_grad():
            return a, experts._apply_gate(raw)


def expert_forward(experts: torch.nn.Module, e: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """f_e as the model computes it: the experts module called with every token routed to expert
    ``e`` at weight 1. ``(N, d) -> (N, d)``, token by token, differentiable."""
    def f(X):
        idx = torch.full((X.shape[0], 1), e, dtype=torch.long)
        return experts(X, idx, torch.ones(X.shape[0], 1, dtype=X.dtype))
    return f


def shared_forward(m: MoELayer) -> Callable[[torch.Tensor], torch.Tensor]:
    """The shared experts' contribution as a function of the block input: the block with its
    routed experts' output replaced by zeros. ``(N, d) -> (N, d)``, token by token."""
    def f(X):
        handle = m.experts.register_forward_hook(lambda mod, args, out: torch.zeros_like(out))
        try:
            return _first_tensor(m.block(X[None])).reshape(X.shape)
        finally:
            handle.remove()
    return f


def _first_tensor(out):
    """A block's output: the tensor itself, or the first element of a tuple (GPT-OSS returns the
    router scores beside it)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def _experts_call(experts: torch.nn.Module, args, kwargs):
    """(hidden_states, top_k_index, top_k_weights) of a call, by position or by name."""
    bound = inspect.signature(experts.forward).bind(*args, **kwargs)
    values = list(bound.arguments.values())
    if len(values) < 3 or not all(isinstance(v, torch.Tensor) for v in values[:3]):
        raise ValueError(f"{type(experts).__name__} was not called as experts(hidden_states, top_k_index, "
                         f"top_k_weights): got arguments {list(bound.arguments)}")
    return values[:3]


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-8, torch.float32: 1e-4}.get(dtype, 2e-2)


def _check_close(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    err = ((got - want).norm() / want.norm().clamp_min(torch.finfo(want.dtype).tiny)).item()
    if err > _tolerance(want.dtype):
        raise ValueError(f"{name}: {what} (relative error {err:.2e}); moegeo cannot read this layer's layout")


def capture(model: torch.nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None,
            max_tokens: int | None = MAX_TOKENS) -> list[MoECapture]:
    """Run ``model`` on ``input_ids`` and capture every MoE layer (or those in ``layers``).

    Parameters
    ----------
    model : a ``transformers`` causal LM with MoE layers (put in eval mode here).
    input_ids : (B, T) or (T,) token ids.
    layers : decoder-layer indices to capture (default: every MoE layer).
    max_tokens : keep the first ``max_tokens`` tokens (whole sequences are run, then the
        captured rows truncated; None keeps all).

    Returns
    -------
    One ``MoECapture`` per layer, in layer order (see its fields; every capture is checked
    against the block's own output).
    """
    input_ids = _check_ids(model, input_ids)
    found = moe_layers(model)
    if layers is not None:
        known = {m.layer: m for m in found}
        missing = sorted(set(layers) - set(known))
        if missing:
            raise ValueError(f"layers {missing} are not MoE layers of this model; its MoE layers are {sorted(known)}")
        found = [known[i] for i in sorted(set(layers))]
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        input_ids = input_ids[: -(-max_tokens // input_ids.shape[1])]
    records = {m.layer: {} for m in found}
    handles = []
    for m in found:
        rec = records[m.layer]

        def on_call(mod, args, kwargs, rec=rec):
            if "call" in rec:
                raise ValueError(f"{type(mod).__name__} was called more than once in one forward pass")
            rec["call"] = [t.detach() for t in _experts_call(mod, args, kwargs)]

        handles += [
            m.experts.register_forward_pre_hook(on_call, with_kwargs=True),
            m.experts.register_forward_hook(lambda mod, a, out, rec=rec: rec.__setitem__("routed", out.detach())),
            m.block.register_forward_pre_hook(
                lambda mod, a, kw, rec=rec: rec.__setitem__("block_in", (a[0] if a else next(iter(kw.values()))).detach()),
                with_kwargs=True),
            m.block.register_forward_hook(lambda mod, a, out, rec=rec: rec.__setitem__("out", _first_tensor(out).detach())),
        ]
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=input_ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    n = None if max_tokens is None else max_tokens
    return [_build(m, records[m.layer], n) for m in found]


def _check_ids(model, input_ids) -> torch.Tensor:
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
        raise TypeError(f"input_ids must be an integer torch.Tensor of token ids, got "
                        f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}")
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(f"input_ids must have shape (B, T) or (T,) with at least one token, got {tuple(input_ids.shape)}")
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"token ids must lie in [0, {vocab}) (the model's vocab_size), got [{ids.min()}, {ids.max()}]; "
                         "is the tokenizer the model's own?")
    return ids.long()


@torch.no_grad()
def _build(m: MoELayer, rec: dict, n: int | None) -> MoECapture:
    """A checked ``MoECapture`` from one layer's hook records."""
    if "call" not in rec or "out" not in rec:
        raise ValueError(f"{m.name} was not called during the forward pass (is it a dead layer?)")
    x, idx, w = rec["call"]
    d = x.shape[-1]
    x, routed = x.reshape(-1, d)[:n], rec["routed"].reshape(-1, d)[:n]
    block_in, out = rec["block_in"].reshape(-1, d)[:n], rec["out"].reshape(-1, d)[:n]
    idx, w = idx.reshape(-1, idx.shape[-1])[:n], w.reshape(-1, idx.shape[-1])[:n]
    if not (x.shape[0] == block_in.shape[0] == out.shape[0] == idx.shape[0]):
        raise ValueError(f"{m.name}: the block saw {block_in.shape[0]} tokens but its experts {x.shape[0]}")
    weights = expert_weights(m.experts, d)
    E = weights.Wg.shape[0]
    valid = (idx >= 0) & (idx < E)  # expert-parallel sentinels carry zero weight
    g = torch.zeros(x.shape[0], E, dtype=x.dtype).scatter_add_(
        1, idx.clamp(0, E - 1), torch.where(valid, w.to(x.dtype), torch.zeros((), dtype=x.dtype)))
    f = torch.stack([expert_forward(m.experts, e)(x) for e in range(E)])  # (E, N, d)
    _check_close(m.name, torch.einsum("ne,end->nd", g, f), routed,
                 "the experts module's output is not sum_e g_e f_e(x) with f_e its own per-expert forward")
    shared = shared_forward(m)(block_in)
    rest = out - shared
    scale = float((rest * routed).sum() / (routed * routed).sum().clamp_min(torch.finfo(x.dtype).tiny))
    _check_close(m.name, scale * routed + shared, out,
                 "the block's output is not a constant times its experts' output plus the shared part "
                 "(the block with its routed experts zeroed)")
    if abs(scale - 1) <= _tolerance(x.dtype):
        scale = 1.0
    silu = _is_silu_swiglu(m.experts, x.dtype)
    if silu:
        _, _, hid = probes.swiglu_hidden(weights.Wg, weights.Wu, x, weights.bg, weights.bu)
        closed = torch.einsum("edh,enh->end", weights.Wd, hid) + (0 if weights.bd is None else weights.bd[:, None])
        _check_close(m.name, closed, f, "the SwiGLU closed form from the read weights does not reproduce the experts")
    has_shared = bool(shared.abs().max() > 0)
    return MoECapture(m.layer, m.name, x, g * scale, weights, f, routed, shared if has_shared else None,
                      block_in, out, scale, silu, m)


# --------------------------------------------------------------------------- Jacobians by autograd
def tokenwise_jacobians(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor,
                        weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token Jacobians of a token-wise batch function ``fn: (N, d) -> (N, d_out)`` (row n of
    the output depends on row n of the input only, as in every MoE block) by ``d_out`` backward
    passes: the gradient of ``sum_n fn(X)[n, k]`` holds row k of every J_n at once. Works through
    code that ``torch.func.vmap`` cannot batch (the eager experts loop's data-dependent indexing).

    ``weights: (N,)``, optional: return the weighted mean ``sum_n w_n J_n / sum_n w_n``, ``(d_out,
    d)``, without storing the per-token Jacobians. Otherwise ``(N, d_out, d)``.
    """
    X = X.detach().requires_grad_(True)
    with torch.enable_grad():
        Y = fn(X)
        rows = []
        for k in range(Y.shape[1]):
            (grad,) = torch.autograd.grad(Y[:, k].sum(), X, retain_graph=k + 1 < Y.shape[1])
            rows.append(grad if weights is None else weights @ grad / weights.sum())
    return torch.stack(rows, -2).detach()


def tokenwise_operator(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> probes.JacobianOperator:
    """The per-token Jacobians of a token-wise ``fn: (N, d) -> (N, d_out)`` as a matrix-free
    operator, batch ``(N,)``: one forward-mode JVP gives J_n v_n for every token, one VJP J_n^T u_n."""
    X = X.detach()
    d_out = fn(X[:1]).shape[-1]

    def matvec(v):
        with torch.enable_grad():
            return torch.func.jvp(fn, (X,), (v.to(X.dtype),))[1].detach()

    def rmatvec(u):
        with torch.enable_grad():
            return torch.func.vjp(fn, X)[1](u.to(X.dtype))[0].detach()

    return probes.JacobianOperator(matvec, rmatvec, batch_shape=(X.shape[0],), d_in=X.shape[1], d_out=d_out)


# --------------------------------------------------------------------------- probes into the frame
def probe_model(model: torch.nn.Module, input_ids: torch.Tensor, layers: list[int] | None = None,
                max_tokens: int | None = MAX_TOKENS, seed: int = 0, max_bytes: int = MAX_BYTES,
                progress: bool | None = None) -> pd.DataFrame:
    """Every probe of every MoE layer of a ``transformers`` causal LM on ``input_ids``: the tidy frame.

    Parameters
    ----------
    model : a causal LM with MoE layers (``load`` gives one in float64 with eager experts).
    input_ids : (B, T) or (T,) token ids.
    layers : decoder-layer indices (default: every MoE layer).
    max_tokens : tokens probed (the first ones; see ``capture``).
    seed : the ``seed`` column (e.g. the seed that drew the batch).
    max_bytes : largest tensor materialised per layer; above it the matrix-free path (module doc).
    progress : tqdm bar over layers (None: only on a terminal).

    Returns
    -------
    The frame of ``moegeo.experiment.COLUMNS`` with ``setting="hf"``, ``arm`` and an extra
    ``model_type`` column the model's ``config.model_type``, ``step=0`` and ``layer`` the decoder
    layer. Routed experts keep their ids; the shared experts of a layer are ``expert=-2``
    (``SHARED_EXPERT``), probed with weight 1 on every token, input and output sites only.
    Experts without routing weight on the batch get an ``excluded`` row and a warning, nothing
    else. Per layer also ``n_tokens``, ``d_model`` (the width d of the layer input) and
    ``routing_weight_sum`` (mean sum_e g_e over tokens: 1 for renormalised Top-k, not for Qwen2-MoE
    with ``norm_topk_prob=False`` or DeepSeek-V3's scaled sigmoid weights); per routed expert
    ``load``, its mean routing weight (1/N) sum_i g_e(x_i) with g as applied (so the loads of a
    layer sum to its ``routing_weight_sum``), and ``routed_tokens``, the tokens with g_e > 0.
    Without the matrix-free path these are exactly the rows of the other settings; with it
    (``jacobian_path`` metric 1) only sigma_1 of the per-point Jacobians (and
    ``sigma1_converged``) and the full spectrum of J̄_e.
    """
    model_type = _model_type(model)
    restore = _eager_experts(model)
    try:
        caps = capture(model, input_ids, layers, max_tokens)
        rows = []
        for cap in tqdm(caps, desc=f"probe {model_type}", disable=None if progress is None else not progress):
            rows += layer_rows(cap, model_type, seed, max_bytes)
    finally:
        restore()
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["setting"] = "hf"
    df["model_type"] = model_type
    return df


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


def layer_rows(cap: MoECapture, arm: str, seed: int = 0, max_bytes: int = MAX_BYTES) -> list[dict]:
    """The probe rows of one captured layer (see ``probe_model``), computed in float64."""
    rows = Rows(seed, arm, cap.layer, 0)
    g = cap.g.double()
    mass = probes.expert_mass(g)
    live = torch.nonzero(mass > 0).flatten()
    experts = live.tolist()
    for e in torch.nonzero(mass <= 0).flatten().tolist():
        warnings.warn(f"{arm}, layer {cap.layer}: expert {e} received zero routing weight on these "
                      f"{g.shape[0]} tokens; excluded")
        rows.add("excluded", "", 1.0, [e])
    x, w, gl = cap.x.double(), cap.weights[live].to(torch.float64), g[:, live]
    rows.add("n_tokens", "", float(g.shape[0]))
    rows.add("d_model", "", float(x.shape[1]))
    rows.add("load", "", mass[live] / g.shape[0], experts)
    rows.add("routed_tokens", "", (gl > 0).sum(0).double(), experts)
    rows.add("routing_weight_sum", "", g.sum(1).mean())
    pre, hidden = cap.hidden()
    sites = {PCASite.INPUT: x, PCASite.PRE_ACTIVATION: pre[live].double(), PCASite.OUTPUT: cap.expert_outputs[live].double()}
    if hidden is not None:
        sites[PCASite.HIDDEN] = hidden[live].double()
    E, (N, d) = len(experts), x.shape
    dense = E * N * d * d * 8 <= max_bytes
    rows.add("jacobian_path", "", 0.0 if dense else 1.0)
    if dense:
        J = (probes.swiglu_jacobians(w.Wg, w.Wu, w.Wd, x, w.bg, w.bu) if cap.silu_swiglu else
             torch.stack([tokenwise_jacobians(cap.expert_fn(e), cap.x).double() for e in experts]))
        expert_geometry_rows(rows, x, gl, J, sites, experts)
    else:
        sigma1, ok = _pointwise_sigma1(cap, live, max_bytes)
        jbar = (probes.swiglu_mean_jacobian(w.Wg, w.Wu, w.Wd, x, gl, w.bg, w.bu) if cap.silu_swiglu else
                torch.stack([tokenwise_jacobians(cap.expert_fn(e), cap.x, cap.g[:, e]).double() for e in experts]))
        _matrix_free_rows(rows, gl, sigma1, ok, jbar, sites, experts, max_bytes)
    if cap.shared is not None:
        _shared_rows(rows, cap, max_bytes)
    return rows


def _pointwise_sigma1(cap: MoECapture, live: torch.Tensor, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing-weighted mean over tokens of sigma_1(J_e(x_n)), ``(E_live,)``, by Lanczos on a
    matrix-free operator over each expert's routed tokens (in chunks whose Lanczos bases fit in
    ``max_bytes``), and whether every run converged."""
    x = cap.x.double()
    d = x.shape[1]
    steps = min(d, LANCZOS_STEPS)
    chunk = max(1, max_bytes // (2 * steps * d * 8))  # 2 starts per matrix
    w = cap.weights.to(torch.float64)
    values, converged = [], []
    for e in live.tolist():
        tokens = torch.nonzero(cap.g[:, e] > 0).flatten()
        total, ok = 0.0, True
        for start in range(0, len(tokens), chunk):
            t = tokens[start:start + chunk]
            op = (probes.swiglu_jacobian_operator(*(v[e:e + 1] for v in (w.Wg, w.Wu, w.Wd)), x[t],
                                                  *(None if b is None else b[e:e + 1] for b in (w.bg, w.bu)))
                  if cap.silu_swiglu else tokenwise_operator(cap.expert_fn(e), cap.x[t]))
            res = probes.lanczos_sigma1(op, tol=LANCZOS_TOL, max_iter=steps, generator=torch.Generator().manual_seed(0))
            total += float(cap.g[t, e].double() @ res.values.reshape(-1).double())
            ok &= res.converged
        values.append(total / float(cap.g[:, e].double().sum()))
        converged.append(float(ok))
    return torch.tensor(values, dtype=torch.float64), torch.tensor(converged, dtype=torch.float64)


def _matrix_free_rows(rows: Rows, g, sigma1, converged, jbar, sites: dict, experts: list[int], max_bytes: int) -> None:
    """The rows of a layer too large for per-point Jacobians (module doc, "Large models")."""
    r_point, r_mean = reading(jacobian=JacobianSite.POINTWISE), reading(jacobian=JacobianSite.MEAN)
    rows.add("sigma1", r_point, sigma1, experts)
    rows.add("sigma1_converged", r_point, converged, experts)
    s = probes.singular_values(jbar)
    rows.add("sigma", r_mean, s, experts)
    rows.add("sigma1", r_mean, s[:, 0], experts)
    if len(experts) > 1:
        rows.add("cosine", r_mean, probes.cosine_matrix(jbar), experts, index=experts)
    for site, h in sites.items():
        D = h.shape[-1]
        if len(experts) * D * D * 8 > max_bytes:
            warnings.warn(f"layer {rows.key['layer']}: PCA at site {site.value} skipped, its covariances "
                          f"({len(experts)} x {D} x {D}) exceed max_bytes = {max_bytes}")
            continue
        pca = probes.weighted_pca(h, g.T, vectors=site in SUBSPACE_SITES)
        label, k = reading(pca_site=site), min(PCA_K, D)
        for metric, value in (("explained_variance", pca.explained_variance_ratio), (f"cumvar@{k}", pca.cumvar_at(k)),
                              (f"k@{PCA_TAU}", pca.k_at(PCA_TAU).double())):
            rows.add(metric, label, value, experts)
        if site in SUBSPACE_SITES and len(experts) > 1:
            subspace_rows(rows, pca, site, experts)


def _shared_rows(rows: Rows, cap: MoECapture, max_bytes: int) -> None:
    """The shared experts as one more expert (``SHARED_EXPERT``) with weight 1 on every token:
    Jacobians of their contribution (gate included) w.r.t. the block input by autograd."""
    X = cap.block_input.double()
    N, d = X.shape
    ones = torch.ones(N, 1, dtype=torch.float64)
    sites = {PCASite.INPUT: X, PCASite.OUTPUT: cap.shared.double()[None]}
    fn = cap.shared_fn()
    if N * d * d * 8 <= max_bytes:
        J = tokenwise_jacobians(fn, cap.block_input).double()[None]
        expert_geometry_rows(rows, X, ones, J, sites, [SHARED_EXPERT])
        return
    lz = probes.lanczos_sigma1(tokenwise_operator(fn, cap.block_input), tol=LANCZOS_TOL, max_iter=min(d, LANCZOS_STEPS),
                               generator=torch.Generator().manual_seed(0))
    jbar = tokenwise_jacobians(fn, cap.block_input, torch.ones(N, dtype=cap.block_input.dtype)).double()[None]
    _matrix_free_rows(rows, ones, lz.values.double().mean()[None], torch.tensor([float(lz.converged)]), jbar, sites,
                      [SHARED_EXPERT], max_bytes)


# --------------------------------------------------------------------------- loading a checkpoint
def available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable of /proc/meminfo (Linux), else
    the free physical pages (``os.sysconf``)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def estimate_bytes(config, dtype: torch.dtype = torch.float64) -> tuple[int, int]:
    """(parameter count, bytes in ``dtype``) of the causal LM a ``config`` describes, counted on the
    meta device (nothing is allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n = sum(p.numel() for p in model.parameters())
    return n, n * torch.empty((), dtype=dtype).element_size()


def checkpoint_config(path: str | os.PathLike):
    """The ``transformers`` config of the local checkpoint directory ``path``. Raises
    ``FileNotFoundError`` naming ``path`` when it is not a directory or holds no ``config.json``."""
    from transformers import AutoConfig

    path = os.fspath(path)
    expected = ("expected a Hugging Face checkpoint directory saved with save_pretrained (config.json, the weights "
                "and the tokenizer)")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory; {expected}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        held = sorted(os.listdir(path))
        raise FileNotFoundError(f"{path} has no config.json; {expected}. It holds: "
                                f"{', '.join(held[:8]) + (' ...' if len(held) > 8 else '') if held else 'nothing'}")
    return AutoConfig.from_pretrained(path, local_files_only=True)


def load(path: str | os.PathLike, dtype: torch.dtype = torch.float64, memory_fraction: float = MEMORY_FRACTION):
    """Load a local ``transformers`` causal-LM checkpoint directory for probing.

    The size is checked from the config (``checkpoint_config``) first: a model whose parameters in
    ``dtype`` would take more than ``memory_fraction`` of the available memory raises
    ``MemoryError`` with the estimate, before anything is materialised. Loads with
    ``experts_implementation="eager"`` (float64 needs it on the CPU) and never touches the network
    (``local_files_only``).
    """
    from transformers import AutoModelForCausalLM

    config = checkpoint_config(path)
    n, need = estimate_bytes(config, dtype)
    have = available_memory()
    if need > memory_fraction * have:
        raise MemoryError(f"{path}: the model ({config.model_type}, {n / 1e9:.2f} B parameters) needs about "
                          f"{need / 2**30:.1f} GiB in {dtype} but only {have / 2**30:.1f} GiB of memory is available "
                          f"(at most {memory_fraction:.0%} of it may hold the model); load it in a smaller dtype "
                          "(e.g. dtype=torch.float32) or on a larger machine")
    model = AutoModelForCausalLM.from_pretrained(os.fspath(path), dtype=dtype, experts_implementation="eager",
                                                 local_files_only=True)
    return model.eval()


@dataclass(frozen=True)
class TokenBatch:
    """Token ids to probe, from ``tokenize``.

    Attributes
    ----------
    input_ids : (B, context) token ids: ``B = ceil(n_tokens / context)`` sequences.
    n_tokens : the tokens probed: the first ``n_tokens`` of ``input_ids.flatten()``. The rest of
        the last sequence only completes it (the text's following tokens); a causal LM's hidden
        states at a token do not depend on later tokens, so they change nothing that is probed.
        Pass ``max_tokens=n_tokens`` to ``probe_model`` / ``capture``.
    unknown : the fraction of the ``n_tokens`` tokens that are the tokenizer's unknown token
        (0 for a tokenizer without one, e.g. byte-level BPE).
    """

    input_ids: torch.Tensor
    n_tokens: int
    unknown: float


def _tokenizer_files(path: str) -> list[str]:
    """The files of ``path`` that ``save_pretrained`` of some tokenizer writes."""
    return sorted(f for f in os.listdir(path) if re.match(r"(tokenizer|vocab|merges|spiece|special_tokens_map)", f))


def load_tokenizer(path: str | os.PathLike):
    """The checkpoint's own tokenizer, from ``path`` only. Raises ``ValueError`` saying what was
    found when there is no usable one: no tokenizer file, one that does not load, or a vocabulary
    of at most one token (``transformers`` >= 5 builds such an empty tokenizer from ``config.json``
    alone, e.g. for Qwen2-MoE or OLMoE saved without a tokenizer)."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    files = _tokenizer_files(path)
    found = (f"tokenizer files: {', '.join(files)}" if files
             else "no tokenizer file (tokenizer.json, tokenizer_config.json, ...)")
    problem = None
    if files:
        try:
            tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError, KeyError) as err:
            problem = f"loading it fails ({type(err).__name__}: {err})"
        else:
            if len(tok) <= 1:
                problem = f"it loads as {type(tok).__name__} with a vocabulary of {len(tok)} token(s)"
    if not files or problem:
        raise ValueError(f"no usable tokenizer found in {path}: {found}{'; ' + problem if problem else ''}. The probe "
                         "tokenises the text with the checkpoint's own tokenizer: save it with the model, e.g. "
                         "tokenizer.save_pretrained(DIR)")
    return tok


def tokenize(path: str | os.PathLike, text: str | None = None, tokens: int = MAX_TOKENS,
             context: int | None = None, max_context: int | None = None) -> TokenBatch:
    """The first ``tokens`` tokens of ``text`` (default: the shipped WikiText-2 test split) by the
    checkpoint's own tokenizer in ``path`` (``load_tokenizer``), in sequences of ``context``
    tokens (default ``CONTEXT``, or ``max_context`` if smaller, at most the tokens probed).

    All ``tokens`` are probed, none are dropped: the last sequence is completed with the text's
    following tokens (from its start again when the text ends), which are run but not probed (see
    ``TokenBatch``). A text shorter than ``tokens`` gives all its tokens (``n_tokens`` says how
    many). Warns when more than ``UNKNOWN_TOKENS_WARN`` of them are the unknown token. Raises
    ``ValueError`` for ``tokens`` or ``context`` below 1, ``context`` above ``max_context`` (the
    model's ``max_position_embeddings``), no usable tokenizer, or a text that gives no tokens.
    """
    from .wikitext import shipped_text

    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    if context is not None and context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if context is not None and max_context is not None and context > max_context:
        raise ValueError(f"context {context} exceeds the model's max_position_embeddings ({max_context})")
    tok = load_tokenizer(path)
    text = shipped_text("test") if text is None else text
    context = context or min(CONTEXT, max_context or CONTEXT)
    # a token is far shorter than 64 characters: tokenising a prefix is enough and fast
    ids = tok(text[: 64 * (tokens + context)], add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"the text gives no tokens with the tokenizer of {path} (is it empty?)")
    n = min(tokens, len(ids))
    context = min(context, n)
    B = -(-n // context)
    unknown = sum(i == tok.unk_token_id for i in ids[:n]) / n if tok.unk_token_id is not None else 0.0
    if unknown > UNKNOWN_TOKENS_WARN:
        warnings.warn(unknown_tokens_warning(unknown))
    return TokenBatch(torch.tensor((ids + ids)[: B * context]).reshape(B, context), n, unknown)


def unknown_tokens_warning(unknown: float) -> str:
    """What a text with this fraction of unknown tokens means for the probe (above ``UNKNOWN_TOKENS_WARN``)."""
    return (f"{unknown:.0%} of the probed tokens are the tokenizer's unknown token (more than "
            f"{UNKNOWN_TOKENS_WARN:.0%}): there the model sees one and the same token, not the text; probe a text that "
            "suits the tokenizer (--text FILE), or check that the tokenizer is the model's own")


def probe_checkpoint(path: str | os.PathLike, text: str | None = None, tokens: int = MAX_TOKENS,
                     layers: list[int] | None = None, context: int | None = None,
                     dtype: torch.dtype = torch.float64, progress: bool | None = None) -> pd.DataFrame:
    """What ``python -m moegeo probe`` runs: ``tokenize`` ``text`` (default: the shipped WikiText-2
    test split) with the checkpoint's tokenizer in sequences of at most ``context`` tokens (default
    ``CONTEXT``, or the model's ``max_position_embeddings`` if smaller), ``load`` the checkpoint at
    ``path`` and ``probe_model`` it on exactly ``tokens`` tokens (fewer only when the text is
    shorter): the tidy frame. Beside ``n_tokens`` each layer gets the rows ``context`` (tokens per
    sequence) and ``unknown_tokens`` (``TokenBatch.unknown``). The config and the tokenizer are
    checked before the model is loaded, and so are ``layers`` against the config's number of
    decoder layers (whether a layer in range is an MoE layer is known only once it is loaded)."""
    config = checkpoint_config(path)
    limit = getattr(config, "max_position_embeddings", None)
    n_layers = getattr(config.get_text_config(), "num_hidden_layers", None)
    outside = sorted({l for l in layers or () if n_layers is not None and not 0 <= l < n_layers})
    if outside:
        raise ValueError(f"layers {outside} do not exist: the checkpoint has {n_layers} decoder layers (0 to {n_layers - 1})")
    batch = tokenize(path, text, tokens, context, max_context=limit)
    model = load(path, dtype)
    df = probe_model(model, batch.input_ids, layers, max_tokens=batch.n_tokens, progress=progress)
    per_layer = df[df["metric"] == "n_tokens"]
    return pd.concat([df, per_layer.assign(metric="context", value=float(batch.input_ids.shape[1])),
                      per_layer.assign(metric="unknown_tokens", value=batch.unknown)], ignore_index=True)
