"""mimflow: gradient-flow learning of Gaussian multi-index models in JAX.

Follows Bietti, Bruna & Pillaud-Vivien, *On learning Gaussian multi-index models
with gradient flow, Part I* (arXiv 2310.19793). See DESIGN.md for conventions.
"""

from . import links as links
from ._hermite import hermite_1d as hermite_1d
from ._hermite import multi_indices as multi_indices
from ._integrate import Status as Status
from ._integrate import Trajectory as Trajectory
from ._integrate import escape_times as escape_times
from ._integrate import save_times as save_times
from ._integrate import simulate_reduced as simulate_reduced
from ._link import Link as Link
from ._overlap import principal_cosines as principal_cosines
from ._overlap import sample_overlap as sample_overlap
from ._reduced import AbstractProblem as AbstractProblem
from ._reduced import Planted as Planted
from ._reduced import TwoTimescale as TwoTimescale
from ._reduced import make_problem as make_problem
from ._reduced import reduced_loss as reduced_loss
from ._reduced import reduced_vector_field as reduced_vector_field

__version__ = "0.1.0"
