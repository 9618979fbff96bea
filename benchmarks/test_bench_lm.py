"""One training step of each language-model arm and of each router of the routers paper (the
claims' LM configuration, seeds batched) against its floating-point floor: its matrix-product
FLOPs at the sgemm rate measured in the same run (``test_bench_training.py::test_sgemm_rate``)."""

import pytest
import torch
from floors import lm_flops

from moegeo import lm
from moegeo.claims.dual_jacobian_pca import LM_SEEDS
from moegeo.config import Arm, LMConfig
from moegeo.data.wikitext import batches, load_wikitext
from moegeo.experiment import _keep_freed_memory
from moegeo.nn import adam

CFG = LMConfig(seeds=tuple(range(LM_SEEDS)))  # the claims' LM configuration
ARMS = CFG.arms + (Arm.TOPK_AUX, Arm.TOPK_LOSS_FREE, Arm.KMEANS)  # + the routers paper's balancing routers


@pytest.fixture(scope="module")
def corpus():
    return load_wikitext(CFG.data, CFG.vocab_size)


class NoFFN(torch.nn.Module):
    """An FFN slot that adds nothing: the step then times only the parts every arm shares.
    ``h * 0`` (not a fresh zero tensor) keeps its input in the graph, so the LayerNorm before
    it still runs backward, as in every arm."""

    balance_loss = 0.0

    def forward(self, h):
        return h * 0


def timed_step(benchmark, model, corpus):
    """Time one training step of ``model`` (Adam, the claims' LM batch), and check it trains:
    accuracy beside the timing, a finite loss per seed, below log V after 12 Adam steps on one batch."""
    opt = adam(model.parameters(), CFG.lr)  # the training runs' optimizer
    gens = [torch.Generator().manual_seed(s) for s in CFG.seeds]
    xs, ys = zip(*(batches(corpus.train, CFG.context, CFG.batch_size, g) for g in gens))
    x, y = torch.stack(xs), torch.stack(ys)

    def step():
        loss = model.loss(x, y)
        opt.zero_grad(set_to_none=True)
        (loss + model.balance_loss()).sum().backward()
        opt.step()
        return loss

    loss = benchmark.pedantic(step, rounds=10, warmup_rounds=2)
    assert loss.shape == (LM_SEEDS,) and torch.isfinite(loss).all()
    assert (loss < torch.log(torch.tensor(float(CFG.vocab_size)))).all()


@pytest.mark.parametrize("arm", ARMS, ids=[a.value for a in ARMS])
def test_lm_train_step(benchmark, arm, corpus):
    _keep_freed_memory()
    benchmark.group = f"one LM training step, {LM_SEEDS} seeds"
    timed_step(benchmark, lm.TransformerLM(arm, CFG), corpus)
    benchmark.extra_info.update(method=arm.value, flops=lm_flops(arm, CFG))


def test_lm_step_shared_parts(benchmark, corpus):
    """The step with every FFN replaced by zero (attention, LayerNorms, embedding, tied
    unembedding and cross-entropy, Adam on those parameters): what every arm pays besides its
    FFN layers (with their routers and Adam on their weights), against its own FLOP floor.
    REPORT sets it beside the Top-k arms' goal."""
    _keep_freed_memory()
    model = lm.TransformerLM(Arm.DENSE, CFG)
    model.ffn = torch.nn.ModuleList(NoFFN() for _ in model.ffn)
    benchmark.group = f"LM shared parts (every FFN zero), {LM_SEEDS} seeds"
    timed_step(benchmark, model, corpus)
    benchmark.extra_info.update(method="shared_parts", flops=lm_flops(None, CFG))
