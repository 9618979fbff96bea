"""The README's "On your own MoE layer" example runs as written."""
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_own_model_example_runs():
    code = re.search(r"### On your own MoE layer\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    g = torch.Generator().manual_seed(0)
    E, h, d, N = 4, 16, 12, 32
    env = dict(W1=torch.randn(E, h, d, generator=g), b1=torch.randn(E, h, generator=g),
               W2=torch.randn(E, d, h, generator=g), x=torch.randn(N, d, generator=g),
               g=torch.softmax(torch.randn(N, E, generator=g), -1))
    exec(compile(code, str(README), "exec"), env)
    assert env["cos"].shape == (E, E) and env["sigma1"].shape == (E,)
