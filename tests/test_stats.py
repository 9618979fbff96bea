"""The verdict engine: exact tests and intervals against scipy, the decision rule against an
independent implementation of its specification (``reference_engine.py``), and the claims
engine end to end on planted frames: families, controls (BY CONSTRUCTION), tipping points and
power. The rule's error rates are in ``test_calibration.py`` (exact values, tight bands) and
``test_engine_mutations.py`` (plausible bugs make them fail)."""

import math
import os
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given
from hypothesis import strategies as st

from moegeo import stats
from moegeo.claims import (
    Claim,
    Results,
    dual_jacobian_pca,
    evaluate,
    family,
    geometric_asymmetry,
    pair,
    routers_geometry,
    tipping_shift,
)
from moegeo.stats import Part, Verdict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_engine  # noqa: E402

ALPHA = stats.ALPHA


# --------------------------------------------------------------------------- exact building blocks
def test_holm_matches_hand_computation():
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])


@pytest.mark.parametrize("bad", [[1.5], [-0.1], [np.nan]])
def test_holm_refuses_p_values_outside_the_unit_interval(bad):
    with pytest.raises(ValueError, match="must lie in"):
        stats.holm([0.01] + bad)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=30))
def test_holm_is_monotone_and_at_least_raw(p):
    adj = stats.holm(p)
    assert (adj >= np.asarray(p) - 1e-15).all() and (adj <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(adj[order]) >= -1e-15).all()


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=40), st.integers(-2, 2))
def test_median_test_and_ci_match_scipy_quantile_test(x, q):
    """Oracle: scipy.stats.quantile_test (ties included: integer statistics tie often)."""
    for alt in ("greater", "less"):
        assert stats.median_test(x, q, alt) == pytest.approx(
            scipy.stats.quantile_test(x, q=q, alternative=alt).pvalue, abs=1e-12
        )
    if len(x) >= 6:
        ref = scipy.stats.quantile_test(x).confidence_interval(0.95)
        ci = stats.median_ci(x)
        assert (ci.low, ci.high) == (ref.low, ref.high)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5, -0.2])
def test_intervals_refuse_a_confidence_outside_the_open_unit_interval(confidence):
    with pytest.raises(ValueError, match="confidence"):
        stats.median_ci([1.0, 2.0, 3.0], confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        stats.prediction_interval([1.0, 2.0, 3.0], confidence=confidence)


def test_median_ci_has_its_exact_coverage():
    """Simulated coverage of the true median (skewed data) matches the exact binomial coverage
    within 4 Monte-Carlo standard errors: a percentile bootstrap's under-coverage fails this."""
    rng = np.random.default_rng(3)
    sims, truth = 4000, 1.0  # median of lognormal(0, 1)
    for n in (20, 24):
        cover = stats.median_ci(np.arange(n)).coverage
        hits = np.mean(
            [(lambda c: c.low <= truth <= c.high)(stats.median_ci(rng.lognormal(0, 1, n))) for _ in range(sims)]
        )
        assert abs(hits - cover) <= 4 * math.sqrt(cover * (1 - cover) / sims), (n, hits, cover)


def test_prediction_interval_covers_a_new_normal_seed_at_its_level():
    rng = np.random.default_rng(4)
    sims, n = 4000, 24
    hits = np.mean(
        [
            (lambda pi, new: pi.low <= new <= pi.high)(stats.prediction_interval(rng.normal(size=n), 0.9), rng.normal())
            for _ in range(sims)
        ]
    )
    assert abs(hits - 0.9) <= 4 * math.sqrt(0.09 / sims)


def test_the_magnitude_p_value_inverts_the_prediction_interval():
    x = np.random.default_rng(5).normal(2.0, 0.3, 24)
    pi = stats.prediction_interval(x, 0.95)
    assert stats.prediction_pvalue(x, pi.high, pi.high + 1) == pytest.approx(0.05)
    assert stats.prediction_pvalue(x, pi.low - 1, pi.low) == pytest.approx(0.05)
    assert stats.prediction_pvalue(x, 1.9, 2.1) == 1.0  # the mean inside the paper's interval


# --------------------------------------------------------------------------- the rule against its specification
def _random_family(rng, m):
    readings = []
    for _ in range(m):
        k = int(rng.integers(1, 3))
        kind = "magnitude" if rng.random() < 0.2 else "direction"
        delta = float(rng.choice([0.0, 0.1, 0.5]))
        two_sided, hedged = bool(rng.random() < 0.15), bool(rng.random() < 0.2)
        n = int(rng.integers(4, 16))
        parts = []
        for _ in range(k):
            x = rng.normal(rng.choice([-1.0, 0.0, 0.05, 1.0]), rng.choice([0.1, 1.0]), n)
            parts.append(
                dict(
                    x=x,
                    kind=kind,
                    delta=delta,
                    two_sided=two_sided and kind == "direction",
                    hedged=hedged,
                    interval=(0.9, 1.1) if kind == "magnitude" else None,
                )
            )
        readings.append(parts)
    return readings


@pytest.mark.parametrize("seed", range(40))
def test_decisions_equal_an_independent_implementation_of_the_specification(seed):
    """moegeo.stats.decide against reference_engine.py, written from the rule's specification
    alone, on random families mixing joint, hedged, two-sided and magnitude readings."""
    rng = np.random.default_rng(seed)
    family_ = _random_family(rng, int(rng.integers(1, 7)))
    ours = stats.decide([[Part(**p) for p in r] for r in family_])
    theirs = reference_engine.decide([[reference_engine.Part(**p) for p in r] for r in family_])
    for a, b in zip(ours, theirs):
        assert a.verdict.value == str(b.verdict.value if hasattr(b.verdict, "value") else b.verdict)
        assert [d.verdict.value for d in a.parts] == [str(getattr(d.verdict, "value", d.verdict)) for d in b.parts]
    assert ours[0].M == theirs[0].M


def test_a_part_significant_each_way_makes_the_joint_reading_depend_on_definition():
    up = np.arange(1.0, 13.0)
    d = stats.decide([[Part(up), Part(-up)]])[0]
    assert d.verdict is Verdict.DEPENDS_ON_DEFINITION
    assert [p.verdict for p in d.parts] == [Verdict.REPLICATED, Verdict.CONTRADICTED]


def test_tarone_drops_what_cannot_reach_significance_and_nothing_else():
    """3 hypotheses of 4 seeds (min p 1/16) cannot pass alpha/K for any K >= 1 except when they
    are few; 10 of 20 seeds can: Tarone keeps exactly the testable ones."""
    floors = [2.0**-20] * 10 + [2.0**-4] * 3
    keep = stats.tarone(floors)
    assert keep.tolist() == [True] * 10 + [False] * 3


def test_power_is_the_exact_binomial_tail_at_holms_worst_case():
    n, M, q = 24, 10, 0.9
    k = next(k for k in range(n + 1) if scipy.stats.binom.sf(k - 1, n, 0.5) <= ALPHA / M)
    assert stats.power(q, n, M) == pytest.approx(scipy.stats.binom.sf(k - 1, n, q))
    assert stats.seeds_needed(q, M) == next(n for n in range(1, 100) if stats.power(q, n, M) >= 0.8)
    with pytest.raises(ValueError, match="q must lie"):
        stats.power(1.5, n, M)


# --------------------------------------------------------------------------- the claims engine on planted frames
def planted(values: dict[str, np.ndarray], control: dict[str, np.ndarray] | None = None, init=None) -> Results:
    """A results frame with one metric per arm: ``values[arm]`` per seed at step 1 (its final
    step); ``control``: the same arms' rows of the permuted control; ``init``: their step-0 rows."""

    def rows(vals, step, label):
        return [
            dict(
                seed=s,
                arm=arm,
                layer=0,
                expert=0,
                reading="",
                metric="m",
                step=step,
                index=-1,
                value=v,
                steps=1,
                control=label,
            )
            for arm, vv in vals.items()
            for s, v in enumerate(vv)
        ]

    r = rows(values, 1, "") + [dict(x, metric="sigma1") for x in rows(values, 1, "")]
    if control:
        r += rows(control, 1, "permuted")
    if init:
        r += rows(init, 0, "") + [dict(x, metric="sigma1") for x in rows(init, 0, "")]
    return Results({"main": pd.DataFrame(r)})


def planted_claims(
    n_claims: int, kind: str = "direction", paper=lambda i: f"sim{i}", prefix: str = "X", **kw
) -> list[Claim]:
    """Claim i compares arm a{i} with arm b{i} (a log ratio), in family ``paper(i)``."""

    def observe(i):
        return lambda R, r: pair(
            R.per_seed(f"a{i}", "m"), R.per_seed(f"b{i}", "m"), "a", "b", "ratio" if kind == "magnitude" else "logratio"
        )

    return [
        Claim(f"{prefix}{i}", "planted", "", "", "", kind, "", {}, "", observe(i), paper=paper(i), steps=False, **kw)
        for i in range(n_claims)
    ]


def test_a_claim_its_control_reaches_equally_is_by_construction():
    """Arms that differ the same way under the permuted control: the trained REPLICATED becomes
    BY CONSTRUCTION (never a replication), and the message says it replicated under the control."""
    up = np.exp(np.linspace(0.5, 1.5, 12))
    vals = {"a0": up, "b0": np.ones(12)}
    v = evaluate(planted(vals, control=vals), planted_claims(1, paper=lambda i: "bc", controls=("permuted",)))
    row = v[v.primary].iloc[0]
    assert row.raw_verdict == "REPLICATED" and row.verdict == "BY CONSTRUCTION"
    assert row.control_permuted == "REPLICATED" and "replicated under the trained runs" in row.message
    assert row.delta_permuted[0]["effect"] == 0.0


def test_a_control_without_the_effect_leaves_the_verdict_and_shows_the_difference():
    up = np.exp(np.linspace(0.5, 1.5, 12))
    vals, flat = {"a0": up, "b0": np.ones(12)}, {"a0": np.ones(12), "b0": np.ones(12)}
    v = evaluate(
        planted(vals, control=flat, init=flat), planted_claims(1, paper=lambda i: "ok", controls=("init", "permuted"))
    )
    row = v[v.primary].iloc[0]
    assert row.verdict == "REPLICATED" and row.control_init == row.control_permuted == "NOT REPLICATED"
    assert row.delta_init[0]["effect"] == pytest.approx(np.median(np.log(up)))


def test_the_tipping_point_is_where_the_verdict_changes():
    """Seeds 0.1 .. 1.2 against a threshold at 0, alone in a family of M = 2: 10 of 12 seeds beyond
    it still replicate (Holm-adjusted 2 x 79/4096 = 0.039), 9 do not (0.146); so shifting the
    values down by just over the third smallest (0.3) makes it NOT REPLICATED."""
    x = np.linspace(0.1, 1.2, 12)
    vals = {"a0": np.exp(x), "b0": np.ones(12)}
    claims = planted_claims(1, paper=lambda i: "tip", threshold_declared=True, threshold_value=0.0)
    v = evaluate(planted(vals), claims, controls=False)
    shift, to = tipping_shift(v, v.index[0])
    assert to == "NOT REPLICATED" and shift == pytest.approx(-0.3, abs=1e-6)


def test_identical_hypotheses_enter_the_family_once():
    """Two claims on the same observations (as dense and dense_matched at the input PCA site)."""
    vals = {"a0": np.full(8, 2.0), "b0": np.ones(8)}
    claims = [
        Claim(
            f"D{i}",
            "dup",
            "",
            "",
            "",
            "direction",
            "",
            {},
            "",
            lambda R, r: pair(R.per_seed("a0", "m"), R.per_seed("b0", "m"), "a", "b", "logratio"),
            paper="dup",
            steps=False,
        )
        for i in range(2)
    ]
    v = evaluate(planted(vals), claims, controls=False)
    assert set(v.M) == {2}  # rep and con of one observation, not twice


def test_negligible_and_condition_through_evaluate():
    vals = {"a0": np.full(12, 1.001) * np.exp(np.linspace(0, 1e-4, 12)), "b0": np.ones(12)}
    small = planted_claims(1, paper=lambda i: "small", smallest_effect=math.log(1.05))
    premise = planted_claims(
        1, paper=lambda i: "premise", prefix="Y", condition=lambda R, r: (False, "the premise fails")
    )
    v = evaluate(planted(vals), small + premise, controls=False)
    assert v.verdict.tolist() == ["NEGLIGIBLE", "CONDITION NOT MET"]
    assert "the premise fails" in v.message.iloc[1]


def test_a_paper_is_only_evaluated_whole():
    with pytest.raises(ValueError, match="evaluated whole"):
        evaluate(planted({"a0": np.ones(6), "b0": np.ones(6)}), dual_jacobian_pca.CLAIMS[:3])


def test_families_per_paper_generalisation_and_sensitivity():
    fams = {c.id: family(c, True) for c in dual_jacobian_pca.CLAIMS}
    assert fams["C12"] == fams["C13"] == fams["C1"] == "dual_jacobian_pca/primary"
    assert fams["C2-lm"] == "dual_jacobian_pca/generalisation-primary"
    c2lm = next(c for c in dual_jacobian_pca.CLAIMS if c.id == "C2-lm")
    assert family(c2lm, False, 24) == "dual_jacobian_pca/generalisation-sensitivity/lm/n=24"
    own = [c for c in geometric_asymmetry.CLAIMS if not c.generalises]
    assert {family(c, True) for c in own} == {"geometric_asymmetry/primary"}
    assert {family(c, True) for c in routers_geometry.CLAIMS} == {"routers_geometry/primary"}


def test_claims_that_read_only_dense_arms_declare_no_routing_control():
    """A routing control leaves a dense model as it is: declaring one would make every claim on
    the dense arm alone BY CONSTRUCTION."""
    for cid in ("C5c", "C6b", "C8e"):
        c = next(c for c in dual_jacobian_pca.CLAIMS if c.id == cid)
        assert set(c.controls) <= {"init"} and c.control_note
