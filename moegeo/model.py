"""The controlled MLP-MoE of Appendix B, with a leading seed dimension so that a whole seed
sweep trains as one set of batched matrix products.

Parameter shapes (S seeds, E experts): ``W1: (S, E, h, d)``, ``b1: (S, E, h)``,
``W2: (S, E, d, h)``, ``b2: (S, E, d)``, router ``Wr: (S, E, d)``, ``br: (S, E)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .config import AUX_COEF, BIAS_RATE, CENTROID_EMA, Arm, Router
from .probes import gelu, layer_norm

ROUTINGS = ("topk", "soft", "dense")


def seed_generator(seed: int, stream: str) -> torch.Generator:
    """A torch generator for one seed and one named stream ("data", "init/topk", ...).

    Streams are independent of each other and of which other seeds run alongside.
    """
    tag = int.from_bytes(stream.encode(), "little") % 2**63
    state = np.random.SeedSequence([int(seed), tag]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] % 2**63))


def make_data(seed: int, n_samples: int = 512, d_model: int = 64, dtype=torch.float32):
    """Synthetic batch of B.2: x ~ N(0, I) and independent targets y ~ N(0, I), ``(N, d)`` each."""
    g = seed_generator(seed, "data")
    x = torch.randn(n_samples, d_model, generator=g, dtype=dtype)
    y = torch.randn(n_samples, d_model, generator=g, dtype=dtype)
    return x, y


def route(logits: torch.Tensor, routing: str, top_k: int = 2, temperature: float = 1.0,
          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Routing weights g(x) on the simplex from router scores s(x) (A.1, B.3).

    "topk": softmax, keep the top k, renormalise (= softmax over the k largest scores; with a
    selection ``bias``, over the k largest of s + bias, weighted by s alone); "soft": softmax
    over all E. ``logits: (*, E) -> (*, E)``.
    """
    if routing == "soft":
        return torch.softmax(logits / temperature, -1)
    if routing == "topk":
        w, idx = topk_route(logits, top_k, temperature, bias)
        return torch.zeros_like(logits).scatter(-1, idx, w)
    raise ValueError(f"routing must be 'topk' or 'soft', got {routing!r}")


def topk_route(logits: torch.Tensor, top_k: int, temperature: float = 1.0,
               bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing as (weights, expert indices), each ``(*, k)``: the softmax over the k
    largest scores (B.3: softmax, keep the top k, renormalise). A ``bias`` (broadcast to the
    scores) changes which k are selected but not their weights (DeepSeek-V3's loss-free
    balancing: "the bias term is only used for routing")."""
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must satisfy 1 <= k <= E = {logits.shape[-1]}, got k = {top_k}")
    if bias is None:
        vals, idx = (logits / temperature).topk(top_k, dim=-1)
        return torch.softmax(vals, -1), idx
    idx = (logits + bias).topk(top_k, dim=-1).indices
    return torch.softmax(logits.gather(-1, idx) / temperature, -1), idx


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


def cosine_scores(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The K-Means router's scores, cos(x, c_e): ``x (*, N, d)``, ``centroids (*, E, d) -> (*, N, E)``."""
    return torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).transpose(-1, -2)


def adam(params, lr: float) -> torch.optim.Adam:
    """The training runs' optimizer: Adam with torch's defaults (betas 0.9, 0.999; eps 1e-8) as
    one fused kernel per parameter (``fused=True``: the same update as the per-operation loop up
    to float rounding, elementwise, hence deterministic and per seed; measured 3x faster per step
    on the language model)."""
    return torch.optim.Adam(params, lr=lr, fused=True)


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
        return route(self.scores(x), self.routing, self.top_k, self.temperature, self.bias)


class MLPMoE(nn.Module):
    """E two-layer GELU experts d -> h -> d and a one-linear-layer router (B.1), for S seeds.

    ``routing="dense"`` with ``n_experts=1`` is the dense FFN baseline. Parameters are
    initialised as ``nn.Linear`` does (U(-1/sqrt(fan_in), 1/sqrt(fan_in))), each seed from its
    own generator, so a seed's model does not depend on which other seeds share the stack.

    ``router`` (Top-k only; ``moegeo.config.Router``) adds load balancing:

    * ``aux_loss``: each training forward sets ``balance_loss`` (S,) to the Switch Transformer
      loss AUX_COEF * E * sum_e f_e P_e, with f_e the fraction of the N k token slots routed to
      e and P_e the mean softmax probability of e over all E (the training loops add it);
    * ``loss_free``: a selection bias b_e per expert (a buffer, no gradient) is added to the
      scores for choosing the top k only; after each training forward b_e += BIAS_RATE *
      sign(1/E - f_e);
    * ``kmeans``: no router parameters. Scores are cos(x, c_e) to per-expert centroids c_e
      (buffers, initialised as independent random unit vectors from the seed's generator), with
      the same selection biases; after each training forward every centroid that received
      tokens moves to (1 - CENTROID_EMA) c_e + CENTROID_EMA * (mean of its routed inputs), with
      no gradient.

    The state updates happen in a forward pass only in training mode with gradients enabled,
    so evaluation passes (``torch.no_grad``) never change the router.
    """

    def __init__(self, n_experts=8, d_model=64, d_hidden=128, routing="topk", top_k=2, temperature=1.0,
                 seeds=(0,), stream="init", dtype=torch.float32, router: str = Router.LEARNED.value):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        router = Router(router).value
        if router != Router.LEARNED.value and routing != "topk":
            raise ValueError(f"router {router!r} balances a Top-k selection; routing must be 'topk', got {routing!r}")
        if routing == "dense" and n_experts != 1:
            raise ValueError(f"a dense FFN has one expert, got n_experts = {n_experts}")
        if routing != "dense":
            route(torch.zeros(1, n_experts), routing, top_k)  # validates k against E
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.routing, self.top_k, self.temperature, self.router = routing, top_k, temperature, router
        S, E, d, h = len(seeds), n_experts, d_model, d_hidden
        shapes = {"W1": ((E, h, d), d), "b1": ((E, h), d), "W2": ((E, d, h), h), "b2": ((E, d), h)}
        if routing != "dense" and router != Router.KMEANS.value:
            shapes.update(Wr=((E, d), d), br=((E,), d))
        init = {name: [] for name in shapes}
        for seed in seeds:
            gen = seed_generator(seed, stream)
            for name, (shape, fan_in) in shapes.items():
                bound = 1 / math.sqrt(fan_in)
                init[name].append((torch.rand(shape, generator=gen, dtype=dtype) * 2 - 1) * bound)
        for name, tensors in init.items():
            setattr(self, name, nn.Parameter(torch.stack(tensors)))
        if "Wr" not in shapes:
            self.Wr = self.br = None
        if router == Router.KMEANS.value:
            c = torch.stack([torch.randn(E, d, generator=seed_generator(s, f"{stream}/centroids"), dtype=dtype) for s in seeds])
            self.register_buffer("centroids", torch.nn.functional.normalize(c, dim=-1))
        else:
            self.centroids = None
        if router in (Router.LOSS_FREE.value, Router.KMEANS.value):
            self.register_buffer("bias", torch.zeros(S, E, dtype=dtype))
        else:
            self.bias = None
        self.balance_loss = torch.zeros(S, dtype=dtype)

    @property
    def n_seeds(self) -> int:
        return self.W1.shape[0]

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights ``(S, N, d) -> (S, N, E)``."""
        if self.routing == "dense":
            return x.new_ones(*x.shape[:2], 1)
        return route(self.logits(x), self.routing, self.top_k, self.temperature, self._selection_bias())

    def _selection_bias(self) -> torch.Tensor | None:
        return None if self.bias is None else self.bias[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f_MoE(x) = sum_e g_e(x) f_e(x) (§2.1): ``(S, N, d) -> (S, N, d)``; ``(N, d)`` if S = 1.

        Top-k routing computes each expert only on the tokens routed to it (``dispatch``);
        soft layers compute every expert on every token (``mix``); a dense FFN has no gate.
        """
        single = x.dim() == 2
        if single:
            if self.n_seeds != 1:
                raise ValueError(f"x of shape {tuple(x.shape)} needs a seed dimension: the model holds {self.n_seeds} seeds")
            x = x[None]
        self._check_x(x)
        if self.routing == "topk":
            scores = self.logits(x)
            w, idx = topk_route(scores, self.top_k, self.temperature, self._selection_bias())
            out = self.dispatch(x, w, idx)
            if self.training and torch.is_grad_enabled():
                self._balance(x, scores, idx)
        elif self.routing == "soft":
            out = self.mix(x, self.gates(x))
        else:
            hidden = gelu(torch.baddbmm(self.b1[:, 0, None], x, self.W1[:, 0].transpose(1, 2)))
            out = torch.baddbmm(self.b2[:, 0, None], hidden, self.W2[:, 0].transpose(1, 2))
        return out[0] if single else out

    def _check_x(self, x: torch.Tensor) -> None:
        """``x`` must be ``(S, N, d)`` for this layer's S seeds and input width d."""
        if x.dim() != 3 or x.shape[0] != self.n_seeds or x.shape[-1] != self.W1.shape[-1]:
            raise ValueError(f"x must have shape (S={self.n_seeds}, N, d={self.W1.shape[-1]}), got {tuple(x.shape)}")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores s(x): logits Wr x + br, or cosines to the centroids for the K-Means
        router: ``(S, N, d) -> (S, N, E)``."""
        if self.centroids is not None:
            return cosine_scores(x, self.centroids)
        return torch.einsum("snd,sed->sne", x, self.Wr) + self.br[:, None]

    def _balance(self, x: torch.Tensor, scores: torch.Tensor, idx: torch.Tensor) -> None:
        """The router's load balancing after one training forward (class docstring)."""
        S, N, E = scores.shape
        routed = torch.zeros(S, N, E, dtype=x.dtype).scatter(-1, idx, 1.0)  # (S, N, E) 0/1
        load = routed.sum(1) / (N * self.top_k)  # f_e, sums to 1 per seed
        if self.router == Router.AUX_LOSS.value:
            P = torch.softmax(scores / self.temperature, -1).mean(1)
            self.balance_loss = AUX_COEF * E * (load * P).sum(-1)
        if self.bias is not None:
            with torch.no_grad():
                self.bias = self.bias + BIAS_RATE * torch.sign(1 / E - load)
        if self.centroids is not None:
            with torch.no_grad():
                count = routed.sum(1)  # (S, E)
                mean = torch.einsum("sne,snd->sed", routed, x.detach()) / count.clamp_min(1)[..., None]
                step = CENTROID_EMA * (count > 0).to(x.dtype)[..., None]
                self.centroids = (1 - step) * self.centroids + step * mean

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
            raise ValueError(f"dispatch needs w and idx of shape (S, N, k) = ({S}, {N}, k), "
                             f"got {tuple(w.shape)}, {tuple(idx.shape)}")
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
            0, order, (torch.cumsum(blocks, 0) - blocks)[sorted_group] * rows + rank)
        block_group = torch.repeat_interleave(torch.arange(G), blocks)
        n_blocks = len(block_group)
        source = torch.full((n_blocks * rows,), S * N).index_copy_(0, packed_row, torch.arange(S * N).repeat_interleave(k))
        packed = torch.cat([x.reshape(S * N, d), x.new_zeros(1, d)]).index_select(0, source).view(n_blocks, rows, d)
        W1t, b1, W2t, b2 = (self.W1.reshape(G, -1, d).transpose(1, 2), self.b1.reshape(G, 1, -1),
                            self.W2.reshape(G, d, -1).transpose(1, 2), self.b2.reshape(G, 1, d))
        if not bool((blocks == 1).all()):  # not one block per group: each block takes its group's weights
            W1t, b1, W2t, b2 = (t.index_select(0, block_group) for t in (W1t, b1, W2t, b2))
        hidden = gelu(torch.baddbmm(b1, packed, W1t))
        y = torch.baddbmm(b2, hidden, W2t).reshape(-1, d).index_select(0, packed_row)
        return (y.view(S * N, k, d) * w.reshape(S * N, k, 1)).sum(1).view(S, N, d)

    def params(self, seed_index: int = 0, dtype=torch.float64) -> ExpertParams:
        """Detached tensors of one seed, as the probes take them."""
        t = {n: (None if getattr(self, n) is None else getattr(self, n)[seed_index].detach().to(dtype))
             for n in ("W1", "b1", "W2", "b2", "Wr", "br", "bias", "centroids")}
        return ExpertParams(**t, routing=self.routing, top_k=self.top_k, temperature=self.temperature, router=self.router)


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

    def trace(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every layer's block input (the residual stream) and, last, the output: ``(S, N, d)``
        each. The MoE layer itself sees ``layer_input(l, block input)``."""
        out = [x]
        for l, layer in enumerate(self.layers):
            y = layer(self.layer_input(l, x))
            x = x + y if self.residual else y
            out.append(x)
        return out

    def balance_loss(self) -> torch.Tensor:
        """The layers' load-balancing losses of the last training forward, summed: ``(S,)``."""
        return sum(layer.balance_loss for layer in self.layers)

    def layer_input(self, l: int, x: torch.Tensor) -> torch.Tensor:
        """The hidden state entering MoE layer ``l`` from its block input: LN(x) in a residual block."""
        return layer_norm(x, self.ln_weight[l][:, None], self.ln_bias[l][:, None]) if self.residual else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x)[-1]

    def params(self, seed_index: int = 0, layer: int = 0, dtype=torch.float64) -> ExpertParams:
        """Detached tensors of one seed's MoE layer ``layer``, as the probes take them."""
        return self.layers[layer].params(seed_index, dtype)


def ffn_layer(arm: Arm, n_experts: int, d_model: int, d_hidden: int, top_k: int, temperature: float,
              seeds=(0,), stream: str = "init") -> MLPMoE:
    """The feed-forward layer of one arm for all ``seeds``: E experts and a router (MoE arms),
    or one FFN of width d_hidden (``dense``) or E * d_hidden (``dense_matched``)."""
    if arm.is_moe:
        return MLPMoE(n_experts, d_model, d_hidden, arm.routing, top_k, temperature, seeds, stream, router=arm.router.value)
    width = d_hidden * (n_experts if arm is Arm.DENSE_MATCHED else 1)
    return MLPMoE(1, d_model, width, "dense", seeds=seeds, stream=stream)


def build_arm(arm: Arm, n_experts: int, d_model: int, d_hidden: int, top_k: int, temperature: float,
              seeds=(0,)) -> MoENet:
    """The model of one arm for all ``seeds``. Each layer initialises from its own stream
    (``init/<arm>`` for the first layer), so a seed's model is independent of the others."""
    layers = [ffn_layer(arm, n_experts, d_model, d_hidden, top_k, temperature, seeds,
                        f"init/{arm.value}" + (f"/layer{l}" if l else "")) for l in range(arm.n_layers)]
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
