"""Genetic algorithm baseline with pytorch-holo `DiscreteEvolution` semantics, as init / ask / tell.

Each generation: evaluate all P particles; survivors are those with loss <= the survival quantile
(all of them if that quantile is not finite, as torch's lerp gives inf or nan there); every other slot
is refilled by uniform crossover of two random survivors; then every particle is mutated position-wise.
Loss is -f, so maximising an Ehrlich function; infeasible values (-inf) count as f = 0 in regrets.
"""

import dataclasses
from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray

from llome_jax import archive as archive_lib
from llome_jax import bernoulli


@dataclasses.dataclass(frozen=True)
class GAConfig:
  """Static settings. Defaults of holo's benchmark are mutation = recombine = 1.1 / L."""

  num_particles: int
  num_states: int
  mutation_prob: float
  recombine_prob: float
  survival_quantile: float
  archive_capacity: int = 0
  optimal_value: float = 1.0  # NaN: unknown (a user's scorer), every regret NaN, no stop at the optimum.
  value_floor: float = 0.0  # Regret counts f below it as the floor: 0 for Ehrlich, -inf for a scorer.

  def __post_init__(self):
    if self.num_particles < 1:
      raise ValueError(f'num_particles must be positive, got {self.num_particles}.')
    if self.num_states < 2:
      raise ValueError(f'num_states must be >= 2, got {self.num_states}.')
    if not 0.0 < self.mutation_prob < 1.0:
      raise ValueError(f'mutation_prob must lie in (0, 1), got {self.mutation_prob}.')
    if not 0.0 <= self.recombine_prob < 1.0:
      raise ValueError(f'recombine_prob must lie in [0, 1), got {self.recombine_prob}.')
    if not 0.0 < self.survival_quantile < 1.0:
      raise ValueError(f'survival_quantile must lie in (0, 1), got {self.survival_quantile}.')
    if self.survival_quantile * self.num_particles < 2:
      raise ValueError(
        f'survival_quantile * num_particles = {self.survival_quantile * self.num_particles} < 2: '
        'at least two particles must survive to recombine.'
      )
    if self.archive_capacity < 0:
      raise ValueError(f'archive_capacity must be >= 0, got {self.archive_capacity}.')

  @property
  def token_dtype(self):
    return jnp.int8 if self.num_states <= 127 else jnp.int32


@flax.struct.dataclass
class GAState:
  particles_PxL: Int[Array, 'P L']
  best_solution_L: Int[Array, ' L']
  best_value: Array  # Best f seen so far (-inf until something feasible is seen).
  cumulative_regret: Array
  num_evaluations: Array  # int32: oracle calls so far.
  step: Array  # int32: generations evaluated.
  archive: archive_lib.Archive


def init(initial_solution: Int[Array, ' L'] | Int[Array, 'K L'], *, cfg: GAConfig) -> GAState:
  """All particles start as copies of the initial solution (holo's `_init_group`); given K initial
  sequences [K, L], particle p starts as sequence p mod K."""
  initial = jnp.asarray(initial_solution).astype(cfg.token_dtype)
  initial_KxL = initial if initial.ndim == 2 else initial[None, :]
  x_L = initial_KxL[0]
  return GAState(
    particles_PxL=initial_KxL[jnp.arange(cfg.num_particles) % initial_KxL.shape[0]],
    best_solution_L=x_L,
    best_value=jnp.array(-jnp.inf, jnp.float32),
    cumulative_regret=jnp.zeros((), jnp.float32),
    num_evaluations=jnp.zeros((), jnp.int32),
    step=jnp.zeros((), jnp.int32),
    archive=archive_lib.init(cfg.archive_capacity, x_L.shape[0], cfg.token_dtype),
  )


def ask(state: GAState) -> Int[Array, 'P L']:
  """The particles to evaluate this generation."""
  return state.particles_PxL


def survival_threshold(losses_P: Float[Array, ' P'], quantile: float) -> Array:
  """torch.quantile(losses, q) (linear), with torch's float32 ranks and lerp formula."""
  sorted_P = jnp.sort(losses_P)
  rank = jnp.float32(quantile) * jnp.float32(losses_P.shape[0] - 1)
  below, above = jnp.floor(rank).astype(jnp.int32), jnp.ceil(rank).astype(jnp.int32)
  weight = rank - below.astype(jnp.float32)
  low, high = sorted_P[below], sorted_P[above]
  return jnp.where(weight < 0.5, low + weight * (high - low), high - (high - low) * (1.0 - weight))


def _next_generation(key: PRNGKeyArray, particles_PxL, losses_P, *, cfg: GAConfig):
  num_particles, length = particles_PxL.shape
  parent_key, cross_key, mutate_key = jax.random.split(key, 3)
  threshold = survival_threshold(losses_P, cfg.survival_quantile)
  surviving_P = jnp.where(threshold < jnp.inf, losses_P <= threshold, True)
  num_surviving = jnp.sum(surviving_P, dtype=jnp.int32)
  (survivor_ids_P,) = jnp.nonzero(surviving_P, size=num_particles, fill_value=0)
  draws_2xP = jax.random.randint(parent_key, (2, num_particles), 0, num_surviving)
  parents_2xP = survivor_ids_P[draws_2xP]
  # Child = parent 2, with each position taken from parent 1 with probability recombine_prob.
  flat_particles = particles_PxL.reshape(-1)
  child_flat = particles_PxL[parents_2xP[1]].reshape(-1)

  def from_parent_1(_, flat_index):
    row, column = flat_index // length, flat_index % length
    return flat_particles[parents_2xP[0][row] * length + column]

  def random_token(token_key, flat_index):
    return jax.random.randint(token_key, flat_index.shape, 0, cfg.num_states)

  child_flat = bernoulli.replace(cross_key, cfg.recombine_prob, child_flat, from_parent_1)
  next_PxL = jnp.where(surviving_P[:, None], particles_PxL, child_flat.reshape(num_particles, length))
  next_flat = bernoulli.replace(mutate_key, cfg.mutation_prob, next_PxL.reshape(-1), random_token)
  return next_flat.reshape(num_particles, length)


def _regret(cfg: GAConfig, value: Array) -> Array:
  """Simple regret of a value; f below `value_floor` counts as the floor (for Ehrlich, an infeasible
  -inf counts as f = 0, so regret 1)."""
  return cfg.optimal_value - jnp.maximum(value, cfg.value_floor)


def tell(
  key: PRNGKeyArray, state: GAState, values_P: Float[Array, ' P'], *, cfg: GAConfig
) -> tuple[GAState, dict[str, Array]]:
  """Records this generation's values (f, -inf infeasible) and breeds the next generation.

  Returns:
    The new state and holo's benchmark metrics for this generation.
  """
  particles_PxL = state.particles_PxL
  values_P = values_P.astype(jnp.float32)
  best_index = jnp.argmax(values_P)  # First maximiser, as holo's argmin of the loss.
  improved = values_P[best_index] > state.best_value
  best_value = jnp.where(improved, values_P[best_index], state.best_value)
  regret_best = _regret(cfg, best_value)
  cumulative_regret = state.cumulative_regret + regret_best
  new_state = GAState(
    particles_PxL=_next_generation(key, particles_PxL, -values_P, cfg=cfg),
    best_solution_L=jnp.where(improved, particles_PxL[best_index], state.best_solution_L),
    best_value=best_value,
    cumulative_regret=cumulative_regret,
    num_evaluations=state.num_evaluations + cfg.num_particles,
    step=state.step + 1,
    archive=archive_lib.add(state.archive, particles_PxL, values_P)
    if cfg.archive_capacity
    else state.archive,
  )
  metrics = {
    'step': state.step,
    'num_evaluations': new_state.num_evaluations,
    'best_value': best_value,
    'simple_regret_best': regret_best,
    'simple_regret_last': _regret(cfg, values_P[best_index]),
    'cumulative_regret': cumulative_regret,
    'frac_particles_feasible': jnp.sum(values_P > -jnp.inf, dtype=jnp.int32) / cfg.num_particles,
  }
  return new_state, metrics


def run(
  key: PRNGKeyArray,
  state: GAState,
  *,
  objective: Callable[[Array], Array],
  cfg: GAConfig,
  num_steps: int,
  stop_at_optimum: bool = True,
) -> tuple[GAState, dict[str, Array]]:
  """`num_steps` generations in one `lax.scan`; generation t uses `fold_in(key, step)`.

  With `stop_at_optimum`, generations after the best regret reaches 0 do nothing (no oracle calls), as
  holo's benchmark loop breaks there; their metrics repeat the final ones and `active` is False.
  """

  def generation(state, _):
    def live(state):
      values_P = objective(ask(state))
      new_state, metrics = tell(jax.random.fold_in(key, state.step), state, values_P, cfg=cfg)
      return new_state, metrics | {'active': jnp.array(True)}

    def frozen(state):
      regret = _regret(cfg, state.best_value)
      return state, {
        'step': state.step - 1,
        'num_evaluations': state.num_evaluations,
        'best_value': state.best_value,
        'simple_regret_best': regret,
        'simple_regret_last': regret,
        'cumulative_regret': state.cumulative_regret,
        'frac_particles_feasible': jnp.float32(jnp.nan),  # Nothing was evaluated.
        'active': jnp.array(False),
      }

    if not stop_at_optimum:
      return live(state)
    solved = state.best_value >= cfg.optimal_value
    return jax.lax.cond(solved, frozen, live, state)

  return jax.lax.scan(generation, state, length=num_steps)


def num_steps_for_budget(cfg: GAConfig, num_steps: int, max_evaluations: int | None) -> int:
  """Generations that fit in an oracle budget: whole generations only, at most `num_steps`."""
  if max_evaluations is None:
    return num_steps
  return min(num_steps, max_evaluations // cfg.num_particles)
