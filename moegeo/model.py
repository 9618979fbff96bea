"""The controlled MLP-MoE of Appendix B, with a leading seed dimension so that a whole seed
sweep trains as one set of batched matrix products.

Parameter shapes (S seeds, E experts): ``W1: (S, E, h, d)``, ``b1: (S, E, h)``,
``W2: (S, E, d, h)``, ``b2: (S, E, d)``, router ``Wr: (S, E, d)``, ``br: (S, E)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import Arm, Router
from .nn import gelu, layer_norm, seed_generator
from .routers import ROUTERS, KMeansRouter, cosine_scores, route, topk_route
from .validate import check_finite_rows, check_positive_number

ROUTINGS = ("topk", "soft", "dense")


BLOCK_COST_ROWS = 16  # speed only: a block's weight copy and its gradient's scatter cost about
# as much as 16 padded rows of the two expert products at d = 64, h = 128 (forward + backward,
# measured on the 2-core machine: 9 ms for 240 blocks against 2.4 us per row)


def block_rows(counts: torch.Tensor) -> int:
    """Rows per block of the Top-k dispatch for groups of ``counts`` routed tokens: the busiest
    count (one block per group, weights in place) or a power of two from 32 below it, whichever
    costs least in padded rows plus BLOCK_COST_ROWS per block that copies its weights. Balanced
    routing keeps one block per group; a router that sends most tokens to a few experts gets
    small blocks instead of padding every group to the busiest one."""
    busiest, used = max(int(counts.max()), 1), int((counts > 0).sum())
    best = (used * busiest + (0 if used == len(counts) else BLOCK_COST_ROWS * used), busiest)
    rows = 32
    while rows < busiest:
        n_blocks = int(((counts + rows - 1) // rows).sum())
        best = min(best, (n_blocks * (rows + BLOCK_COST_ROWS), rows))
        rows *= 2
    return best[1]


@dataclass(frozen=True)
class ExpertParams:
    """The tensors of one seed's layer, as the probes take them (see ``moegeo.probes``)."""

    W1: torch.Tensor  # (E, h, d)
    b1: torch.Tensor  # (E, h)
    W2: torch.Tensor  # (E, d, h)
    b2: torch.Tensor  # (E, d)
    Wr: torch.Tensor | None  # (E, d), None for a dense FFN and the K-Means router
    br: torch.Tensor | None  # (E,)
    routing: str
    top_k: int
    temperature: float
    router: str = Router.LEARNED.value
    bias: torch.Tensor | None = None  # (E,) selection biases (loss-free, K-Means)
    centroids: torch.Tensor | None = None  # (E, d) the K-Means router's centroids

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores s(x): ``(N, d) -> (N, E)`` (logits; cosines to the centroids for K-Means)."""
        return cosine_scores(x, self.centroids) if self.centroids is not None else x @ self.Wr.T + self.br

    @property
    def router_vectors(self) -> torch.Tensor | None:
        """The router's direction per expert, ``(E, d)``: the rows of Wr, or the centroids."""
        return self.centroids if self.centroids is not None else self.Wr

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): ``(N, d) -> (N, E)``; all ones for a dense FFN (E = 1)."""
        if self.router_vectors is None:
            return torch.ones(x.shape[0], 1, dtype=x.dtype)
        return route(self.scores(x), self.routing, top_k=self.top_k, temperature=self.temperature, bias=self.bias)


class MLPMoE(nn.Module):
    """E two-layer GELU experts d -> h -> d and a router (B.1), for S seeds.

    ``routing="dense"`` with ``n_experts=1`` is the dense FFN baseline (no router). Parameters
    are initialised as ``nn.Linear`` does (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), each seed from its
    own generator, so a seed's model does not depend on which other seeds share the stack.

    ``router`` (``moegeo.config.Router``) picks the router module of ``moegeo.routers``: the
    learned linear router, or (Top-k only) one that balances the load: ``aux_loss`` (a loss the
    training loop adds, ``balance_loss``), ``loss_free`` (selection biases) or ``kmeans`` (no
    router parameters: EMA centroids and selection biases). Their state updates happen in a
    forward pass only in training mode with gradients enabled, so evaluation passes
    (``torch.no_grad``) never change the router.
    """

    def __init__(
        self,
        *,
        n_experts: int = 8,
        d_model: int = 64,
        d_hidden: int = 128,
        routing: str = "topk",
        top_k: int = 2,
        temperature: float = 1.0,
        seeds=(0,),
        stream: str = "init",
        dtype=torch.float32,
        router: str = Router.LEARNED.value,
    ):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        router = Router(router)
        if router is not Router.LEARNED and routing != "topk":
            raise ValueError(
                f"router {router.value!r} balances a Top-k selection; routing must be 'topk', got {routing!r}"
            )
        if routing == "dense" and n_experts != 1:
            raise ValueError(f"a dense FFN has one expert, got n_experts = {n_experts}")
        if routing != "dense":
            route(torch.zeros(1, n_experts), routing, top_k=top_k)  # validates k against E
        temperature = check_positive_number("temperature", temperature)
        self.routing, self.top_k, self.temperature = routing, top_k, temperature
        self.seeds = tuple(seeds)
        E, d, h = n_experts, d_model, d_hidden
        shapes = {"W1": ((E, h, d), d), "b1": ((E, h), d), "W2": ((E, d, h), h), "b2": ((E, d), h)}
        cls = None if routing == "dense" else ROUTERS[router]
        if cls is not None:
            shapes.update(cls.SHAPES(E, d))
        init = {name: [] for name in shapes}
        for seed in seeds:
            gen = seed_generator(seed, stream)
            for name, (shape, fan_in) in shapes.items():
                bound = 1 / math.sqrt(fan_in)
                init[name].append((torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * bound)
        stacked = {name: torch.stack(tensors) for name, tensors in init.items()}
        for name in ("W1", "b1", "W2", "b2"):
            setattr(self, name, nn.Parameter(stacked.pop(name)))
        if cls is KMeansRouter:
            self.router = cls(stacked, seeds, stream, n_experts=E, d_model=d, dtype=dtype)
        else:
            self.router = None if cls is None else cls(stacked, seeds, stream)
        self.balance_loss = torch.zeros(len(seeds), dtype=dtype)

    @property
    def n_seeds(self) -> int:
        return self.W1.shape[0]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights ``(S, N, d) -> (S, N, E)``."""
        if self.routing == "dense":
            return x.new_ones(*x.shape[:2], 1)
        return route(
            self.scores(x),
            self.routing,
            top_k=self.top_k,
            temperature=self.temperature,
            bias=self.router.selection_bias(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f_MoE(x) = sum_e g_e(x) f_e(x) (§2.1): ``(S, N, d) -> (S, N, d)``; ``(N, d)`` if S = 1.

        Top-k routing computes each expert only on the tokens routed to it (``dispatch``);
        soft layers compute every expert on every token (``mix``); a dense FFN has no gate.
        """
        single = x.dim() == 2
        if single:
            if self.n_seeds != 1:
                raise ValueError(
                    f"x of shape {tuple(x.shape)} needs a seed dimension: the model holds {self.n_seeds} seeds"
                )
            x = x[None]
        self._check_x(x)
        if self.routing == "topk":
            scores = self.scores(x)
            w, idx = topk_route(scores, self.top_k, temperature=self.temperature, bias=self.router.selection_bias())
            out = self.dispatch(x, w, idx)
            if self.training and torch.is_grad_enabled():
                loss = self.router.update(x, scores, idx, self.top_k, self.temperature)
                if loss is not None:
                    self.balance_loss = loss
        elif self.routing == "soft":
            out = self.mix(x, self.gates(x))
        else:
            hidden = gelu(torch.baddbmm(self.b1[:, 0, None], x, self.W1[:, 0].transpose(1, 2)))
            out = torch.baddbmm(self.b2[:, 0, None], hidden, self.W2[:, 0].transpose(1, 2))
        return out[0] if single else out

    def _check_x(self, x: torch.Tensor) -> None:
        """``x`` must be ``(S, N, d)`` for this layer's S seeds and input width d, and finite
        (``moegeo.validate.NonFiniteError`` naming the seed indices that are not)."""
        if x.dim() != 3 or x.shape[0] != self.n_seeds or x.shape[-1] != self.W1.shape[-1]:
            raise ValueError(f"x must have shape (S={self.n_seeds}, N, d={self.W1.shape[-1]}), got {tuple(x.shape)}")
        check_finite_rows("x", x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores s(x), ``(S, N, d) -> (S, N, E)``: the router's (logits Wr x + br, or cosines
        to the centroids of the K-Means router)."""
        return self.router.scores(x)

    def mix(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """sum_e g_e f_e(x) with every expert computed on every token: ``g: (S, N, E)``.

        The gate multiplies the hidden layer so the sum over experts is one matrix product
        over the joint (expert, hidden) axis. For Top-k this is the dense-compute reference
        that ``dispatch`` must equal.
        """
        a = gelu(torch.einsum("snd,sehd->sneh", x, self.W1) + self.b1[:, None]) * g[..., None]
        return torch.einsum("sneh,sedh->snd", a, self.W2) + torch.einsum("sne,sed->snd", g, self.b2)

    def dispatch(self, x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """sum over the k selected experts of w_j f_{idx_j}(x), computing each expert only on its
        routed tokens: ``w, idx: (S, N, k)``.

        Tokens are sorted by (seed, expert) group and packed into blocks of ``rows`` rows
        (``block_rows``), each block holding tokens of one group, so the experts run as two
        batched matrix products over the blocks. With one block per group (rows = the busiest
        group's count) the weights are used in place; with smaller blocks each block takes a
        copy of its group's weights. Padding rows read a zero row and are never read back, so
        they get no gradient; the result equals ``mix`` up to the order of floating-point sums
        (tested at float64).
        """
        self._check_x(x)
        S, N, d = x.shape
        E, k = self.W1.shape[1], idx.shape[-1]
        if w.shape != (S, N, k) or idx.shape != (S, N, k):
            raise ValueError(
                f"dispatch needs w and idx of shape (S, N, k) = ({S}, {N}, k), got {tuple(w.shape)}, {tuple(idx.shape)}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= E):  # would select another seed's expert
            raise ValueError(f"expert indices must lie in [0, {E}), got [{int(idx.min())}, {int(idx.max())}]")
        G = S * E
        group = (idx + E * torch.arange(S)[:, None, None]).reshape(-1)  # of each (token, slot), token-major
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=G)
        rows = block_rows(counts)
        blocks = (counts + rows - 1) // rows  # per group
        sorted_group = group[order]
        rank = torch.arange(len(group)) - (torch.cumsum(counts, 0) - counts)[sorted_group]  # within its group
        packed_row = torch.empty_like(order).index_copy_(  # of each (token, slot)
            0, order, (torch.cumsum(blocks, 0) - blocks)[sorted_group] * rows + rank
        )
        block_group = torch.repeat_interleave(torch.arange(G), blocks)
        n_blocks = len(block_group)
        source = torch.full((n_blocks * rows,), S * N).index_copy_(
            0, packed_row, torch.arange(S * N).repeat_interleave(k)
        )
        packed = torch.cat([x.reshape(S * N, d), x.new_zeros(1, d)]).index_select(0, source).view(n_blocks, rows, d)
        W1t, b1, W2t, b2 = (
            self.W1.reshape(G, -1, d).transpose(1, 2),
            self.b1.reshape(G, 1, -1),
            self.W2.reshape(G, d, -1).transpose(1, 2),
            self.b2.reshape(G, 1, d),
        )
        if not bool((blocks == 1).all()):  # not one block per group: each block takes its group's weights
            W1t, b1, W2t, b2 = (t.index_select(0, block_group) for t in (W1t, b1, W2t, b2))
        hidden = gelu(torch.baddbmm(b1, packed, W1t))
        y = torch.baddbmm(b2, hidden, W2t).reshape(-1, d).index_select(0, packed_row)
        return (y.view(S * N, k, d) * w.reshape(S * N, k, 1)).sum(1).view(S, N, d)

    def params(self, seed_index: int = 0, dtype=torch.float64) -> ExpertParams:
        """Detached tensors of one seed, as the probes take them."""
        t = {n: getattr(self, n)[seed_index].detach().to(dtype) for n in ("W1", "b1", "W2", "b2")}
        r = dict(Wr=None, br=None) if self.router is None else self.router.probe_tensors(seed_index, dtype)
        kind = Router.LEARNED if self.router is None else self.router.kind
        return ExpertParams(
            **t, **r, routing=self.routing, top_k=self.top_k, temperature=self.temperature, router=kind.value
        )


@dataclass(frozen=True)
class Trace:
    """A forward pass as the probes read it, for every seed at once: the model's ``output``, and
    per MoE layer l ``moe_inputs[l]`` (the hidden states entering the layer, "the hidden states
    entering the MoE layer", ``(S, N, d)``) and ``block_inputs[l]`` (the residual stream entering
    its block, before the block's LayerNorm; the same tensor as ``moe_inputs[l]`` where the layer
    is not in a normalised block)."""

    output: torch.Tensor
    moe_inputs: list[torch.Tensor]
    block_inputs: list[torch.Tensor]


class MoENet(nn.Module):
    """The model of one arm: ``layers`` (MLPMoE) applied in turn, each optionally inside a
    pre-LayerNorm residual block ``x + layer(LN(x))`` with its own LayerNorm (§4 failure mode
    2, "residual connections, or shared normalization layers"). LayerNorm affine parameters
    start as ``nn.LayerNorm``'s (weight 1, bias 0) and carry the seed dimension.
    """

    def __init__(self, layers: list[MLPMoE], residual: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.residual = residual
        if residual:
            S, d = layers[0].n_seeds, layers[0].W1.shape[-1]
            self.ln_weight = nn.Parameter(torch.ones(len(layers), S, d, dtype=layers[0].W1.dtype))
            self.ln_bias = nn.Parameter(torch.zeros(len(layers), S, d, dtype=layers[0].W1.dtype))

    @property
    def n_seeds(self) -> int:
        return self.layers[0].n_seeds

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seed of each index of the leading (seed) dimension."""
        return self.layers[0].seeds

    def trace(self, x: torch.Tensor) -> Trace:
        """The forward pass with every MoE layer's input and block input (``Trace``), ``(S, N, d)`` each."""
        blocks, inputs = [], []
        for l, layer in enumerate(self.layers):
            h = self.layer_input(l, x)
            blocks.append(x)
            inputs.append(h)
            y = layer(h)
            x = x + y if self.residual else y
        return Trace(x, inputs, blocks)

    def balance_loss(self) -> torch.Tensor:
        """The layers' load-balancing losses of the last training forward, summed: ``(S,)``."""
        return sum(layer.balance_loss for layer in self.layers)

    def layer_input(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """The hidden state entering MoE layer ``l`` from its block input: LN(x) in a residual block."""
        return layer_norm(x, self.ln_weight[l][:, None], self.ln_bias[l][:, None]) if self.residual else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x).output

    def params(self, seed_index: int = 0, layer: int = 0, dtype=torch.float64) -> ExpertParams:
        """Detached tensors of one seed's MoE layer ``layer``, as the probes take them."""
        return self.layers[layer].params(seed_index, dtype)


def ffn_layer(
    arm: Arm,
    *,
    n_experts: int,
    d_model: int,
    d_hidden: int,
    top_k: int,
    temperature: float,
    seeds=(0,),
    stream: str = "init",
) -> MLPMoE:
    """The feed-forward layer of one arm for all ``seeds``: E experts and a router (MoE arms),
    or one FFN of width d_hidden (``dense``) or E * d_hidden (``dense_matched``)."""
    if arm.is_moe:
        return MLPMoE(
            n_experts=n_experts,
            d_model=d_model,
            d_hidden=d_hidden,
            routing=arm.routing,
            top_k=top_k,
            temperature=temperature,
            seeds=seeds,
            stream=stream,
            router=arm.router.value,
        )
    width = d_hidden * (n_experts if arm is Arm.DENSE_MATCHED else 1)
    return MLPMoE(n_experts=1, d_model=d_model, d_hidden=width, routing="dense", seeds=seeds, stream=stream)


def build_arm(
    arm: Arm, *, n_experts: int, d_model: int, d_hidden: int, top_k: int, temperature: float, seeds=(0,)
) -> MoENet:
    """The model of one arm for all ``seeds``. Each layer initialises from its own stream
    (``init/<arm>`` for the first layer), so a seed's model is independent of the others."""
    layers = [
        ffn_layer(
            arm,
            n_experts=n_experts,
            d_model=d_model,
            d_hidden=d_hidden,
            top_k=top_k,
            temperature=temperature,
            seeds=seeds,
            stream=f"init/{arm.value}" + (f"/layer{l}" if l else ""),
        )
        for l in range(arm.n_layers)
    ]
    return MoENet(layers, residual=arm.residual)


def expert_params(module: nn.Module, seed_index: int = 0) -> ExpertParams:
    """The probe tensors of an MoE module (thin helper over ``MLPMoE.params``).

    Any other module raises ``TypeError``: moegeo cannot guess where an arbitrary model keeps
    its experts and router, so pass their tensors to ``moegeo.probes`` directly (README).
    """
    if not isinstance(module, MLPMoE):
        raise TypeError(
            f"{type(module).__name__} is not an MoE layer moegeo knows (MLPMoE); pass its stacked "
            "expert weights W1, b1, W2, inputs x and routing weights g to moegeo.probes directly"
        )
    if not 0 <= seed_index < module.n_seeds:
        raise IndexError(f"seed_index {seed_index} out of range: the module holds {module.n_seeds} seeds")
    return module.params(seed_index)
