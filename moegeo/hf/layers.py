"""Reading the MoE layers of a Hugging Face ``transformers`` model: finding them, their expert
weights, and one forward pass captured layer by layer, each capture checked against the model's
own output. See ``moegeo.hf`` for what is read and how."""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from .. import probes
from .checkpoint import MAX_TOKENS


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
        raise ValueError(
            f"{type(model).__name__} (model_type {_model_type(model)!r}) has no MoE layer that moegeo "
            f"can read: no module holds 3-D `gate_up_proj` and `down_proj` expert parameters "
            f"(the transformers >= 5 layout). Found: {_describe(model)}"
        )
    if len({m.layer for m in found}) != len(found):
        raise ValueError(f"several experts modules share a layer index: {[m.name for m in found]}")
    return found


def _describe(model: torch.nn.Module) -> str:
    """What a model holds where MoE experts were expected: 3-D parameters and feed-forward types."""
    three_d = [f"{n} {tuple(p.shape)}" for n, p in model.named_parameters() if p.dim() == 3]
    ffn = sorted(
        {
            type(m).__name__
            for n, m in model.named_modules()
            if re.search(r"(mlp|moe|ffn|feed_forward|expert)[^.]*$", n, re.I)
        }
    )
    return (
        f"3-D parameters: {three_d[:6] or 'none'}{' ...' if len(three_d) > 6 else ''}; "
        f"feed-forward modules: {ffn or 'none'}"
    )


def _model_type(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__


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

    def __getitem__(self, experts) -> ExpertWeights:
        """The weights of a subset of experts (any index of the leading dimension)."""
        return ExpertWeights(
            *(None if t is None else t[experts] for t in (self.Wg, self.Wu, self.Wd, self.bg, self.bu, self.bd))
        )

    def to(self, dtype: torch.dtype) -> ExpertWeights:
        return ExpertWeights(
            *(None if t is None else t.to(dtype) for t in (self.Wg, self.Wu, self.Wd, self.bg, self.bu, self.bd))
        )


def expert_weights(experts: torch.nn.Module, d: int) -> ExpertWeights:
    """Read an experts module's fused 3-D parameters into ``ExpertWeights``.

    ``gate_up_proj`` is ``(E, 2h, d)`` (``(E, d, 2h)`` when ``is_transposed``; GPT-OSS), gate
    rows first then up rows (``is_concatenated``, the default) or alternating gate, up, gate, ...
    (GPT-OSS); ``down_proj`` is ``(E, d, h)`` (``(E, h, d)`` transposed). Modules without the
    flags (not built by ``@use_experts_implementation``) are read as concatenated, transposed
    only when the shapes say so. Raises ``ValueError`` naming the shapes when they do not fit.
    """
    if getattr(experts, "has_gate", True) is False:
        raise ValueError(
            f"{type(experts).__name__} has ungated experts (has_gate=False); moegeo reads gated "
            "(gate_up_proj) experts only"
        )
    gu, down = experts.gate_up_proj.detach(), experts.down_proj.detach()
    transposed = getattr(experts, "is_transposed", None)
    if transposed is None:
        transposed = gu.shape[1] == d and gu.shape[2] != d
    W = gu.transpose(1, 2) if transposed else gu  # (E, 2h, d)
    Wd = down.transpose(1, 2) if transposed else down  # (E, d, h)
    E, h = W.shape[0], W.shape[1] // 2
    if W.shape != (E, 2 * h, d) or Wd.shape != (E, d, h):
        raise ValueError(
            f"{type(experts).__name__}: cannot read gate_up_proj {tuple(gu.shape)} and down_proj "
            f"{tuple(down.shape)} (is_transposed={transposed}) as experts of a model with hidden size "
            f"d = {d}: expected (E, 2h, d) and (E, d, h), or both transposed"
        )
    interleaved = getattr(experts, "is_concatenated", True) is False
    gate, up = (slice(0, None, 2), slice(1, None, 2)) if interleaved else (slice(0, h), slice(h, 2 * h))
    b = getattr(experts, "gate_up_proj_bias", None)
    bd = getattr(experts, "down_proj_bias", None)
    b = b.detach() if isinstance(b, torch.Tensor) else None
    return ExpertWeights(
        W[:, gate],
        W[:, up],
        Wd,
        None if b is None else b[:, gate],
        None if b is None else b[:, up],
        bd.detach() if isinstance(bd, torch.Tensor) else None,
    )


def _is_silu_swiglu(experts: torch.nn.Module, dtype: torch.dtype, device=None) -> bool:
    """Whether the experts compute SiLU(gate) * up in the default layout, the closed form's case."""
    from transformers.integrations.moe import _default_apply_gate

    gate_fn = getattr(type(experts), "_apply_gate", _default_apply_gate)
    act = getattr(experts, "act_fn", None)
    if gate_fn is not _default_apply_gate or act is None or getattr(experts, "has_post_expert_norm", False):
        return False
    if getattr(experts, "is_concatenated", True) is False:
        return False
    z = torch.linspace(-6, 6, 25, dtype=dtype, device=device)
    with torch.no_grad():
        return bool(torch.allclose(act(z), torch.nn.functional.silu(z)))


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
        a, _, hid = probes.swiglu_hidden(w.Wg, w.Wu, self.x, bg=w.bg, bu=w.bu)
        experts = self._module.experts
        if self.silu_swiglu:
            return a, hid
        if not hasattr(experts, "_apply_gate"):
            return a, None
        with _weights_in_memory(experts):
            gu = experts.gate_up_proj.detach()
            bias = getattr(experts, "gate_up_proj_bias", None)
            bias = bias.detach() if isinstance(bias, torch.Tensor) else None
        raw = (
            torch.einsum("nd,edk->enk", self.x, gu)
            if getattr(experts, "is_transposed", False)
            else torch.einsum("nd,ekd->enk", self.x, gu)
        )
        if bias is not None:
            raw = raw + bias[:, None]
        with torch.no_grad():
            return a, experts._apply_gate(raw)


def expert_forward(experts: torch.nn.Module, e: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """f_e as the model computes it: the experts module called with every token routed to expert
    ``e`` at weight 1. ``(N, d) -> (N, d)``, token by token, differentiable."""

    def f(X):
        idx = torch.full((X.shape[0], 1), e, dtype=torch.long, device=X.device)
        return experts(X, idx, torch.ones(X.shape[0], 1, dtype=X.dtype, device=X.device))

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
        raise ValueError(
            f"{type(experts).__name__} was not called as experts(hidden_states, top_k_index, "
            f"top_k_weights): got arguments {list(bound.arguments)}"
        )
    return values[:3]


def _tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-8, torch.float32: 1e-4}.get(dtype, 2e-2)


def _check_close(name: str, got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """``ValueError`` unless ``got`` equals ``want`` within the dtype's tolerance (norms in float64,
    so a 16-bit sum cannot overflow; NaN fails)."""
    diff, ref = (got.double() - want.double()).norm(), want.double().norm()
    err = (diff / ref.clamp_min(torch.finfo(torch.float64).tiny)).item()
    if not err <= _tolerance(want.dtype):
        raise ValueError(f"{name}: {what} (relative error {err:.2e}); moegeo cannot read this layer's layout")


def capture(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    layers: list[int] | None = None,
    max_tokens: int | None = MAX_TOKENS,
) -> list[MoECapture]:
    """Run ``model`` on ``input_ids`` and capture every MoE layer (or those in ``layers``):
    ``list(captures(...))``, every layer's tensors held at once (see ``captures`` for one layer
    at a time)."""
    return list(captures(model, input_ids, layers=layers, max_tokens=max_tokens))


def captures(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    *,
    layers: list[int] | None = None,
    max_tokens: int | None = MAX_TOKENS,
) -> Iterator[MoECapture]:
    """Run ``model`` on ``input_ids`` once and yield a checked capture of every MoE layer (or those
    in ``layers``), one layer at a time.

    Parameters
    ----------
    model : a ``transformers`` causal LM with MoE layers (put in eval mode here), on one device
        or dispatched by ``accelerate`` (``load(device_map=...)``: offloaded weights are brought
        in for the layer being built only).
    input_ids : (B, T) or (T,) token ids (moved to the model's device).
    layers : decoder-layer indices to capture (default: every MoE layer); not empty.
    max_tokens : keep the first ``max_tokens`` tokens (whole sequences are run, then the
        captured rows truncated; None keeps all).

    Yields
    ------
    One ``MoECapture`` per layer, in layer order (see its fields; every capture is checked
    against the block's own output). The forward pass keeps O(N d) per layer (the experts'
    inputs, routing, outputs and the block's input and output); each layer's (E, N, d) expert
    outputs and weights are built when it is yielded, so a caller that drops a capture before
    taking the next holds one layer's at a time. The arguments are checked, and the forward
    pass run, before the first capture is yielded.
    """
    found, records = _forward(model, input_ids, layers, max_tokens)
    return (_build(m, records.pop(m.layer), max_tokens) for m in found)


def _forward(model, input_ids, layers, max_tokens) -> tuple[list[MoELayer], dict[int, dict]]:
    """The MoE layers to capture and their hook records of one forward pass (``captures``)."""
    input_ids = _check_ids(model, input_ids)
    check_layers(layers)
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
                lambda mod, a, kw, rec=rec: rec.__setitem__(
                    "block_in", (a[0] if a else next(iter(kw.values()))).detach()
                ),
                with_kwargs=True,
            ),
            m.block.register_forward_hook(
                lambda mod, a, out, rec=rec: rec.__setitem__("out", _first_tensor(out).detach())
            ),
        ]
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=input_ids.to(_input_device(model)), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return found, records


def _input_device(model) -> torch.device:
    """Where the model takes its input ids: its embedding's device (the first device of a
    dispatched model; the CPU when the embedding is offloaded to disk)."""
    weight = model.get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


@contextlib.contextmanager
def _weights_in_memory(module: torch.nn.Module):
    """``module``'s parameters as tensors while the block is open: as they are, or, for a module
    whose weights ``accelerate`` offloaded (``load(device_map=...)``), brought in from the
    offload and put back on leaving."""
    if getattr(module, "_hf_hook", None) is None:
        yield
        return
    from accelerate.utils import align_module_device

    with align_module_device(module):
        yield


def check_layers(layers) -> None:
    """``layers`` must be None (every MoE layer) or a non-empty list of integer layer indices."""
    if layers is None:
        return
    if isinstance(layers, (str, bytes)) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a list of decoder-layer indices (None: every MoE layer), got {layers!r}")
    layers = list(layers)
    if not layers:
        raise ValueError("layers must name at least one decoder layer (None: every MoE layer), got []")
    bad = [l for l in layers if isinstance(l, bool) or not isinstance(l, int)]
    if bad:
        raise TypeError(f"layers must be integer decoder-layer indices, got {bad}")


def _check_ids(model, input_ids) -> torch.Tensor:
    if not torch.is_tensor(input_ids) or input_ids.dtype not in (torch.long, torch.int, torch.int32):
        raise TypeError(
            f"input_ids must be an integer torch.Tensor of token ids, got "
            f"{getattr(input_ids, 'dtype', type(input_ids).__name__)}"
        )
    ids = input_ids[None] if input_ids.dim() == 1 else input_ids
    if ids.dim() != 2 or ids.numel() == 0:
        raise ValueError(
            f"input_ids must have shape (B, T) or (T,) with at least one token, got {tuple(input_ids.shape)}"
        )
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(
            f"token ids must lie in [0, {vocab}) (the model's vocab_size), got [{ids.min()}, {ids.max()}]; "
            "is the tokenizer the model's own?"
        )
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
    with _weights_in_memory(m.experts):
        weights = expert_weights(m.experts, d)
    E = weights.Wg.shape[0]
    valid = (idx >= 0) & (idx < E)  # expert-parallel sentinels carry zero weight
    gtype = torch.promote_types(x.dtype, w.dtype)  # a float32 router's weights stay float32 in a bfloat16 model
    g = torch.zeros(x.shape[0], E, dtype=gtype, device=x.device).scatter_add_(
        1, idx.clamp(0, E - 1), torch.where(valid, w.to(gtype), torch.zeros((), dtype=gtype, device=x.device))
    )
    f = torch.stack([expert_forward(m.experts, e)(x) for e in range(E)])  # (E, N, d)
    _check_close(
        m.name,
        torch.einsum("ne,end->nd", g.double(), f.double()),
        routed,
        "the experts module's output is not sum_e g_e f_e(x) with f_e its own per-expert forward",
    )
    shared = shared_forward(m)(block_in)
    rest = out - shared
    r64 = routed.double()
    scale = float((rest.double() * r64).sum() / (r64 * r64).sum().clamp_min(torch.finfo(torch.float64).tiny))
    _check_close(
        m.name,
        scale * routed + shared,
        out,
        "the block's output is not a constant times its experts' output plus the shared part "
        "(the block with its routed experts zeroed)",
    )
    if abs(scale - 1) <= _tolerance(x.dtype):
        scale = 1.0
    silu = _is_silu_swiglu(m.experts, x.dtype, x.device)
    if silu:
        _, _, hid = probes.swiglu_hidden(weights.Wg, weights.Wu, x, bg=weights.bg, bu=weights.bu)
        closed = torch.einsum("edh,enh->end", weights.Wd, hid) + (0 if weights.bd is None else weights.bd[:, None])
        _check_close(m.name, closed, f, "the SwiGLU closed form from the read weights does not reproduce the experts")
    has_shared = bool(shared.abs().max() > 0)
    return MoECapture(
        m.layer, m.name, x, g * scale, weights, f, routed, shared if has_shared else None, block_in, out, scale, silu, m
    )
