"""Flow-matching samplers with log-probabilities, installed as ``flowrl.samplers``.

- ``schedules``: sigma schedules (linear + shift, a diffusers scheduler's own sigmas).
- ``steps``: one step (ODE, Flow-SDE, Dance-SDE, CPS) and its Gaussian log-prob.
- ``ode``: Euler and DPM-Solver++(2M) ODE solvers on any sigma grid.
- ``windows``: which steps are stochastic and trained in each iteration (MixGRPO & co).
- ``tree`` / ``chain`` / ``branch``: rollout drivers producing ``Transitions``.
- ``replay``: log-probs of stored transitions under the current network.
- ``analytic``: an exactly solvable Gaussian flow for tests and demos.
"""

from .analytic import GaussianFlow
from .branch import singular_branch_rollout
from .chain import chain_rollout
from .ode import ODE_SOLVERS, dpm_solver_2m, euler_solve, ode_solve
from .replay import replay_log_prob
from .schedules import (
    linear_sigmas,
    pipeline_grid,
    scheduler_sigmas,
    shift_sigmas,
    subsample_sigmas,
    timesteps_from_sigmas,
)
from .steps import STEP_KINDS, StepOutput, gaussian_log_prob, sample_step, step_log_prob, step_mean, step_std
from .transitions import Rollout, Transitions, Velocity, cat_rollouts, index_cond
from .tree import tree_rollout
from .windows import WINDOW_SCHEDULES, DecayingWindow, ProgressiveWindow, RandomWindow, WindowSchedule, make_window

__all__ = [
    "ODE_SOLVERS",
    "STEP_KINDS",
    "WINDOW_SCHEDULES",
    "DecayingWindow",
    "GaussianFlow",
    "ProgressiveWindow",
    "RandomWindow",
    "Rollout",
    "StepOutput",
    "Transitions",
    "Velocity",
    "WindowSchedule",
    "cat_rollouts",
    "chain_rollout",
    "dpm_solver_2m",
    "euler_solve",
    "gaussian_log_prob",
    "index_cond",
    "linear_sigmas",
    "make_window",
    "ode_solve",
    "pipeline_grid",
    "replay_log_prob",
    "sample_step",
    "scheduler_sigmas",
    "shift_sigmas",
    "singular_branch_rollout",
    "step_log_prob",
    "step_mean",
    "step_std",
    "subsample_sigmas",
    "timesteps_from_sigmas",
    "tree_rollout",
]
