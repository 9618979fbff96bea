"""Routing: router scores to routing weights g(x) (A.1, B.3), and the four routers of the routers
paper (arXiv 2605.12476) as small modules with a leading seed dimension."""

from __future__ import annotations

import torch
from torch import nn

from .config import AUX_COEF, BIAS_RATE, CENTROID_EMA, Router
from .nn import seed_generator
from .validate import check_positive_number


def route(
    logits: torch.Tensor, routing: str, *, top_k: int = 2, temperature: float = 1.0, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """Routing weights g(x) on the simplex from router scores s(x) (A.1, B.3).

    "topk": softmax, keep the top k, renormalise (= softmax over the k largest scores; with a
    selection ``bias``, over the k largest of s + bias, weighted by s alone); "soft": softmax
    over all E. ``logits: (*, E) -> (*, E)``; ``temperature`` a finite number > 0 (``ValueError``
    otherwise: the weights would be NaN).
    """
    check_positive_number("temperature", temperature)
    if routing == "soft":
        return torch.softmax(logits / temperature, -1)
    if routing == "topk":
        w, idx = topk_route(logits, top_k, temperature=temperature, bias=bias)
        return torch.zeros_like(logits).scatter(-1, idx, w)
    raise ValueError(f"routing must be 'topk' or 'soft', got {routing!r}")


def topk_route(
    logits: torch.Tensor, top_k: int, *, temperature: float = 1.0, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k routing as (weights, expert indices), each ``(*, k)``: the softmax over the k
    largest scores (B.3: softmax, keep the top k, renormalise). A ``bias`` (broadcast to the
    scores) changes which k are selected but not their weights (DeepSeek-V3's loss-free
    balancing: "the bias term is only used for routing"). ``temperature``: a finite number > 0."""
    check_positive_number("temperature", temperature)
    if not 1 <= top_k <= logits.shape[-1]:
        raise ValueError(f"top_k must satisfy 1 <= k <= E = {logits.shape[-1]}, got k = {top_k}")
    if bias is None:
        vals, idx = (logits / temperature).topk(top_k, dim=-1)
        return torch.softmax(vals, -1), idx
    idx = (logits + bias).topk(top_k, dim=-1).indices
    return torch.softmax(logits.gather(-1, idx) / temperature, -1), idx


def cosine_scores(x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """The K-Means router's scores, cos(x, c_e): ``x (*, N, d)``, ``centroids (*, E, d) -> (*, N, E)``."""
    return torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(centroids, dim=-1).transpose(-1, -2)


# --------------------------------------------------------------------------- the routers
def _routed_load(scores: torch.Tensor, idx: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0/1 routing ``(S, N, E)`` of a Top-k selection ``idx: (S, N, k)`` and each expert's
    fraction f_e of the N k token slots, ``(S, E)`` (sums to 1 per seed)."""
    S, N, E = scores.shape
    routed = torch.zeros(S, N, E, dtype=scores.dtype).scatter(-1, idx, 1.0)
    return routed, routed.sum(1) / (N * top_k)


class LearnedRouter(nn.Module):
    """A one-linear-layer router (B.3), s(x) = Wr x + br, for S seeds: ``Wr: (S, E, d)``,
    ``br: (S, E)``, no load balancing (the routers paper's "learned" router; the ``topk`` and
    ``soft`` arms). Its parameters are drawn by ``MLPMoE`` from the experts' per-seed generator,
    right after the expert weights (``SHAPES``: shape and fan-in of each)."""

    kind = Router.LEARNED
    #: name -> (shape without the seed dimension, fan-in), given E and d
    SHAPES = staticmethod(lambda E, d: {"Wr": ((E, d), d), "br": ((E,), d)})

    def __init__(self, tensors: dict[str, torch.Tensor], seeds, stream: str):
        super().__init__()
        self.Wr, self.br = nn.Parameter(tensors["Wr"]), nn.Parameter(tensors["br"])

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores ``(S, N, d) -> (S, N, E)``."""
        return torch.einsum("snd,sed->sne", x, self.Wr) + self.br[:, None]

    def selection_bias(self) -> torch.Tensor | None:
        """A per-expert bias added to the scores for choosing the top k only, ``(S, 1, E)``, or None."""
        return None

    def update(
        self, x: torch.Tensor, scores: torch.Tensor, idx: torch.Tensor, top_k: int, temperature: float
    ) -> torch.Tensor | None:
        """The router's load balancing after one training forward of a Top-k layer: its balancing
        loss ``(S,)`` (None for a router without one); state updates happen here, without gradients."""
        return None

    def probe_tensors(self, i: int, dtype: torch.dtype) -> dict:
        """Seed ``i``'s router tensors as ``ExpertParams`` takes them (detached, in ``dtype``)."""
        return dict(Wr=self.Wr[i].detach().to(dtype), br=self.br[i].detach().to(dtype))


class AuxLossRouter(LearnedRouter):
    """The learned router plus the Switch Transformer load-balancing loss AUX_COEF * E * sum_e f_e
    P_e, f_e the fraction of the N k token slots routed to e and P_e the mean softmax probability
    of e over all E (the training loop adds it to the loss)."""

    kind = Router.AUX_LOSS

    def update(self, x, scores, idx, top_k, temperature):
        _, load = _routed_load(scores, idx, top_k)
        P = torch.softmax(scores / temperature, -1).mean(1)
        return AUX_COEF * scores.shape[-1] * (load * P).sum(-1)


class _BiasBalanced:
    """DeepSeek-V3's loss-free balancing, shared by two routers: a selection bias b_e per expert (a
    buffer, no gradient), b_e += BIAS_RATE * sign(1/E - f_e) after each training forward."""

    def selection_bias(self):
        return self.bias[:, None]

    def _update_bias(self, load: torch.Tensor) -> None:
        with torch.no_grad():
            self.bias = self.bias + BIAS_RATE * torch.sign(1 / load.shape[-1] - load)


class LossFreeRouter(_BiasBalanced, LearnedRouter):
    """The learned router with DeepSeek-V3's loss-free balancing biases (``_BiasBalanced``)."""

    kind = Router.LOSS_FREE

    def __init__(self, tensors, seeds, stream):
        super().__init__(tensors, seeds, stream)
        self.register_buffer("bias", torch.zeros(tensors["br"].shape, dtype=tensors["br"].dtype))

    def update(self, x, scores, idx, top_k, temperature):
        self._update_bias(_routed_load(scores, idx, top_k)[1])
        return None

    def probe_tensors(self, i, dtype):
        return super().probe_tensors(i, dtype) | dict(bias=self.bias[i].detach().to(dtype))


class KMeansRouter(_BiasBalanced, nn.Module):
    """The routers paper's parameter-free online K-Means router: scores cos(x, c_e) to per-expert
    centroids c_e (buffers, initialised as independent random unit vectors from the seed's
    ``<stream>/centroids`` generator), the loss-free selection biases, and after each training
    forward every centroid that received tokens moves to (1 - CENTROID_EMA) c_e + CENTROID_EMA *
    (mean of its routed inputs), with no gradient."""

    kind = Router.KMEANS
    SHAPES = staticmethod(lambda E, d: {})

    def __init__(self, tensors, seeds, stream, n_experts: int, d_model: int, dtype: torch.dtype):
        super().__init__()
        c = torch.stack(
            [
                torch.randn(n_experts, d_model, generator=seed_generator(s, f"{stream}/centroids"), dtype=dtype)
                for s in seeds
            ]
        )
        self.register_buffer("centroids", torch.nn.functional.normalize(c, dim=-1))
        self.register_buffer("bias", torch.zeros(len(seeds), n_experts, dtype=dtype))

    def scores(self, x):
        return cosine_scores(x, self.centroids)

    def update(self, x, scores, idx, top_k, temperature):
        routed, load = _routed_load(scores, idx, top_k)
        self._update_bias(load)
        with torch.no_grad():
            count = routed.sum(1)  # (S, E)
            mean = torch.einsum("sne,snd->sed", routed, x.detach()) / count.clamp_min(1)[..., None]
            step = CENTROID_EMA * (count > 0).to(x.dtype)[..., None]
            self.centroids = (1 - step) * self.centroids + step * mean
        return None

    def probe_tensors(self, i, dtype):
        return dict(
            Wr=None, br=None, bias=self.bias[i].detach().to(dtype), centroids=self.centroids[i].detach().to(dtype)
        )


ROUTERS = {cls.kind: cls for cls in (LearnedRouter, AuxLossRouter, LossFreeRouter, KMeansRouter)}
