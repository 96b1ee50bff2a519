"""mimflow: gradient-flow learning of Gaussian multi-index models in JAX.

Follows Bietti, Bruna & Pillaud-Vivien, *On learning Gaussian multi-index models
with gradient flow, Part I* (arXiv 2310.19793). See DESIGN.md for conventions.
"""

from . import links as links
from . import theory as theory
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._experiments import AbstractExperiment as AbstractExperiment
from ._experiments import FlowExperiment as FlowExperiment
from ._experiments import ReducedExperiment as ReducedExperiment
from ._experiments import padded_normal as padded_normal
from ._fast import AbstractRosenbrock as AbstractRosenbrock
from ._fast import Rodas4 as Rodas4
from ._fast import Rodas5 as Rodas5
from ._fits import RBF as RBF
from ._fits import AbstractFit as AbstractFit
from ._fits import AbstractFittedLink as AbstractFittedLink
from ._fits import AbstractKernel as AbstractKernel
from ._fits import ArcCosine as ArcCosine
from ._fits import HermiteFeatures as HermiteFeatures
from ._fits import KernelRidge as KernelRidge
from ._fits import Mehler as Mehler
from ._fits import Polynomial as Polynomial
from ._fits import RandomFeatures as RandomFeatures
from ._flows import AbstractFlow as AbstractFlow
from ._flows import Dataset as Dataset
from ._flows import Online as Online
from ._flows import PlantedFlow as PlantedFlow
from ._flows import Population as Population
from ._flows import Target as Target
from ._flows import TwoTimescaleFlow as TwoTimescaleFlow
from ._hermite import hermite_1d as hermite_1d
from ._hermite import multi_indices as multi_indices
from ._integrate import Status as Status
from ._integrate import Trajectory as Trajectory
from ._integrate import escape_times as escape_times
from ._integrate import save_times as save_times
from ._integrate import simulate_reduced as simulate_reduced
from ._link import Link as Link
from ._manifold import RetractedSolver as RetractedSolver
from ._manifold import simulate as simulate
from ._overlap import principal_cosines as principal_cosines
from ._overlap import sample_overlap as sample_overlap
from ._plot import figures as figures
from ._reduced import AbstractProblem as AbstractProblem
from ._reduced import Planted as Planted
from ._reduced import TwoTimescale as TwoTimescale
from ._reduced import make_problem as make_problem
from ._reduced import reduced_loss as reduced_loss
from ._reduced import reduced_vector_field as reduced_vector_field
from ._report import summarize as summarize
from ._runner import load_results as load_results
from ._runner import run_config as run_config
from ._stiefel import Stiefel as Stiefel
from ._stiefel import haar_stiefel as haar_stiefel
from ._stiefel import principal_angles as principal_angles
from ._stiefel import project_tangent as project_tangent
from ._stiefel import retract as retract
from ._summaries import loss_area as loss_area
from ._summaries import smooth_escape_time as smooth_escape_time
from ._sweep import SweepPlan as SweepPlan
from ._sweep import grid_points as grid_points
from ._sweep import sweep as sweep

__version__ = "0.1.0"
