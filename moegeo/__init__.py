"""moegeo: the geometry of Mixture-of-Experts layers, and an honest replication harness for
published claims about it (Dual Jacobian-PCA; Liu, 2025)."""

from ._version import __version__ as __version__  # noqa: E402
from .config import Arm, DenseWidth, ExperimentConfig, JacobianSite, LMConfig, Norm, PCASite  # noqa: E402
from .data import make_data  # noqa: E402
from .experiment import run  # noqa: E402
from .frame import summary_table  # noqa: E402
from .model import MLPMoE, expert_params  # noqa: E402
from .routers import route  # noqa: E402
from .sweeps import sweep  # noqa: E402

__all__ = [
    "Arm",
    "DenseWidth",
    "ExperimentConfig",
    "JacobianSite",
    "LMConfig",
    "MLPMoE",
    "Norm",
    "PCASite",
    "expert_params",
    "make_data",
    "route",
    "run",
    "summary_table",
    "sweep",
]
