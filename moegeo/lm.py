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

import torch
from torch import nn

from .config import Arm, LMConfig
from .model import Trace, ffn_layer
from .nn import LN_EPS, seed_generator


class TransformerLM(nn.Module):
    """The language model of one arm for all ``seeds`` (default ``cfg.seeds``), sized by ``cfg``;
    ``forward(idx: (S, B, T)) -> logits (S, B, T, V)``. Initialisation follows nanoGPT (normal,
    std 0.02; LayerNorm weight 1, bias 0), each seed from its own generator; the FFN layers
    initialise as ``MLPMoE``."""

    def __init__(self, arm: Arm, cfg: LMConfig = LMConfig(), *, seeds=None):
        super().__init__()
        seeds = cfg.seeds if seeds is None else tuple(seeds)
        arm = Arm(arm)
        self.arm, self.cfg, self.seeds = arm, cfg, seeds
        S, V, T, d, L = len(seeds), cfg.vocab_size, cfg.context, cfg.d_model, cfg.n_layers

        def normal(*shape, stream):
            return torch.stack([torch.randn(*shape, generator=seed_generator(s, stream)) * 0.02 for s in seeds])

        self.wte = nn.Parameter(normal(V, d, stream=f"lm/{arm.value}/wte"))
        self.wpe = nn.Parameter(normal(T, d, stream=f"lm/{arm.value}/wpe"))
        self.qkv = nn.Parameter(torch.stack([normal(3 * d, d, stream=f"lm/{arm.value}/qkv{l}") for l in range(L)]))
        self.proj = nn.Parameter(torch.stack([normal(d, d, stream=f"lm/{arm.value}/proj{l}") for l in range(L)]))
        self.ln_w = nn.Parameter(torch.ones(2 * L + 1, S, d))  # LN1, LN2 of each layer, then the final LN
        self.ln_b = nn.Parameter(torch.zeros(2 * L + 1, S, d))
        self.ffn = nn.ModuleList(
            ffn_layer(
                arm,
                n_experts=cfg.n_experts,
                d_model=d,
                d_hidden=cfg.d_hidden,
                top_k=cfg.top_k,
                temperature=cfg.temperature,
                seeds=seeds,
                stream=f"lm/{arm.value}/ffn{l}",
            )
            for l in range(L)
        )

    @property
    def n_seeds(self) -> int:
        return self.wte.shape[0]

    def _ln(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """LayerNorm ``i`` with per-seed affine parameters: ``moegeo.nn.layer_norm``'s formula,
        normalised by torch's fused kernel (one pass) and scaled in one ``addcmul``."""
        xn = torch.nn.functional.layer_norm(x, x.shape[-1:], eps=LN_EPS)
        return torch.addcmul(self.ln_b[i][:, None, None], xn, self.ln_w[i][:, None, None])

    def _attention(self, l: int, x: torch.Tensor) -> torch.Tensor:
        S, B, T, d = x.shape
        H = self.cfg.n_heads
        q, k, v = torch.einsum("sbtd,sed->sbte", x, self.qkv[l]).reshape(S * B, T, 3, H, d // H).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return torch.einsum("sbte,sde->sbtd", y.transpose(1, 2).reshape(S, B, T, d), self.proj[l])

    def trace(self, idx: torch.Tensor) -> Trace:
        """The logits ``(S, B, T, V)`` as ``output``, and per layer its FFN (MoE) input, the
        post-LN2 hidden state, and its block input, the residual stream before LN2 (each
        ``(S, B*T, d)``)."""
        h, trace = self._final_hidden(idx)
        return Trace(torch.einsum("sbtd,svd->sbtv", h, self.wte), trace.moe_inputs, trace.block_inputs)

    def _final_hidden(self, idx: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        """The final LayerNorm's output ``(S, B, T, d)``, the unembedding's input, and the trace
        of every layer's FFN input and block input (its ``output`` is that hidden state)."""
        S, B, T = idx.shape
        if S != self.n_seeds or T > self.cfg.context:
            raise ValueError(
                f"idx must have shape (S={self.n_seeds}, B, T <= {self.cfg.context}), got {tuple(idx.shape)}"
            )
        if idx.min() < 0 or idx.max() >= self.cfg.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        vocab = self.cfg.vocab_size * torch.arange(S)[:, None, None]  # one gather from all seeds' embeddings
        x = self.wte.flatten(0, 1)[idx + vocab] + self.wpe[:, None, :T]
        ffn_inputs, blocks = [], []
        for l, ffn in enumerate(self.ffn):
            x = x + self._attention(l, self._ln(2 * l, x))
            h = self._ln(2 * l + 1, x).reshape(S, B * T, -1)
            ffn_inputs.append(h)
            blocks.append(x.reshape(S, B * T, -1))
            x = x + ffn(h).reshape(S, B, T, -1)
        out = self._ln(2 * len(self.ffn), x)
        return out, Trace(out, ffn_inputs, blocks)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.trace(idx).output

    def balance_loss(self) -> torch.Tensor:
        """The FFN layers' load-balancing losses of the last training forward, summed: ``(S,)``."""
        return sum(ffn.balance_loss for ffn in self.ffn)

    def params(self, seed_index: int = 0, layer: int = 0, dtype=torch.float64):
        """Detached tensors of one seed's FFN (MoE) layer ``layer``, as the probes take them."""
        return self.ffn[layer].params(seed_index, dtype)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy per seed, ``(S,)``, of ``targets: (S, B, T)``."""
        if targets.shape != idx.shape:
            raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
        h, _ = self._final_hidden(idx)
        return unembedding_cross_entropy(h.flatten(1, 2), self.wte, targets.flatten(1))


class _UnembeddingCrossEntropy(torch.autograd.Function):
    """``unembedding_cross_entropy``'s forward and backward (see there)."""

    @staticmethod
    def forward(ctx, h, w, targets):
        logits = torch.bmm(h, w.transpose(1, 2))
        p = torch.softmax(logits, -1)
        picked = p.gather(-1, targets[..., None])
        rows = -picked.log().squeeze(-1)
        low = picked.squeeze(-1) < torch.finfo(p.dtype).tiny  # p underflowed: -log p from the logits instead
        if bool(low.any()):
            rows[low] = torch.logsumexp(logits[low], -1) - logits.gather(-1, targets[..., None]).squeeze(-1)[low]
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            ctx.save_for_backward(h, w, p.scatter_(-1, targets[..., None], picked - 1))  # softmax - onehot
        return rows.mean(-1)

    @staticmethod
    @torch.autograd.function.once_differentiable  # g is a constant here: a second derivative would be wrong
    def backward(ctx, grad):
        h, w, g = ctx.saved_tensors
        scale = (grad / g.shape[1])[:, None, None]  # the mean over rows, and the caller's gradient per seed
        gh = torch.bmm(g, w).mul_(scale) if ctx.needs_input_grad[0] else None
        gw = torch.bmm(g.transpose(1, 2), h).mul_(scale) if ctx.needs_input_grad[1] else None
        return gh, gw, None


def unembedding_cross_entropy(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy per seed of the logits ``h w^T`` against ``targets``: ``h: (S, n, d)``,
    ``w: (S, V, d)``, ``targets: (S, n)`` -> ``(S,)``; the same values and gradients as
    ``torch.nn.functional.cross_entropy`` on ``torch.einsum("snd,svd->snv", h, w)`` (the tests
    compare them in float64), in fewer passes over the ``S n V`` logits. ``targets`` must be class
    indices in ``[0, V)`` (no ``ignore_index``). First-order autograd only: a double backward
    raises, and ``torch.func`` transforms do not apply; for those, take the logits from
    ``TransformerLM.trace`` and torch's cross-entropy.

    One softmax gives both the loss (-log of the target's probability, from the logits' log-sum-exp
    where that probability underflows) and, kept for the backward pass, the logits' gradient
    softmax - onehot, so the backward pass is the two products with it. torch's cross-entropy
    makes three such passes (log-softmax, a zero-filled gradient, the log-softmax backward) and
    a scatter into the second; at the language model's 12 seeds x 512 tokens x 2,048 words each
    pass is 50 MB."""
    return _UnembeddingCrossEntropy.apply(h, w, targets)


def perplexity(loss: torch.Tensor) -> torch.Tensor:
    """exp of a mean cross-entropy in nats, in float64 (Inf only above 709 nats)."""
    return torch.exp(loss.double())


@torch.no_grad()
def heldout_loss(model: TransformerLM, heldout_ids: torch.Tensor, windows: int, *, chunk: int = 32) -> torch.Tensor:
    """Mean next-token cross-entropy per seed, ``(S,)``, over the first ``windows``
    non-overlapping held-out windows (``moegeo.data.wikitext.heldout_windows``)."""
    from .data.wikitext import heldout_windows

    x, y = heldout_windows(heldout_ids, model.cfg.context)
    x, y = x[:windows], y[:windows]
    S, total = model.n_seeds, torch.zeros(model.n_seeds)
    for i in range(0, len(x), chunk):
        xb, yb = x[i : i + chunk].expand(S, -1, -1), y[i : i + chunk].expand(S, -1, -1)
        total += model.loss(xb, yb) * len(xb[0])
    return total / len(x)
