"""The probes as pure functions on tensors, one module per family (a probe never trains, caches
or plots): ``experts`` (Jacobians and the mean Jacobian, A.2), ``spectra`` (singular values and
energy curves, A.5), ``pca`` (routing-weighted PCA, A.4), ``routing`` (routing-weighted means,
loads), ``alignment`` (cross-expert cosines, router-expert coupling) and ``grassmann`` (subspace
geometry). Every public name is also importable from ``moegeo.probes`` itself."""

from . import grassmann
from .alignment import (
    cosine_matrix,
    cosine_null,
    expert_input_directions,
    router_expert_cosines,
    router_similarity,
    score_activation_correlation,
)
from .batched_lanczos import mlp_gram_product, mlp_lanczos_sigma1
from .experts import (
    MAX_JACOBIAN_BYTES,
    JacobianOperator,
    autograd_jacobian_operator,
    expert_jacobians,
    expert_preactivations,
    jacobians,
    matrix_operator,
    mean_jacobian,
    mlp_jacobian_operator,
    moe_jacobian,
    swiglu_hidden,
    swiglu_jacobian_operator,
    swiglu_jacobians,
    swiglu_mean_jacobian,
)
from .pca import PCAResult, weighted_pca
from .routing import expert_mass, load_fractions, load_imbalance, routing_entropy, weighted_mean
from .spectra import (
    SpectralResult,
    arpack_sigma1,
    block_lanczos_top,
    energy_curve,
    k_at,
    lanczos_sigma1,
    power_iteration_sigma1,
    singular_values,
    value_at,
)

__all__ = [name for name in dir() if not name.startswith("_")]
