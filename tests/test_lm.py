"""The language-model setting's model: a seed-stacked Transformer whose FFNs are moegeo's MoE layer."""
import dataclasses

import pytest
import torch

from moegeo import lm, probes, wikitext
from moegeo.config import Arm

TINY = lm.LMSize(vocab_size=50, d_model=16, n_layers=2, n_heads=2, context=8, n_experts=4, d_hidden=12)


def tokens(S, B, T, seed=0, V=TINY.vocab_size):
    return torch.randint(0, V, (S, B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arm", [Arm.DENSE, Arm.DENSE_MATCHED, Arm.TOPK, Arm.SOFT])
def test_shapes_and_a_finite_loss(arm):
    model = lm.TransformerLM(arm, TINY, seeds=(0, 1))
    x = tokens(2, 3, 8)
    assert model(x).shape == (2, 3, 8, TINY.vocab_size)
    assert torch.isfinite(model.loss(x, tokens(2, 3, 8, seed=1))).all()


def test_bad_input_is_named():
    model = lm.TransformerLM(Arm.TOPK, TINY, seeds=(0,))
    with pytest.raises(ValueError, match="token ids must lie in"):
        model(torch.full((1, 2, 8), TINY.vocab_size))
    with pytest.raises(ValueError, match="idx must have shape"):
        model(tokens(2, 2, 8))
    with pytest.raises(ValueError, match="divisible"):
        dataclasses.replace(TINY, n_heads=3)


def test_a_seed_does_not_depend_on_the_other_seeds():
    both = lm.TransformerLM(Arm.SOFT, TINY, seeds=(0, 1))
    alone = lm.TransformerLM(Arm.SOFT, TINY, seeds=(1,))
    x = tokens(1, 2, 8)
    torch.testing.assert_close(both(torch.cat([x, x]))[1], alone(x)[0], rtol=1e-5, atol=1e-6)


def test_causal_attention_does_not_look_ahead():
    model = lm.TransformerLM(Arm.TOPK, TINY, seeds=(0,))
    x = tokens(1, 1, 8)
    y = x.clone()
    y[..., -1] = (y[..., -1] + 1) % TINY.vocab_size
    torch.testing.assert_close(model(x)[..., :-1, :], model(y)[..., :-1, :])


@pytest.mark.parametrize("arm", [Arm.TOPK, Arm.SOFT])
def test_captured_ffn_inputs_and_experts_rebuild_the_models_ffn(arm):
    """What the probes read (each layer's FFN input and the layer's expert tensors) rebuilds the
    layer's own output: sum_e g_e f_e(h) = FFN(h), for every layer."""
    model = lm.TransformerLM(arm, TINY, seeds=(0,))
    with torch.no_grad():
        _, inputs = model.trace(tokens(1, 2, 8))
        for layer, h in zip(model.ffn, inputs):
            p = layer.params(0, torch.float32)
            g = p.gates(h[0])
            f = torch.einsum("eoh,neh->neo", p.W2, torch.nn.functional.gelu(torch.einsum("ehd,nd->neh", p.W1, h[0]) + p.b1)) + p.b2
            torch.testing.assert_close(torch.einsum("ne,neo->no", g, f), layer(h)[0], rtol=1e-5, atol=1e-5)


def test_captured_jacobians_match_autograd_of_the_ffn():
    """The closed-form Jacobian of the whole MoE layer (A.2: the gated expert Jacobians plus the
    routing term) on captured hidden states equals autograd of the model's own FFN there."""
    model = lm.TransformerLM(Arm.SOFT, TINY, seeds=(0,)).double()
    with torch.no_grad():
        _, inputs = model.trace(tokens(1, 1, 8))
    layer, h = model.ffn[1], inputs[1][0].double()[:4]
    p = layer.params(0)
    got = probes.moe_jacobian(p.W1, p.b1, p.W2, p.b2, h, p.gates(h), p.Wr, p.temperature)
    ref = torch.stack([torch.autograd.functional.jacobian(lambda v: layer(v[None, None])[0, 0], hi) for hi in h])
    torch.testing.assert_close(got, ref)


def test_a_short_run_on_the_shipped_data_beats_the_unigram_baseline():
    corpus = wikitext.load_wikitext(vocab_size=512)
    size = lm.LMSize(vocab_size=512, d_model=32, n_layers=2, n_heads=2, context=32, n_experts=4, d_hidden=64)
    model = lm.TransformerLM(Arm.TOPK, size, seeds=(0,))
    lm.train(model, corpus.train, steps=300, batch_size=16, lr=3e-3, progress=False)
    ppl = float(lm.perplexity(lm.heldout_loss(model, corpus.heldout, windows=64))[0])
    unigram = wikitext.unigram_perplexity(corpus.train, corpus.heldout, 512)
    assert ppl < unigram, (ppl, unigram)
