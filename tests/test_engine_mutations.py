"""A test of the tests: five plausible bugs of the decision rule, injected one at a time into
``moegeo.stats``, must each make at least one error-rate check of ``tests/test_calibration.py``
fail. A calibration suite that every bug passes cannot vouch for the rule."""

import numpy as np
import pytest
import scipy.stats
import test_calibration as calibration

from moegeo import stats

CLAIMED = {"rep", "pos", "eq", "dif"}


def _holm_with(m_of):
    """Holm's step-down where the multiplier of rank r is ``m_of(M) - r`` instead of ``M - r``."""

    def holm(pvalues):
        p = np.asarray(pvalues, dtype=float)
        adj, running = np.empty(len(p)), 0.0
        for rank, i in enumerate(np.argsort(p, kind="stable")):
            running = max(running, max(m_of(len(p)) - rank, 1e-300) * p[i])
            adj[i] = min(1.0, running)
        return adj

    return holm


def _per_direction(entries, alpha=stats.ALPHA, drop_untestable=False):
    """Bug (a): Holm run separately over the claimed sides and over the opposite sides."""
    out = {}
    for side in (True, False):
        keys = [k for k, h in entries.items() if (h.name in CLAIMED) is side]
        out.update(zip(keys, stats.holm([entries[k].p for k in keys])))
    return out


def _counting_only(keep):
    """Bugs (d) and (e): every hypothesis adjusted as if the family held only those ``keep`` selects."""

    def adjust(entries, alpha=stats.ALPHA, drop_untestable=False):
        m = max(1, sum(keep(h) for h in entries.values()))
        keys = list(entries)
        return dict(zip(keys, _holm_with(lambda M: m)([entries[k].p for k in keys])))

    return adjust


def _normal_sign_test(x, value=0.0, alternative="greater"):
    """Bug (c): the sign test by its normal approximation, no continuity correction."""
    x = np.asarray(x, dtype=float)
    n = len(x)
    k = (x > value).sum() if alternative == "greater" else (x < value).sum()
    return float(scipy.stats.norm.sf((k - n / 2) / np.sqrt(n / 4)))


BUGS = {
    "per-direction Holm families": ("adjust", _per_direction),
    "Holm off by one (M - i)": ("holm", _holm_with(lambda M: M - 1)),
    "Holm off by one (M - i + 2)": ("holm", _holm_with(lambda M: M + 1)),
    "sign test by the normal approximation": ("median_test", _normal_sign_test),
    "only the claimed sides in Holm": ("adjust", _counting_only(lambda h: h.name in CLAIMED)),
    "a joint reading's later parts left out of Holm": ("adjust", _counting_only(lambda h: h.part == 0)),
}


def test_the_unmutated_engine_passes_every_calibration():
    failed = [check.__name__ for check in calibration.CALIBRATION_CHECKS if not check()[0]]
    assert not failed, failed


@pytest.mark.parametrize("bug", list(BUGS))
def test_every_plausible_engine_bug_fails_an_error_rate_check(bug, monkeypatch):
    name, replacement = BUGS[bug]
    monkeypatch.setattr(stats, name, replacement)
    failed = next((check.__name__ for check in calibration.CALIBRATION_CHECKS if not check()[0]), None)
    assert failed is not None, f"no calibration check fails with the bug: {bug}"
