"""One test per claim at its primary reading (``--all-readings``: and per sensitivity reading):
it passes exactly when the claim replicates (a magnitude: when the paper's value is consistent
with our seeds)."""


def test_claim(verdict):
    assert verdict.verdict in ("REPLICATED", "CONSISTENT"), verdict.message
