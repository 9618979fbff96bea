"""The documents: README a short manual whose example runs and whose verdicts are REPORT's; REPORT
from frozen declarations."""

import re
from pathlib import Path

import torch

from moegeo.report.markdown import VERDICT_MARKERS, existing_section

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
REPORT = ROOT / "REPORT.md"


def test_readme_own_model_example_runs():
    code = re.search(r"## Probe your own MoE layer\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    g = torch.Generator().manual_seed(0)
    E, h, d, N = 4, 16, 12, 32
    env = dict(
        W1=torch.randn(E, h, d, generator=g),
        b1=torch.randn(E, h, generator=g),
        W2=torch.randn(E, d, h, generator=g),
        x=torch.randn(N, d, generator=g),
        g=torch.softmax(torch.randn(N, E, generator=g), -1),
    )
    exec(compile(code, str(README), "exec"), env)
    assert env["cos"].shape == (E, E) and env["sigma1"].shape == (E,)


def test_readme_verdicts_are_the_reports():
    """The default `pytest claims/` writes the block into both; neither is edited by hand."""
    block = existing_section(README.read_text(), VERDICT_MARKERS)
    assert block and block == existing_section(REPORT.read_text(), VERDICT_MARKERS)
    assert "**" in block  # one headline per paper, not an empty block


def test_documents_stay_readable():
    """README a short manual (no run log naming commits), REPORT at most 100 KB."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", text)
    assert REPORT.stat().st_size <= 100 * 1024


def test_declarations_are_the_frozen_ones():
    """The committed REPORT is a confirmatory run of these declarations: claims modules and the
    statistics engine unchanged since they were frozen, before that run."""
    from moegeo.claims.dual_jacobian_pca import CONFIRMATORY_OFFSET
    from moegeo.claims.engine import declarations_digest, frozen

    record = frozen()
    assert record is not None and record["digest"] == declarations_digest()
    assert record["confirmatory_offset"] == CONFIRMATORY_OFFSET and record["exploratory"] == "0-23"
    assert f"digest `{record['digest'][:16]}`: frozen on {record['date']}, unchanged since" in REPORT.read_text()
