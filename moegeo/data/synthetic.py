"""The controlled experiment's synthetic data (Appendix B.2)."""

from __future__ import annotations

import torch

from ..nn import seed_generator


def make_data(seed: int, *, n_samples: int = 512, d_model: int = 64, dtype=torch.float32):
    """Synthetic batch of B.2: x ~ N(0, I) and independent targets y ~ N(0, I), ``(N, d)`` each."""
    g = seed_generator(seed, "data")
    x = torch.randn(n_samples, d_model, generator=g, dtype=dtype)
    y = torch.randn(n_samples, d_model, generator=g, dtype=dtype)
    return x, y
