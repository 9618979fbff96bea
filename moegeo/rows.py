"""The row builders: one layer's tensors turned into rows of the tidy frame (``moegeo.frame``)
through the probes, one place for each, for every setting (the MLP setting's layer and each
layer of the language model here; a Hugging Face checkpoint's layers through ``moegeo.hf.rows``),
and the routing controls.

A quantity undefined for an expert is left out, and an ``undefined`` row counts it
(``Rows.undefined``, ``moegeo.frame``): no builder writes a NaN or an Inf.
"""

from __future__ import annotations

import warnings

import torch

from . import probes
from .config import Arm, JacobianSite, Norm, PCASite
from .frame import Rows, reading
from .nn import gelu, layer_norm_jacobian, seed_generator
from .probes import grassmann

#: PCA thresholds of the paper: k@0.9 and cum-var@10 (A.4, B.5).
PCA_TAU, PCA_K = 0.9, 10
#: Jacobian decay summaries: energy reached by 10 directions, sigma_10 / sigma_1, k at 90% energy.
ENERGY_K, ENERGY_TAU = 10, 0.9
#: the expert subspace of the Grassmann probes: the top 10 principal directions, the dual paper's
#: own count of leading directions (cum-var@10, B.5); each expert's k@0.9 is the other reading.
SUBSPACE_R = PCA_K
#: an expert whose r-th PCA eigenvalue is at most this fraction of its first has routed points
#: spanning fewer than r dimensions: its top-r subspace is not defined (the directions beyond its
#: rank are arbitrary) and it is left out of the ``subspace=r10`` rows (``subspace_rows``). The
#: threshold separates exact rank deficiency (eigenvalue ratios of 1e-14 and below in float64,
#: also for float32 data) from real variance; a full-rank expert is wrongly dropped only if its
#: 10th direction's variance is below 1e-9 of its first (amplitude ratio above about 3e4) or its
#: routing weights outside fewer than 11 points are all at or below about 1e-9
SUBSPACE_RANK_TOL = 1e-9
#: PCA sites whose coordinates all experts share (a subspace of the layer's input or output
#: space); the hidden sites are each expert's own coordinates, where angles mean nothing.
SUBSPACE_SITES = (PCASite.INPUT, PCASite.OUTPUT)
#: tokens per expert whose router score and activation are kept for the scatter plots
SAMPLE_TOKENS = 32


def _spectral(J: torch.Tensor) -> torch.Tensor:
    """sigma_1 of a batch of square Jacobians (Gram eigenvalues: exact up to rounding here)."""
    return probes.singular_values(J, method="gram")[..., 0]


NORMS = ((Norm.SPECTRAL, _spectral), (Norm.FROBENIUS, torch.linalg.matrix_norm))


def _trajectory_layer(arm, cfg, p, h, seed, layer, step):
    """The trajectory rows of one seed's layer ``p`` at its input ``h: (N, d)``."""
    r = Rows(seed, arm, layer, step)
    sub = h[: cfg.trajectory_points]
    g, g_sub = p.gates(h), p.gates(sub)
    live, live_sub = probes.expert_mass(g) > 0, probes.expert_mass(g_sub) > 0
    jbar = probes.mean_jacobian(p.W1[live], p.b1[live], p.W2[live], h, g[:, live])
    J = probes.expert_jacobians(p.W1[live_sub], p.b1[live_sub], p.W2[live_sub], sub)
    Jm = (
        probes.moe_jacobian(p.W1, p.b1, p.W2, p.b2, sub, g_sub, p.Wr, temperature=p.temperature)
        if p.Wr is not None
        else None
    )
    for norm, fn in NORMS:
        r.add("jacobian_norm", reading(jacobian=JacobianSite.MEAN, norm=norm), fn(jbar), _indices(live))
        r.add(
            "jacobian_norm",
            reading(jacobian=JacobianSite.POINTWISE, norm=norm),
            probes.weighted_mean(fn(J), g_sub[:, live_sub]),
            _indices(live_sub),
        )
        if Jm is not None:
            r.add("jacobian_norm", reading(jacobian="effective", norm=norm), fn(Jm).mean())
    if int(live.sum()) > 1:
        nonzero = jbar.flatten(1).norm(dim=1) > 0
        label = reading(jacobian=JacobianSite.MEAN)
        zero = [e for e, ok in zip(_indices(live), nonzero.tolist()) if not ok]
        if zero:  # the cosine of a zero mean Jacobian is undefined
            r.undefined("cosine_abs_mean", label, zero)
        if int(nonzero.sum()) > 1:
            c = probes.cosine_matrix(jbar[nonzero])
            r.add("cosine_abs_mean", label, c[_offdiag(len(c))].abs().mean())
    if p.router_vectors is not None:
        r += _router_rows(p, h, g, seed, arm, layer, step)
    return r


def _router_rows(
    p,
    x,
    g,
    seed,
    arm,
    layer,
    step,
    full: bool = False,
    experts: list[int] | None = None,
    control: str = "",
    initial=None,
) -> Rows:
    """The routers paper's metrics of one seed's layer at its input ``x`` with gates ``g``: load
    per expert, its imbalance and router-direction similarity (every trajectory record), or
    (``full``, the checkpoints; only the live ``experts``) router-expert coupling: the router
    directions' |cos| matrix, each router's |cos| with its own expert's input direction and with
    the others', the score-activation rank correlation per expert and, given the layer's
    ``initial`` parameters, the coupling of the accumulated updates (each router's change since
    initialisation against its own expert's and the others' input-weight change). Cosines are
    left out, with ``undefined`` rows, when a router vector is zero or there is one router (they
    are undefined), and so is the rank correlation of an expert with too few tokens."""
    r = Rows(seed, arm, layer, step, control)
    R = p.router_vectors
    nonzero = bool((R.norm(dim=-1) > 0).all())
    if not full:
        r.add("load_fraction", "", probes.load_fractions(g), list(range(g.shape[1])))
        r.add("load_imbalance", "", probes.load_imbalance(g))
        if nonzero and len(R) > 1:
            r.add("router_similarity", "", probes.router_similarity(R))
        else:
            r.undefined("router_similarity", "", [-1])
        return r
    experts = list(range(g.shape[1])) if experts is None else experts
    if len(experts) > 1 and not nonzero:
        for metric in ("router_cosine", "router_expert_cos"):
            r.undefined(metric, "", experts)
    if len(experts) > 1 and nonzero:
        R, W1 = R[experts], p.W1[experts]
        r.add("router_cosine", "", probes.cosine_matrix(R), experts, index=experts)
        C = probes.router_expert_cosines(R, W1)
        n = len(experts)
        r.add("router_expert_cos", "pair=matched", C.diagonal(), experts)
        r.add("router_expert_cos", "pair=mismatched", (C.sum(1) - C.diagonal()) / (n - 1), experts)
        if initial is not None and initial.router_vectors is not None:
            dR, dW1 = R - initial.router_vectors[experts], W1 - initial.W1[experts]
            if bool((dR.norm(dim=-1) > 0).all()) and bool((dW1.flatten(1).norm(dim=-1) > 0).all()):
                U = probes.router_expert_cosines(dR, dW1)
                r.add("router_update_cos", "pair=matched", U.diagonal(), experts)
                r.add("router_update_cos", "pair=mismatched", (U.sum(1) - U.diagonal()) / (n - 1), experts)
            else:  # a router or an expert that has not moved: the cosine of its update is undefined
                r.undefined("router_update_cos", "", experts)
    scores, gl = p.scores(x)[:, experts], g[:, experts]
    rho = probes.score_activation_correlation(scores, p.W1[experts], p.b1[experts], x, gl)
    ok = torch.nonzero(~rho.isnan()).flatten().tolist()
    r.add("score_activation_rho", "", rho[ok], [experts[i] for i in ok])
    r.undefined("score_activation_rho", "", [e for i, e in enumerate(experts) if i not in ok])
    # the first SAMPLE_TOKENS tokens routed to each expert: its score and activation norm (figure)
    act = gelu(probes.expert_preactivations(p.W1[experts], p.b1[experts], x)).norm(dim=-1)
    for i, e in enumerate(experts):
        n = torch.nonzero(gl[:, i] > 0).flatten()[:SAMPLE_TOKENS]
        r.add("sample_score", "", scores[n, i][None], [e])
        r.add("sample_activation", "", act[i, n][None], [e])
    return r


def _indices(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask).flatten().tolist()


def _offdiag(n: int) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool)


def probe_rows(
    p,
    x: torch.Tensor,
    seed: int,
    arm: Arm,
    step: int,
    layer: int = 0,
    block_input: torch.Tensor | None = None,
    ln_weight: torch.Tensor | None = None,
    *,
    controls: dict[str, torch.Tensor] | None = None,
    initial=None,
) -> list[dict]:
    """Every probe of §2.2/Appendix A on one trained layer ``p`` (float64) and the hidden states
    ``x`` entering it; and again under each routing control, ``controls``: name -> routing
    weights ``(N, E)`` to use in place of the layer's own (rows labelled with ``control``).

    Experts that receive zero total routing weight have no local chart: they get one
    ``excluded`` row and no other rows. For a layer inside a pre-LayerNorm residual block
    (``ln_weight`` given, ``x = LN(block_input)``), the cross-expert cosine is also taken of the
    expert charts seen from the block input: through the shared LayerNorm (``chart=ln``,
    J_e(LN x) J_LN(x)) and with the residual identity added (``chart=residual``). ``initial``:
    the layer's parameters at initialisation, for the accumulated-update coupling of the router
    rows. The per-point Jacobians and their spectra are computed once for every control.
    """
    variants = {"": p.gates(x)} | (controls or {})
    used = torch.stack([probes.expert_mass(g) > 0 for g in variants.values()]).any(0)
    ids = torch.nonzero(used).flatten()
    pre = probes.expert_preactivations(p.W1[ids], p.b1[ids], x)
    hidden = gelu(pre)
    J = probes.expert_jacobians(p.W1[ids], p.b1[ids], p.W2[ids], x)
    shared = dict(
        ids=ids.tolist(),
        J=J,
        s_point=probes.singular_values(J, method="gram"),
        sites={
            PCASite.INPUT: x,
            PCASite.PRE_ACTIVATION: pre,
            PCASite.HIDDEN: hidden,
            PCASite.OUTPUT: torch.einsum("edh,enh->end", p.W2[ids], hidden) + p.b2[ids][:, None],
        },
    )
    J_ln = (
        torch.einsum("enoi,nij->enoj", J, layer_norm_jacobian(block_input, ln_weight))
        if ln_weight is not None
        else None
    )
    rows = []
    for control, g in variants.items():
        rows += _variant_rows(p, x, g, Rows(seed, arm, layer, step, control), shared, J_ln, initial)
    return rows


def routing_controls(p, x: torch.Tensor, seed: int, arm: Arm | str, layer: int, step: int, initial=None) -> dict:
    """The routing controls of a routed layer ``p`` at its input ``x`` (none for a dense FFN):
    ``permuted``, each expert's routing weights shuffled across the N inputs by its own
    permutation (drawn from the seed's ``control/permuted/<arm>/<layer>/<step>`` stream, so each
    expert keeps its weight distribution and loses the association with its inputs); and,
    given the layer's ``initial`` parameters, ``router_init``, the routing of the router at
    initialisation on the same inputs."""
    if p.router_vectors is None:
        return {}
    g = p.gates(x)
    gen = seed_generator(seed, f"control/permuted/{getattr(arm, 'value', arm)}/{layer}/{step}")
    perm = torch.stack([torch.randperm(g.shape[0], generator=gen) for _ in range(g.shape[1])], 1)
    out = {"permuted": g.gather(0, perm)}
    if initial is not None:
        out["router_init"] = initial.gates(x)
    return out


def _variant_rows(p, x, g, rows: Rows, shared: dict, J_ln, initial) -> Rows:
    """``probe_rows`` for one routing ``g``, from the tensors computed once (``shared``)."""
    mass = probes.expert_mass(g)
    live = torch.nonzero(mass > 0).flatten()
    experts = live.tolist()
    where = rows.where()
    for e in torch.nonzero(mass <= 0).flatten().tolist():
        if not rows.key["control"]:
            warnings.warn(f"{where}: expert {e} received zero routing weight; excluded", stacklevel=2)
        rows.add("excluded", "", 1.0, [e])
    rows.add("load", "", mass[live] / x.shape[0], experts)
    rows.add("routing_entropy", "", probes.routing_entropy(g).mean())
    key = rows.key
    if p.router_vectors is not None:
        rows += _router_rows(
            p,
            x,
            g,
            key["seed"],
            key["arm"],
            key["layer"],
            key["step"],
            full=True,
            experts=experts,
            control=key["control"],
            initial=initial,
        )
    pos = [shared["ids"].index(e) for e in experts]
    gl = g[:, live]
    sites = {site: (h if h.dim() == 2 else h[pos]) for site, h in shared["sites"].items()}
    expert_geometry_rows(rows, x, gl, shared["J"][pos], sites, experts, s_point=shared["s_point"][pos])
    if J_ln is not None and len(live) > 1:  # the expert charts seen from the block input
        charts = {reading(jacobian=JacobianSite.MEAN, chart="ln"): probes.weighted_mean(J_ln[pos], gl)}
        charts[reading(jacobian=JacobianSite.MEAN, chart="residual")] = charts[
            reading(jacobian=JacobianSite.MEAN, chart="ln")
        ] + torch.eye(x.shape[-1], dtype=x.dtype)
        for r, M in charts.items():
            cosine_rows(rows, r, M, experts)
    return rows


def expert_geometry_rows(
    rows: Rows,
    x: torch.Tensor,
    g: torch.Tensor,
    J: torch.Tensor,
    sites: dict,
    experts: list[int],
    *,
    s_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """The probes every setting shares, from one layer's tensors, appended to ``rows``.

    ``x: (N, d)`` the layer input, ``g: (N, E)`` the routing weights of the ``E`` live experts
    (ids ``experts``), ``J: (E, N, d_out, d)`` their per-point Jacobians, ``sites``: a
    representation ``(N, D)`` or ``(E, N, D)`` per ``PCASite``. Adds the Jacobian spectra under
    both readings of which Jacobian (§2.2's per-point spectra, B.4's J̄_e), the cross-expert
    cosine of vec(J̄_e) (A.3), the weighted PCA of every site (A.4/B.5) and, at the sites whose
    coordinates experts share (``SUBSPACE_SITES``), the Grassmann geometry between expert
    subspaces (``subspace_rows``). ``s_point``: the singular values of ``J`` when already
    computed. Quantities undefined for an expert are left out with ``undefined`` rows (module
    docstring). Returns J̄_e ``(E, d_out, d)``.
    """
    if s_point is None:  # (E, N, d); Gram is accurate in float64 only (a checkpoint's float32 probes: SVD)
        s_point = probes.singular_values(J, method="gram" if J.dtype == torch.float64 else "svd")
    jbar = probes.weighted_mean(J, g)
    # a point whose Jacobian is zero has no energy curve: its expert's pointwise energy is left out
    nonzero_point = s_point[..., 0] > 0  # (E, N)
    curves = probes.energy_curve(torch.where(nonzero_point[..., None], s_point, torch.ones_like(s_point)))
    s_mean = probes.singular_values(jbar)
    spectra = {  # site -> (spectrum, energy curve, whether the energy curve is defined per expert)
        JacobianSite.POINTWISE: (
            probes.weighted_mean(s_point, g),
            probes.weighted_mean(curves, g),
            (nonzero_point | (g.T <= 0)).all(1),
        ),
        JacobianSite.MEAN: (s_mean, None, s_mean[:, 0] > 0),
    }
    for site, (s, energy, has_energy) in spectra.items():
        r, k = reading(jacobian=site), min(ENERGY_K, s.shape[-1])
        rows.add("sigma", r, s, experts)
        rows.add("sigma1", r, s[:, 0], experts)

        def ratio_rows(ok, s=s, k=k):
            return [(f"sigma_ratio@{k}", s[ok, k - 1] / s[ok, 0])]

        def energy_rows(ok, s=s, energy=energy, k=k):
            e = probes.energy_curve(s[ok]) if energy is None else energy[ok]
            return [
                ("energy", e),
                (f"energy@{k}", probes.value_at(e, k)),
                (f"energy_k@{ENERGY_TAU}", probes.k_at(e, ENERGY_TAU).double()),
            ]

        _defined_rows(rows, r, experts, s[:, 0] > 0, [f"sigma_ratio@{k}"], ratio_rows, "have a zero Jacobian")
        _defined_rows(
            rows,
            r,
            experts,
            has_energy,
            ["energy", f"energy@{k}", f"energy_k@{ENERGY_TAU}"],
            energy_rows,
            "have a zero Jacobian at a routed point" if site is JacobianSite.POINTWISE else "have a zero J̄",
        )
    if len(experts) > 1:
        cosine_rows(rows, reading(jacobian=JacobianSite.MEAN), jbar, experts)
    for site, h in sites.items():
        pca_site_rows(rows, site, h, g, experts)
    return jbar


def _defined_rows(
    rows: Rows, reading_: str, experts: list[int], defined: torch.Tensor, metrics: list[str], values, lacks: str
) -> None:
    """The rows ``values(defined) -> [(metric, per-expert values)]`` of the experts where
    ``defined`` (bool, per expert) holds; an ``undefined`` row for each of ``metrics`` of every
    other expert, and (for the trained run's own rows) a warning saying what they ``lack``."""
    keep = [e for e, ok in zip(experts, defined.tolist()) if ok]
    gone = [e for e, ok in zip(experts, defined.tolist()) if not ok]
    if gone:
        if not rows.key["control"]:
            warnings.warn(
                f"{rows.where()}, {reading_}: expert(s) {gone} {lacks}; {', '.join(metrics)} are undefined "
                "there and left out (an undefined row records each)",
                stacklevel=2,
            )
        for metric in metrics:
            rows.undefined(metric, reading_, gone)
    if keep:
        for metric, value in values(defined):
            rows.add(metric, reading_, value, keep)


def cosine_rows(rows: Rows, reading_: str, M: torch.Tensor, experts: list[int]) -> None:
    """The ``cosine`` matrix of vec(M_e) between the experts (A.3), ``M: (E, *)``, ``index`` the
    partner expert. The cosine of a zero matrix is undefined: such an expert is left out, with
    an ``undefined`` row."""
    nonzero = M.flatten(1).norm(dim=1) > 0
    zero = [e for e, ok in zip(experts, nonzero.tolist()) if not ok]
    if zero:
        rows.undefined("cosine", reading_, zero)
    keep = [e for e, ok in zip(experts, nonzero.tolist()) if ok]
    if len(keep) > 1:
        rows.add("cosine", reading_, probes.cosine_matrix(M[nonzero]), keep, index=keep)


def pca_site_rows(
    rows: Rows, site: PCASite, h: torch.Tensor, g: torch.Tensor, experts: list[int], *, total_variance: bool = True
) -> probes.PCAResult:
    """The weighted PCA of one site (A.4/B.5), ``h: (N, D)`` or ``(E, N, D)`` as computed (its
    dtype sets the rounding floor, ``probes.PCAResult.has_variance``), ``g: (N, E)``: per expert
    the explained variance curve, cum-var@k and k@0.9, its ``total_variance`` (unless
    ``total_variance=False``) and, at the ``SUBSPACE_SITES``, the Grassmann rows
    (``subspace_rows``). The routed points of an expert may have no variance (one token, or
    identical points): its explained variance, cum-var and k@0.9 are undefined and left out, with
    ``undefined`` rows (its total variance, 0, stays). Returns the PCA."""
    pca = probes.weighted_pca(h, g.T, vectors=site in SUBSPACE_SITES)
    r, k = reading(pca_site=site), min(PCA_K, h.shape[-1])

    def values(ok):
        sub = pca[ok]
        return [
            ("explained_variance", sub.explained_variance_ratio),
            (f"cumvar@{k}", sub.cumvar_at(k)),
            (f"k@{PCA_TAU}", sub.k_at(PCA_TAU).double()),
        ]

    _defined_rows(
        rows,
        r,
        experts,
        pca.has_variance,
        ["explained_variance", f"cumvar@{k}", f"k@{PCA_TAU}"],
        values,
        "have routed points without variance (one point, or identical points)",
    )
    if total_variance:
        rows.add("total_variance", r, pca.total_variance, experts)
    if site in SUBSPACE_SITES and len(experts) > 1:
        subspace_rows(rows, pca, site, experts)
    return pca


def subspace_rows(rows: Rows, pca: probes.PCAResult, site: PCASite, experts: list[int]) -> None:
    """Grassmann geometry between the experts' principal subspaces (the geometric asymmetry
    paper's "routed representations ... occupy distinct but partially overlapping subspaces").

    Two readings of an expert's subspace: its top ``SUBSPACE_R`` principal directions
    (``subspace=r10``) and its own k@0.9 directions (``subspace=k90``). Rows per expert pair
    (``index`` the partner): ``geodesic``, ``chordal``, ``overlap`` and the same quantities'
    means for independent uniformly random subspaces of the pair's dimensions
    (``geodesic_null`` ...; ``moegeo.grassmann.null_means``); for ``r10`` at the input site
    also the principal angles, one metric ``angle@i`` per i. An expert whose routed points span
    fewer than ``SUBSPACE_R`` dimensions has no top-r subspace (``SUBSPACE_RANK_TOL``) and is left
    out of the ``r10`` rows; its ``k90`` subspace lies within its span and stays, unless its points
    have no variance at all (one distinct point: no principal directions, left out of both; so is
    one whose points vary only by rounding, ``probes.PCAResult.has_variance``). Each
    expert left out gets a ``subspace_excluded`` row (value 1) under that reading, and a warning.
    """
    D = pca.components.shape[-2]  # the ambient dimension (components may hold fewer columns)
    varies = pca.has_variance
    ks = torch.ones(len(experts), dtype=torch.long, device=varies.device)
    if bool(varies.any()):
        ks[varies] = pca[varies].k_at(PCA_TAU)
    R = min(SUBSPACE_R, D)
    lam = pca.eigenvalues.clamp_min(0)
    subspaces = {  # reading -> (each expert's basis, whether it is defined, what an undefined one lacks)
        f"r{SUBSPACE_R}": (
            pca.subspace(R),
            (varies & (lam[:, R - 1] > SUBSPACE_RANK_TOL * lam[:, 0])).tolist(),
            f"span fewer than {R} dimensions; their top-{R} subspace is not defined",
        ),
        "k90": (
            [pca.components[i, :, :k] for i, k in enumerate(ks.tolist())],
            varies.tolist(),
            "have no variance (one distinct point); they have no principal directions",
        ),
    }
    where = rows.where()  # seed, arm, layer, step
    for name, (all_bases, defined, lacks) in subspaces.items():
        r = reading(pca_site=site, subspace=name)
        dropped = [e for e, ok in zip(experts, defined) if not ok]
        if dropped and not rows.key["control"]:
            warnings.warn(
                f"{where}, {r}: the routed points of expert(s) {dropped} {lacks}, and they are left out of "
                "its rows (a subspace_excluded row records each)",
                stacklevel=2,
            )
        if dropped:
            rows.add("subspace_excluded", r, [1.0] * len(dropped), dropped)
        keep = [i for i, ok in enumerate(defined) if ok]
        bases, ids = [all_bases[i] for i in keep], [experts[i] for i in keep]
        if len(ids) < 2:
            continue
        geo = grassmann.pairwise(bases)
        dims = [b.shape[-1] for b in bases]
        null = {(a, b): grassmann.null_means(D, min(a, b), max(a, b)) for a in set(dims) for b in set(dims)}
        for stat in grassmann.STATISTICS:
            rows.add(stat, r, getattr(geo, stat), ids, index=ids)
            rows.add(f"{stat}_null", r, [[null[a, b][stat] for b in dims] for a in dims], ids, index=ids)
        if name != "k90" and site == PCASite.INPUT:
            for i in range(geo.angles.shape[-1]):
                rows.add(f"angle@{i + 1}", r, geo.angles[..., i], ids, index=ids)
