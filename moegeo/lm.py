"""A small decoder-only Transformer language model whose feed-forward blocks are moegeo's MoE
layer, for S seeds at once (the language-model setting of the paper's later version: "a
3-layer transformer with WikiText").

Every parameter carries a leading seed dimension, as in ``moegeo.model``: one forward pass runs
all seeds, and the summed loss gives each seed its own gradient. Pre-LayerNorm blocks,
``x + attn(LN1 x)`` then ``x + FFN(LN2 x)``, causal multi-head self-attention, learned
positions, an unembedding tied to the token embedding (nanoGPT's layout). The FFN of every
layer is ``moegeo.model.MLPMoE`` with the arm's routing, so the probes read its experts exactly
as in the MLP setting; its input, the post-LayerNorm hidden state, is "the hidden state
entering the MoE layer".
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import Arm
from .model import MLPMoE, ffn_layer, seed_generator
from .probes import layer_norm


@dataclass(frozen=True)
class LMSize:
    """Sizes of the language model; each default's reason is beside it."""

    vocab_size: int = 2048  # the 2,047 most frequent words of the training split + <unk> (moegeo.wikitext)
    d_model: int = 64  # the MLP setting's d_model (B.1), so the probes compare like with like
    n_layers: int = 3  # the later version: "a 3-layer transformer"
    n_heads: int = 4  # head width 16: the smallest common head width at d_model 64
    context: int = 64  # enough for word-level WikiText to beat unigram; cost is quadratic in it
    n_experts: int = 8  # B.1 "E=8"
    d_hidden: int = 128  # B.1 expert width

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "context", "n_experts", "d_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must be divisible by n_heads = {self.n_heads}")


class TransformerLM(nn.Module):
    """The language model of one arm for all ``seeds``; ``forward(idx: (S, B, T)) -> logits
    (S, B, T, V)``. Initialisation follows nanoGPT (normal, std 0.02; LayerNorm weight 1, bias
    0), each seed from its own generator; the FFN layers initialise as ``MLPMoE``."""

    def __init__(self, arm: Arm, size: LMSize = LMSize(), top_k: int = 2, temperature: float = 1.0, seeds=(0,)):
        super().__init__()
        self.arm, self.size, self.seeds = arm, size, tuple(seeds)
        S, V, T, d, L = len(seeds), size.vocab_size, size.context, size.d_model, size.n_layers

        def normal(*shape, stream):
            return torch.stack([torch.randn(*shape, generator=seed_generator(s, stream)) * 0.02 for s in seeds])

        self.wte = nn.Parameter(normal(V, d, stream=f"lm/{arm.value}/wte"))
        self.wpe = nn.Parameter(normal(T, d, stream=f"lm/{arm.value}/wpe"))
        self.qkv = nn.Parameter(torch.stack([normal(3 * d, d, stream=f"lm/{arm.value}/qkv{l}") for l in range(L)]))
        self.proj = nn.Parameter(torch.stack([normal(d, d, stream=f"lm/{arm.value}/proj{l}") for l in range(L)]))
        self.ln_w = nn.Parameter(torch.ones(2 * L + 1, S, d))  # LN1, LN2 of each layer, then the final LN
        self.ln_b = nn.Parameter(torch.zeros(2 * L + 1, S, d))
        self.ffn = nn.ModuleList(ffn_layer(arm, size.n_experts, d, size.d_hidden, top_k, temperature, seeds,
                                           f"lm/{arm.value}/ffn{l}") for l in range(L))

    @property
    def n_seeds(self) -> int:
        return self.wte.shape[0]

    def _ln(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return layer_norm(x, self.ln_w[i][:, None, None], self.ln_b[i][:, None, None])

    def _attention(self, l: int, x: torch.Tensor) -> torch.Tensor:
        S, B, T, d = x.shape
        H = self.size.n_heads
        q, k, v = torch.einsum("sbtd,sed->sbte", x, self.qkv[l]).reshape(S * B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.einsum("sbte,sde->sbtd", y.transpose(1, 2).reshape(S, B, T, d), self.proj[l])

    def trace(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits ``(S, B, T, V)`` and every layer's FFN input (post-LN2), ``(S, B*T, d)`` each."""
        S, B, T = idx.shape
        if S != self.n_seeds or T > self.size.context:
            raise ValueError(f"idx must have shape (S={self.n_seeds}, B, T <= {self.size.context}), got {tuple(idx.shape)}")
        if idx.min() < 0 or idx.max() >= self.size.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.size.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]")
        x = torch.stack([self.wte[s][idx[s]] for s in range(S)]) + self.wpe[:, None, :T]
        ffn_inputs = []
        for l, ffn in enumerate(self.ffn):
            x = x + self._attention(l, self._ln(2 * l, x))
            h = self._ln(2 * l + 1, x).reshape(S, B * T, -1)
            ffn_inputs.append(h)
            x = x + ffn(h).reshape(S, B, T, -1)
        logits = torch.einsum("sbtd,svd->sbtv", self._ln(2 * len(self.ffn), x), self.wte)
        return logits, ffn_inputs

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.trace(idx)[0]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy per seed, ``(S,)``."""
        logits = self(idx)
        ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
        return ce.reshape(targets.shape[0], -1).mean(-1)


def perplexity(loss: torch.Tensor) -> torch.Tensor:
    """exp of a mean cross-entropy in nats."""
    return torch.exp(loss)


def train(model: TransformerLM, train_ids: torch.Tensor, steps: int, batch_size: int = 16, lr: float = 3e-3,
          progress: bool | None = None) -> list[float]:
    """Adam on the next-token loss for every seed at once; each seed draws its own batches
    (``moegeo.wikitext.batches``) from its own generator, so a seed's run does not depend on
    which seeds share the stack. Returns the mean training loss over seeds per step."""
    from tqdm.auto import tqdm

    from .wikitext import batches

    seeds = model.seeds
    gens = [seed_generator(s, "lm/data") for s in seeds]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = []
    for _ in tqdm(range(steps), desc=f"train lm {model.arm.value}", disable=None if progress is None else not progress,
                  leave=False):
        xs, ys = zip(*(batches(train_ids, model.size.context, batch_size, g) for g in gens))
        loss = model.loss(torch.stack(xs), torch.stack(ys))
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        history.append(float(loss.detach().mean()))
    return history


@torch.no_grad()
def heldout_loss(model: TransformerLM, heldout_ids: torch.Tensor, windows: int, chunk: int = 32) -> torch.Tensor:
    """Mean next-token cross-entropy per seed, ``(S,)``, over the first ``windows``
    non-overlapping held-out windows (``moegeo.wikitext.heldout_windows``)."""
    from .wikitext import heldout_windows

    x, y = heldout_windows(heldout_ids, model.size.context)
    x, y = x[:windows], y[:windows]
    S, total = model.n_seeds, torch.zeros(model.n_seeds)
    for i in range(0, len(x), chunk):
        xb, yb = x[i:i + chunk].expand(S, -1, -1), y[i:i + chunk].expand(S, -1, -1)
        total += model.loss(xb, yb) * len(xb[0])
    return total / len(x)
