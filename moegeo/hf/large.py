"""The matrix-free path of ``hf.layer_rows``: a layer whose ``(E, N, d, d)`` per-point Jacobians
exceed ``max_bytes`` (docs/huggingface.md, "Large layers"), probed one expert at a time by block
Lanczos on matrix-free JVP/VJP operators, J̄_e in closed form and the PCA sites."""

from __future__ import annotations

import warnings

import torch

from .. import probes
from ..config import JacobianSite
from ..frame import Rows, reading
from ..rows import cosine_rows, pca_site_rows
from .jacobians import tokenwise_jacobians, tokenwise_operator
from .layers import MoECapture

#: block Lanczos on J^T J for sigma_1: relative residual (float64) and Krylov vectors at most
LANCZOS_TOL, LANCZOS_STEPS = 1e-8, 100
#: starts per matrix, as one block of a block Krylov space (``probes.block_lanczos_top``): the
#: guard of two independent starts against a start with little weight on v_1, at about the cost
#: of one run (measured at Mixtral-8x7B's shape: 58 products per token against 2 x 39-43)
LANCZOS_BLOCK = 2
#: the Krylov space of the ``spectrum`` probe's block Lanczos, at most this many vectors per token
#: (sigma_1..sigma_10 of a random Mixtral-8x7B-shaped Jacobian needed 276 at float32's residual)
SPECTRUM_KRYLOV = 360
#: sigma_j of J̄_e on the matrix-free path, j <= this: the spectra claims' leading values (the dual
#: paper's Fig. 1C-D energy at k <= 10), by block Lanczos instead of a full SVD (``top_spectrum``)
MEAN_SPECTRUM_K = 10
#: the relative residual in float32 probes: 1e-8 is below float32's rounding (eps 1.2e-7); at
#: 1e-5 sigma_1 is within about 5e-6 of a singular value (``probes.lanczos_sigma1``)
LANCZOS_TOL_FLOAT32 = 1e-5


def krylov_size(k: int, d: int) -> tuple[int, int]:
    """The block size and the largest Krylov space (vectors) of ``lanczos`` for k values at width d."""
    return (LANCZOS_BLOCK, min(d, LANCZOS_STEPS)) if k == 1 else (k + 2, min(d, SPECTRUM_KRYLOV))


def lanczos(op: probes.JacobianOperator, d: int, dtype: torch.dtype, device, k: int = 1) -> probes.SpectralResult:
    """sigma_1..sigma_k of the matrix-free path: block Lanczos with a block of ``LANCZOS_BLOCK``
    starts (k = 1) or k + 2 (k > 1) and a Krylov space of at most ``LANCZOS_STEPS`` (k = 1) or
    ``SPECTRUM_KRYLOV`` vectors (``krylov_size``), at the probe dtype's residual, the same starts
    on every device (a CPU generator seeded 0). ``values``: ``(*batch, k)``."""
    block, krylov = krylov_size(k, d)
    return probes.block_lanczos_top(
        op,
        k,
        block=block,
        tol=LANCZOS_TOL if dtype == torch.float64 else LANCZOS_TOL_FLOAT32,
        max_iter=-(-krylov // block),  # the basis reaches d when d <= krylov
        generator=torch.Generator().manual_seed(0),
        dtype=dtype,
        device=device,
    )


def matrix_free_rows(
    rows: Rows,
    cap: MoECapture,
    experts: list[int],
    g: torch.Tensor,
    sites: dict,
    max_bytes: int,
    dtype: torch.dtype,
    wanted: set[str],
    jacobian_tokens: int | None,
) -> None:
    """The rows of a layer too large for per-point Jacobians (module doc, "Large models"), one
    live expert at a time (its weights cast to ``dtype`` alone, so the layer's weights are never
    copied whole): per expert the routing-weighted mean over its routed tokens (at most
    ``jacobian_tokens``) of sigma_1(J_e(x_n)) (``pointwise``) or of sigma_1..sigma_10
    (``spectrum``) by block Lanczos on a matrix-free operator, in chunks whose Krylov bases fit in
    ``max_bytes``; J̄_e (the SwiGLU closed form, else autograd) with its leading singular values
    and the cosines (``mean``); the PCA sites (``pca``)."""
    x = cap.x.to(dtype)
    k = pointwise_k(wanted, x.shape[1])
    pointwise, converged, used, jbar = [], [], [], []
    for e in experts:
        w = cap.weights[e : e + 1].to(dtype)
        bias = dict(bg=w.bg, bu=w.bu)
        ge = cap.g[:, e].double()
        if wanted & {"pointwise", "spectrum"}:
            tokens = torch.nonzero(ge > 0).flatten()[:jacobian_tokens]
            s, ok = pointwise_spectra(
                lambda t, w=w, bias=bias, e=e, tokens=tokens: (
                    probes.swiglu_jacobian_operator(w.Wg, w.Wu, w.Wd, x[tokens[t]], **bias)
                    if cap.silu_swiglu
                    else tokenwise_operator(cap.expert_fn(e), cap.x[tokens[t]])
                ),
                ge[tokens],
                max_bytes,
                dtype,
                x,
                k,
            )
            pointwise.append(s)
            converged.append(float(ok))
            used.append(float(len(tokens)))
        if "mean" in wanted:
            jbar.append(
                probes.swiglu_mean_jacobian(w.Wg, w.Wu, w.Wd, x, ge[:, None].to(dtype), **bias)[0]
                if cap.silu_swiglu
                else tokenwise_jacobians(cap.expert_fn(e), cap.x, weights=cap.g[:, e]).to(dtype)
            )
        del w
    r_point, r_mean = reading(jacobian=JacobianSite.POINTWISE), reading(jacobian=JacobianSite.MEAN)
    if pointwise:
        s = torch.stack(pointwise).cpu()
        rows.add("jacobian_tokens", r_point, used, experts)
        spectrum_rows(rows, r_point, s, experts)
        rows.add("sigma1_converged", r_point, converged, experts)
    if jbar:
        jbar = torch.stack(jbar)
        top = top_spectrum(jbar)
        spectrum_rows(rows, r_mean, top.values, experts)
        rows.add("sigma1_converged", r_mean, [float(top.converged)] * len(experts), experts)
        if len(experts) > 1:
            cosine_rows(rows, r_mean, jbar, experts)
    pca_rows(rows, g, sites, experts, max_bytes)


def pointwise_k(wanted: set[str], d: int) -> int:
    """Singular values per token on the matrix-free path: 10 (at most d) with ``spectrum``, else 1."""
    return min(MEAN_SPECTRUM_K, d) if "spectrum" in wanted else 1


def pointwise_spectra(make_op, weights: torch.Tensor, max_bytes: int, dtype: torch.dtype, x: torch.Tensor, k: int):
    """The ``weights``-weighted mean over tokens of sigma_1..sigma_k of their Jacobians, ``(k,)``
    float64 on the CPU, and whether every run converged: ``make_op(t)`` the operator of the tokens
    at positions ``t`` of ``weights``, taken in chunks whose Krylov bases fit in ``max_bytes``."""
    d = x.shape[1]
    block, krylov = krylov_size(k, d)
    chunk = max(1, max_bytes // ((krylov + block) * d * x.element_size()))
    total, ok, n = torch.zeros(k, dtype=torch.float64, device="cpu"), True, len(weights)
    for start in range(0, n, chunk):
        t = torch.arange(start, min(start + chunk, n), device=weights.device)
        res = lanczos(make_op(t), d, dtype, x.device, k=k)
        total += weights[t].cpu() @ res.values.reshape(len(t), k).double().cpu()
        ok &= res.converged
    return total / float(weights.sum()), ok


def spectrum_rows(rows: Rows, r: str, s: torch.Tensor, experts: list[int]) -> None:
    """sigma_1 and, when ``s: (E, k)`` holds more than one value, sigma_1..sigma_k and sigma_k / sigma_1."""
    rows.add("sigma1", r, s[:, 0], experts)
    if s.shape[1] > 1:
        rows.add("sigma", r, s, experts)
        k, ok = s.shape[1], s[:, 0] > 0
        rows.add(f"sigma_ratio@{k}", r, s[ok, k - 1] / s[ok, 0], [e for e, o in zip(experts, ok.tolist()) if o])


def top_spectrum(jbar: torch.Tensor) -> probes.SpectralResult:
    """sigma_1..sigma_k of each ``jbar: (E, d, d)``, k = min(MEAN_SPECTRUM_K, d), by ``lanczos`` on
    the materialised matrices: the leading values the spectra claims read, without a full SVD of
    each d x d matrix. ``values: (E, k)``."""
    d = jbar.shape[-1]
    return lanczos(probes.matrix_operator(jbar), d, jbar.dtype, jbar.device, k=min(MEAN_SPECTRUM_K, d))


def pca_rows(
    rows: Rows, g: torch.Tensor, sites: dict, experts: list[int], max_bytes: int, *, total_variance: bool = False
) -> None:
    """The weighted PCA of every site (``pca_site_rows``), a site whose largest tensor exceeds
    ``max_bytes`` skipped with a warning."""
    for site, h in sites.items():
        N, D = h.shape[-2:]
        side = N if probes.pca.gram_route(N, D) else D  # covariance route (E, D, D), Gram route (E, N, D)
        if len(experts) * side * D * 8 > max_bytes:
            warnings.warn(
                f"layer {rows.key['layer']}: PCA at site {site.value} skipped, its largest tensor "
                f"({len(experts)} x {side} x {D} float64) exceeds max_bytes = {max_bytes}",
                stacklevel=2,
            )
            continue
        pca_site_rows(rows, site, h, g, experts, total_variance=total_variance)
