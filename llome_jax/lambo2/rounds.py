"""LaMBO-2's rounds (SPEC 7): train a fresh network on every labelled sequence, pick diverse starts among
the best, guide them, and label the proposals; one jitted function per round over a fixed-shape state.

Oracle accounting: a proposal is labelled, and costs one call, only if it is new (not labelled before,
and the first of its copies in the batch); the reference evaluates every proposal, repeats included, so
at equal calls this baseline sees at least as many distinct sequences as the reference's.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray

from llome_jax import archive as archive_lib
from llome_jax import oracle, round_metrics, sharding
from llome_jax.lambo2 import acquisition, guidance, network, selection, training


@dataclasses.dataclass(frozen=True)
class RoundConfig:
  """Attributes: network, train, guide (the parts' settings); num_proposals (starts, hence proposals
  and at most the oracle calls of a round); pool_expansion (the starts are thinned from the best
  pool_expansion x num_proposals labelled sequences); distance ('edit' or 'hamming', of the thinning)."""

  network: network.NetworkConfig
  train: training.TrainConfig = training.TrainConfig()
  guide: guidance.GuideConfig = guidance.GuideConfig()
  num_proposals: int = 2000
  pool_expansion: int = 2
  distance: str = 'edit'

  def __post_init__(self):
    if self.num_proposals < 1 or self.pool_expansion < 1:
      raise ValueError('num_proposals and pool_expansion must be >= 1.')
    if self.distance not in selection.DISTANCES:
      raise ValueError(f'distance must be one of {selection.DISTANCES}, got {self.distance!r}.')


@flax.struct.dataclass
class State:
  """Everything a resumed run needs (the network is retrained from scratch every round)."""

  round: Int[Array, '']  # Rounds completed.
  key: PRNGKeyArray  # Round r uses fold_in(key, r).
  history: archive_lib.Archive  # Every labelled sequence and its value.
  best_value: Float[Array, '']
  best_solution_L: Int[Array, ' L']
  num_evaluations: Int[Array, '']  # Oracle calls so far, seed data included.
  cumulative_regret: Float[Array, '']


def init(
  key: PRNGKeyArray,
  seed_seqs_NxL: Int[Array, 'N L'],
  seed_values_N: Float[Array, ' N'],
  seed_evaluations: int,
  *,
  history_capacity: int,
) -> State:
  """The state before round 1: the seed data labelled, nothing trained."""
  seqs_NxL = jnp.asarray(seed_seqs_NxL, jnp.int32)
  values_N = jnp.asarray(seed_values_N, jnp.float32)
  if seqs_NxL.shape[0] > history_capacity:
    raise ValueError(f'{seqs_NxL.shape[0]} seed sequences exceed the history capacity {history_capacity}.')
  best = jnp.argmax(values_N)
  return State(
    round=jnp.zeros((), jnp.int32),
    key=key,
    history=archive_lib.add(archive_lib.init(history_capacity, seqs_NxL.shape[1]), seqs_NxL, values_N),
    best_value=values_N[best],
    best_solution_L=seqs_NxL[best],
    num_evaluations=jnp.asarray(seed_evaluations, jnp.int32),
    cumulative_regret=jnp.zeros((), jnp.float32),
  )


def seed_metrics(state: State, problem: oracle.Problem | None = None) -> dict[str, Array]:
  """The round-0 row, with the keys of the LLOME binary's round 0 (an Ehrlich function by default)."""
  held = state.history.held()
  regrets = round_metrics.regrets if problem is None else problem.regrets
  regret, _ = regrets(state.history.values_C, held, jnp.inf)
  return {
    'round': state.round,
    'num_evaluations': state.num_evaluations,
    'best_value': state.best_value,
    'simple_regret_best': regret,
    'simple_regret_round': regret,
    'frac_labelled_feasible': round_metrics.feasible_fraction(state.history.values_C, held),
    'num_labelled': state.history.count,
  }


def _train(key, history: archive_lib.Archive, cfg: RoundConfig):
  init_key, fit_key = jax.random.split(key)
  graphdef, params = network.init(cfg.network, init_key)
  held_C = history.held()
  values_C, _, _ = training.standardise(history.values_C, held_C)
  dataset = training.Dataset(tokens_BxL=history.sequences_CxL, values_B=values_C, where_B=held_C)
  params, losses = training.fit(fit_key, params, dataset, graphdef=graphdef, cfg=cfg.train)
  return graphdef, params, {f'train_loss_{k}': v for k, v in losses.items()}


def round_step(
  state: State, *, problem: oracle.Problem, cfg: RoundConfig, mesh: Mesh | None = None
) -> tuple[State, tuple[dict[str, Array], Array, Array, Array]]:
  """One round: train -> starting pool -> guided proposals -> label the new ones.

  Args:
    state: the loop state.
    problem: the oracle (an Ehrlich function, or a user's scorer called on the new proposals only);
      on a mesh, an Ehrlich function is evaluated on each device's own rows.
    cfg: the round's settings.
    mesh: when given, the starts (and all guided work on them) are split across its data axis; the
      network trains replicated (it is small: splitting its batches would only reorder float sums, and
      a run on 1 device would no longer equal one on 8).

  Returns:
    The new state and (metrics, proposals [S, L], their values (-inf where not labelled), which were
    labelled).
  """
  round_key = jax.random.fold_in(state.key, state.round + 1)
  train_key, guide_key, diversity_key = jax.random.split(round_key, 3)
  graphdef, params, metrics = _train(train_key, state.history, cfg)

  history = state.history
  held_C = history.held()
  starts_SxL, _, real_S = selection.starting_pool(
    history.sequences_CxL,
    history.values_C,
    held_C,
    cfg.num_proposals,
    expansion=cfg.pool_expansion,
    distance=cfg.distance,
  )
  net = network.merge(graphdef, params)
  best_M = acquisition.incumbents(net(jnp.where(real_S[:, None], starts_SxL, starts_SxL[:1])))
  if mesh is not None:
    starts_SxL = jax.lax.with_sharding_constraint(starts_SxL, sharding.rows(mesh, cfg.num_proposals))
  proposals_SxL, guide_metrics = guidance.guide(
    guide_key, graphdef, params, starts_SxL, best_M, cfg=cfg.guide
  )
  metrics |= guide_metrics

  new_S = round_metrics.first_occurrences(proposals_SxL, real_S) & ~archive_lib.contains(
    history, proposals_SxL
  )
  values_S = problem.evaluator(mesh)(proposals_SxL, new_S)
  num_labelled = jnp.sum(new_S, dtype=jnp.int32)
  regret_round, regret_best = problem.regrets(values_S, new_S, problem.regret(state.best_value))
  best = jnp.argmax(values_S)
  improved = values_S[best] > state.best_value
  new_state = state.replace(
    round=state.round + 1,
    history=archive_lib.add(history, proposals_SxL, values_S, new_S),
    best_value=jnp.where(improved, values_S[best], state.best_value),
    best_solution_L=jnp.where(improved, proposals_SxL[best], state.best_solution_L),
    num_evaluations=state.num_evaluations + num_labelled,
    cumulative_regret=state.cumulative_regret + regret_best,
  )
  diversity = round_metrics.diversity(proposals_SxL, real_S, diversity_key)
  metrics |= {
    'round': new_state.round,
    'num_evaluations': new_state.num_evaluations,
    'best_value': new_state.best_value,
    'simple_regret_best': regret_best,
    'simple_regret_round': regret_round,
    'cumulative_regret': new_state.cumulative_regret,
    'num_labelled': num_labelled,
    'frac_labelled_feasible': round_metrics.feasible_fraction(values_S, new_S),
    'num_starts': jnp.sum(real_S, dtype=jnp.int32),
    'mean_edit_hamming': jnp.sum(jnp.mean(proposals_SxL != starts_SxL, axis=1) * real_S)
    / jnp.maximum(jnp.sum(real_S), 1),
    'pool_mean_pairwise_hamming': diversity.mean_pairwise_hamming,
    'pool_num_unique': diversity.num_unique,
  }
  return new_state, (metrics, proposals_SxL, values_S, new_S)


def jit_round(mesh: Mesh, state: State, *, problem: oracle.Problem, cfg: RoundConfig):
  """`round_step` jitted with the state replicated on `mesh` (in and out), the state donated."""
  replicated = jax.tree.map(lambda _: sharding.replicated(mesh), state)

  def run(state):
    return round_step(state, problem=problem, cfg=cfg, mesh=mesh)

  return jax.jit(
    run, in_shardings=(replicated,), out_shardings=(replicated, sharding.replicated(mesh)), donate_argnums=0
  )
