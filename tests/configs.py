"""Configs shared by the tests: the smallest language model that trains, records and probes."""

from moegeo.config import LMConfig

#: a 2-layer LM of width 16 with 4 experts, 4 steps of 2 seeds: every stage runs, in seconds
TINY_LM = LMConfig(
    vocab_size=64,
    d_model=16,
    n_layers=2,
    n_heads=2,
    context=8,
    n_experts=4,
    d_hidden=12,
    steps=4,
    record_every=2,
    eval_windows=4,
    probe_tokens=32,
    trajectory_points=8,
    seeds=(0, 1),
)
