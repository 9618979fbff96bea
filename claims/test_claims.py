"""One test per claim and reading: it passes exactly when the claim replicates."""


def test_claim(verdict):
    assert verdict.verdict == "REPLICATED", verdict.message
