"""One test per claim at its primary reading (``--all-readings``: and per sensitivity reading):
it passes exactly when the claim replicates."""


def test_claim(verdict):
    assert verdict.verdict == "REPLICATED", verdict.message
