"""The LLOME outer loop (SPEC 3): each round trains the policy on pairs among the last labelled
sequences, runs the inner loop from the best pairs, and labels n of the generations; rounds are a
`lax.scan` over a fixed-shape `OuterState`, so chunks of rounds run inside one jitted call.
"""

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import archive as archive_lib
from llome_jax import codec as codec_lib
from llome_jax import inner_loop, labelling, oracle, pairs, round_metrics, sharding, train
from llome_jax import model as model_lib
from llome_jax.lambo2 import selection as lambo2_selection

SCHEDULES = ('sft', 'marge', 'dpo')
MUTANT_KINDS = ('blind', 'repair')
# A labelled row's origin, as `row_sources` gives it and labelled/round_NNNN.npz stores it.
SOURCE_POLICY, SOURCE_MUTANT, SOURCE_RECOMBINANT, SOURCE_DUPLICATION = 0, 1, 2, 3


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """Static settings of the loop.

  Attributes:
    schedule: the objective of every round after the first, which is always SFT (the reference's
      `num_sft_rounds: 1` then MargE or DPO rounds); 'sft' trains SFT every round.
    batch_size: rows per optimiser step; every round trains one epoch over its pairs with a fresh
      optimiser state and schedule, continuing from the last round's weights (as a new trainer per
      round in the reference).
    sft_optim, pref_optim: optimiser of SFT rounds and of MargE / DPO rounds.
    objective: loss hyperparameters (its `name` is set per round).
    num_seeds: inner-loop seeds, the better members of the best pairs (200 in the reference).
    temperature_scaling: shift temperatures up when the last round's edits were short (SPEC 3.5).
    num_calibration_bins: likelihood bins of the calibration diagnostic.
    first_round_epochs, epochs: epochs over the pairs in round 1 and in later rounds (the reference
      trains one epoch a round; a small model trained from scratch first has to learn to copy).
    split_rows: split the row-wise work of a round (inner-loop decoding, reference log-probs) across
      the mesh's data axis, so each device decodes 1/N of the trajectories instead of all of them. On
      a fixed policy the split decodes exactly as one device does (tests/test_inner_loop.py); trained
      rounds differ across device counts with or without it, since training's reductions are
      mesh-ordered. Off by default until a multi-device accelerator run has exercised it.
    num_mutants: of the round's `select.num_labels` labels, how many go to mutants (`mutant_kind`) of
      the inner loop's seeds instead of the policy's generations (0: the paper's LLOME). Not in the paper:
      a lever of issue 17, whose diagnosis found that the plateau needs a coordinated 2-site edit, which
      a blind 2-site mutation proposes ~1e-4 of the time and the trained policy 1e-10 to 1e-7. Mutants
      are oracle calls like any label, never repeat a labelled sequence, and stay out of calibration.
    mutant_kind: 'blind' (two uniformly drawn sites) or 'repair' (one uniformly drawn substitution,
      plus a change of each neighbour whose transition into or out of it was never seen in a feasible
      label; see `repair_mutants`). 'repair' assumes feasibility depends on adjacent pairs and learns
      which pairs are safe from the labels alone; rows report how much of the infeasibility the
      assumption explains (`frac_infeasible_explained`).
    mutant_generations: label the round's mutants in this many generations of num_mutants / G, each
      drawn from the best of the last one and its parents after it is labelled (a (mu + lambda) walk
      with truncation to the best value; `_later_mutant_generations`). 1: all at once from the inner
      loop's seeds. Not in the paper: the tuned GA crosses f2's 0.5625 plateau in 19-37 generations of
      250 calls, while a round-based optimiser gets one step per round, 10 in the paper's budget
      (issue 17).
    seed_pool: 1: the seeds are the better members of the best pairs (the paper). E > 1: of the best
      E x num_seeds labelled sequences so far, those at the best value, thinned to num_seeds by
      farthest-first traversal on Hamming distance, then the next best (`_diverse_seeds`); without
      ties, the best num_seeds. Not in the paper: on f2's 0.5625 plateau thousands of
      labelled sequences tie, 95-100% of them in one arrangement of the motifs, and the best pairs
      seed the round from wherever the last batch's ties fell; spreading the seeds over the ties
      walks the plateau from its far ends (issue 17).
    crossover_fraction: of each mutant generation's num_mutants / G rows, this share (rounded) are
      two-point `recombinants` of two of the generation's parents instead of mutants of one (0: none).
      A slot with no recombinant (parents that differ at fewer than two sites) or one that repeats a
      labelled sequence goes unlabelled, so the round pays for fewer calls. Not in the paper: the
      lineages that walk f2's 0.5625 plateau each drift on their own, and a motif rebuilt elsewhere in
      pieces across lineages can only be joined by recombination (issue 17; RESULTS.md measures it).
    duplication_fraction: of each mutant generation's rows, this share (rounded) are segment
      `duplications` of one parent (a piece of it copied over another place of itself), after the
      recombinants (0: none). Not in the paper: on f2's 0.5625 plateau no double substitution
      improves and no neutral one opens an improving substitution, because a motif that overlaps
      another must be rebuilt elsewhere, four elements at once; a copy of the segment that holds 3
      of its 4 elements puts the rebuilt motif one substitution from done (RESULTS.md, issue 17).
    duplication_max_length: the longest segment a duplication copies (lengths are drawn uniformly
      from 2 to this, at most L - 1).
  """

  pairs: pairs.PairConfig
  inner: inner_loop.InnerLoopConfig
  select: labelling.SelectConfig
  schedule: str = 'marge'
  batch_size: int = 64
  sft_optim: train.OptimConfig = train.OptimConfig()
  pref_optim: train.OptimConfig = train.OptimConfig()
  objective: train.ObjectiveConfig = train.ObjectiveConfig()
  num_seeds: int = 200
  temperature_scaling: bool = True
  num_calibration_bins: int = 10
  first_round_epochs: int = 1
  epochs: int = 1
  split_rows: bool = False
  num_mutants: int = 0
  mutant_kind: str = 'blind'
  mutant_generations: int = 1
  seed_pool: int = 1
  crossover_fraction: float = 0.0
  duplication_fraction: float = 0.0
  duplication_max_length: int = 10

  def __post_init__(self):
    if self.mutant_kind not in MUTANT_KINDS:
      raise ValueError(f'mutant_kind must be one of {MUTANT_KINDS}, got {self.mutant_kind!r}.')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'schedule must be one of {SCHEDULES}, got {self.schedule!r}.')
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be positive, got {self.batch_size}.')
    if not 1 <= self.num_seeds <= self.pairs.capacity:
      raise ValueError(f'num_seeds={self.num_seeds} must lie in [1, pair capacity {self.pairs.capacity}].')
    if self.seed_pool < 1:
      raise ValueError(f'seed_pool must be >= 1, got {self.seed_pool}.')
    if self.first_round_epochs < 1 or self.epochs < 1:
      raise ValueError('first_round_epochs and epochs must be >= 1.')
    if self.mutant_generations < 1 or self.num_mutants % self.mutant_generations:
      raise ValueError(
        f'mutant_generations={self.mutant_generations} must be >= 1 and divide '
        f'num_mutants={self.num_mutants}.'
      )
    if not 0.0 <= self.crossover_fraction < 1.0:
      raise ValueError(f'crossover_fraction must lie in [0, 1), got {self.crossover_fraction}.')
    if self.crossover_fraction and not self.num_mutants:
      raise ValueError('crossover_fraction > 0 needs mutant slots (num_mutants > 0) to fill.')
    if not 0.0 <= self.duplication_fraction < 1.0:
      raise ValueError(f'duplication_fraction must lie in [0, 1), got {self.duplication_fraction}.')
    if self.duplication_fraction and not self.num_mutants:
      raise ValueError('duplication_fraction > 0 needs mutant slots (num_mutants > 0) to fill.')
    if self.duplication_max_length < 2:
      raise ValueError(f'duplication_max_length must be >= 2, got {self.duplication_max_length}.')
    if (
      self.num_mutants
      and self.recombinants_per_generation + self.duplications_per_generation > self.slots_per_generation
    ):
      raise ValueError(
        f'crossover_fraction + duplication_fraction = {self.crossover_fraction + self.duplication_fraction} '
        f'asks for more than the {self.slots_per_generation} mutant slots of a generation.'
      )
    if not 0 <= self.num_mutants < self.select.num_labels:
      raise ValueError(
        f'num_mutants={self.num_mutants} must lie in [0, num_labels={self.select.num_labels}): the policy '
        'keeps at least one label.'
      )

  @property
  def slots_per_generation(self) -> int:
    """How many labelled rows each mutant generation fills: num_mutants / mutant_generations."""
    return self.num_mutants // self.mutant_generations

  @property
  def recombinants_per_generation(self) -> int:
    """Of each mutant generation's rows, how many are recombinants (the last ones of it)."""
    return round(self.crossover_fraction * self.slots_per_generation)

  @property
  def duplications_per_generation(self) -> int:
    """Of each mutant generation's rows, how many are segment duplications (the last ones of it)."""
    return round(self.duplication_fraction * self.slots_per_generation)

  def training_of_round(self, round_index: int) -> tuple[str, int]:
    """(objective, epochs) of a round: round 1 is SFT for first_round_epochs; later rounds follow the
    schedule for `epochs` each."""
    return ('sft', self.first_round_epochs) if round_index <= 1 else (self.schedule, self.epochs)


@flax.struct.dataclass
class OuterState:
  """Everything a resumed run needs: checkpointing this makes resume equal an uninterrupted run."""

  round: Int[Array, '']  # Rounds completed (0: only the seed data is labelled).
  key: PRNGKeyArray  # Round r uses fold_in(key, r).
  params: model_lib.Params
  labelled_CxL: Int[Array, 'C L']  # The last labelled batch (round 0: the seed data) ...
  labelled_values_C: Float[Array, ' C']  # ... its f (-inf infeasible) ...
  labelled_where_C: Bool[Array, ' C']  # ... and its real rows.
  history: archive_lib.Archive  # Every labelled sequence and its value.
  best_value: Float[Array, '']
  best_solution_L: Int[Array, ' L']
  num_evaluations: Int[Array, '']  # Oracle calls so far, seed data included.
  cumulative_regret: Float[Array, '']  # Sum over rounds of the best-so-far regret.
  mean_hamming: Float[Array, '']  # The last round's mean edit distance (drives the temperature shift).


def init(
  key: PRNGKeyArray,
  params: model_lib.Params,
  seed_seqs_NxL: Int[Array, 'N L'],
  seed_values_N: Float[Array, ' N'],
  seed_evaluations: int,
  *,
  capacity: int,
  history_capacity: int,
) -> OuterState:
  """The state before round 1: the seed data (e.g. the GA's unique sequences) is the labelled batch.

  Args:
    key: the run's randomness.
    params: the initial policy.
    seed_seqs_NxL, seed_values_N: the seed data; N <= capacity.
    seed_evaluations: oracle calls the seed data cost (the GA's evaluations, duplicates included).
    capacity: rows of the labelled batch, at least max(N, num_labels).
    history_capacity: rows of the labelled history, at least N + rounds * num_labels.
  """
  num_seed, length = seed_seqs_NxL.shape
  if num_seed > capacity:
    raise ValueError(f'{num_seed} seed sequences exceed the labelled capacity {capacity}.')
  pad = capacity - num_seed
  seqs_CxL = jnp.pad(jnp.asarray(seed_seqs_NxL, jnp.int32), ((0, pad), (0, 0)))
  values_C = jnp.pad(jnp.asarray(seed_values_N, jnp.float32), (0, pad), constant_values=-jnp.inf)
  where_C = jnp.arange(capacity) < num_seed
  best = jnp.argmax(values_C)
  return OuterState(
    round=jnp.zeros((), jnp.int32),
    key=key,
    params=params,
    labelled_CxL=seqs_CxL,
    labelled_values_C=values_C,
    labelled_where_C=where_C,
    history=archive_lib.add(archive_lib.init(history_capacity, length), seqs_CxL, values_C, where_C),
    best_value=values_C[best],
    best_solution_L=seqs_CxL[best],
    num_evaluations=jnp.asarray(seed_evaluations, jnp.int32),
    cumulative_regret=jnp.zeros((), jnp.float32),
    mean_hamming=jnp.ones((), jnp.float32),
  )


def seed_metrics(state: OuterState, problem: oracle.Problem | None = None) -> dict[str, Array]:
  """The round-0 row: regret and feasibility of the seed data (of an Ehrlich function by default)."""
  regrets = round_metrics.regrets if problem is None else problem.regrets
  regret, _ = regrets(state.labelled_values_C, state.labelled_where_C, jnp.inf)
  return {
    'round': state.round,
    'num_evaluations': state.num_evaluations,
    'best_value': state.best_value,
    'simple_regret_best': regret,
    'simple_regret_round': regret,
    'frac_labelled_feasible': round_metrics.feasible_fraction(
      state.labelled_values_C, state.labelled_where_C
    ),
    'num_labelled': jnp.sum(state.labelled_where_C, dtype=jnp.int32),
  }


def _chunked_logps(graphdef, params, batch: codec_lib.PairBatch, rows: int, mesh: Mesh | None) -> Array:
  """Summed target log-probs of every pair, `rows` pairs per forward pass (bounded activations)."""

  def logps(_, chunk):
    return train.sequence_logps(graphdef, params, chunk)[0]

  return sharding.chunked_map(logps, batch, rows=rows, mesh=mesh)


def _dataset(key, state: OuterState, *, graphdef, codec, cfg: LoopConfig, objective: str, mesh):
  """This round's training set and the pairs (or triples) it came from, against the frozen reference
  (the policy as it enters the round)."""
  seqs, values, where = state.labelled_CxL, state.labelled_values_C, state.labelled_where_C
  logps = functools.partial(_chunked_logps, graphdef, state.params, rows=cfg.batch_size, mesh=mesh)
  if objective == 'dpo':
    found = pairs.make_triples(key, seqs, values, where, cfg=cfg.pairs)
    chosen = codec.encode_pairs(seqs[found.x_idx_P], seqs[found.yw_idx_P])
    rejected = codec.encode_pairs(seqs[found.x_idx_P], seqs[found.yl_idx_P])
    dataset = train.Batch(
      pairs=chosen,
      where_B=found.where_P,
      ref_logps_B=logps(chosen),
      rejected=rejected,
      ref_rejected_logps_B=logps(rejected),
    )
    return dataset, found, found.num_candidates
  found = pairs.make_pairs(key, seqs, values, where, cfg=cfg.pairs)
  batch = codec.encode_pairs(seqs[found.x_idx_P], seqs[found.y_idx_P])
  if objective == 'sft':
    return train.Batch(pairs=batch, where_B=found.where_P), found, found.num_candidates
  dataset = train.Batch(
    pairs=batch, where_B=found.where_P, rewards_B=found.rewards_P, ref_logps_B=logps(batch)
  )
  return dataset, found, found.num_candidates


def _train(key, params, dataset, *, graphdef, cfg: LoopConfig, objective: str, epochs: int, mesh):
  """`epochs` epochs with a fresh optimiser, data-parallel over `mesh` when given; returns new params
  and summary metrics."""
  optimizer = train.make_optimizer(cfg.sft_optim if objective == 'sft' else cfg.pref_optim)
  step_fn = functools.partial(
    train.train_step,
    graphdef=graphdef,
    optimizer=optimizer,
    objective=dataclasses.replace(cfg.objective, name=objective),
  )
  state = train.init_state(params, optimizer)

  def epoch(state, i):
    return train.fit_epoch(
      state, dataset, jax.random.fold_in(key, i), step_fn=step_fn, batch_size=cfg.batch_size, mesh=mesh
    )

  state, metrics = jax.lax.scan(epoch, state, jnp.arange(epochs))
  ran = ~metrics['skipped'] & (metrics['nonfinite'] == 0)
  return state.params, {
    'train_loss': jnp.sum(jnp.where(ran, metrics['loss'], 0.0)) / jnp.maximum(jnp.sum(ran), 1),
    'train_steps': jnp.sum(~metrics['skipped'], dtype=jnp.int32),
    'train_nonfinite_steps': jnp.sum(metrics['nonfinite'], dtype=jnp.int32),
  }


def _generation_metrics(key, gens: inner_loop.Generations, *, evaluate, shift) -> dict[str, Array]:
  """Validity, edits and diversity of the pool. f of unlabelled generations is a diagnostic only, and
  with `evaluate` None (a user's scorer, whose every call counts) it is not computed: frac_improved is
  NaN."""
  length = gens.outputs_IxRxL.shape[-1]
  inputs_NxL, outputs_NxL = gens.inputs_IxRxL.reshape(-1, length), gens.outputs_IxRxL.reshape(-1, length)
  valid_N = gens.valid_IxR.reshape(-1)
  live_N = jnp.broadcast_to(gens.where_R, gens.valid_IxR.shape).reshape(-1)
  if evaluate is None:  # Placeholders: frac_improved is reported as NaN below.
    f_in_N = f_out_N = jnp.full(valid_N.shape, jnp.nan, jnp.float32)
  else:
    f_in_N, f_out_N = evaluate(inputs_NxL), evaluate(outputs_NxL)
  edits = round_metrics.edit_stats(inputs_NxL, outputs_NxL, f_in_N, f_out_N, valid_N)
  diversity = round_metrics.diversity(outputs_NxL, valid_N, key)
  return {
    'num_generations': jnp.sum(live_N, dtype=jnp.int32),
    'frac_generations_valid': jnp.sum(valid_N) / jnp.maximum(jnp.sum(live_N), 1),
    'mean_edit_hamming': edits.mean_hamming,
    'frac_copied': edits.copy_fraction,
    'frac_improved': edits.improved_fraction if evaluate is not None else jnp.float32(jnp.nan),
    'pool_mean_pairwise_hamming': diversity.mean_pairwise_hamming,
    'pool_num_unique': diversity.num_unique,
    'temperature_shift': shift,
  }


def _seeds(
  state: OuterState, found, num_seeds: int
) -> tuple[Int[Array, 'S L'], Bool[Array, ' S'], Float[Array, ' S']]:
  """The better members of the best pairs; when there are fewer pairs than seeds, the best feasible
  labelled sequences so far fill the remaining slots (the reference would have no seeds left).
  Returns (seeds, which are real, their labelled values)."""
  seed_idx_S, from_pairs_S = pairs.best_pairs(found, state.labelled_values_C, num_seeds)
  better_S = found.better_idx_P[seed_idx_S]
  pair_seeds_SxL = state.labelled_CxL[better_S]
  history = state.history
  stored_values = history.held_values()
  top_values, top_idx = jax.lax.top_k(stored_values, min(num_seeds, history.capacity))
  num_from_pairs = jnp.sum(from_pairs_S, dtype=jnp.int32)
  fill_S = jnp.clip(jnp.arange(num_seeds) - num_from_pairs, 0, top_idx.shape[0] - 1)
  fill_where_S = (jnp.arange(num_seeds) - num_from_pairs < top_idx.shape[0]) & (top_values[fill_S] > -jnp.inf)
  seeds_SxL = jnp.where(from_pairs_S[:, None], pair_seeds_SxL, history.sequences_CxL[top_idx[fill_S]])
  where_S = from_pairs_S | fill_where_S
  values_S = jnp.where(from_pairs_S, state.labelled_values_C[better_S], top_values[fill_S])
  return seeds_SxL.astype(jnp.int32), where_S, jnp.where(where_S, values_S, -jnp.inf)


def _diverse_seeds(state: OuterState, num_seeds: int, pool: int):
  """Seeds spread over the best labelled sequences (`seed_pool`): of the best `pool` x num_seeds so far
  (newer first among equal values), those holding the best value, thinned farthest-first on Hamming
  distance when there are more than num_seeds, then the next best by value. Without ties this is the
  best num_seeds, as `_seeds`' fallback takes them. Returns (seeds, which are real, their labelled
  values), as `_seeds`."""
  history = state.history
  capacity = history.capacity
  stored_values = history.held_values()
  # top_k keeps the lower index among ties: on the reversed history, the newer row.
  top_values, top_rev = jax.lax.top_k(stored_values[::-1], min(pool * num_seeds, capacity))
  top_idx = capacity - 1 - top_rev
  best_tier = (top_values == top_values[0]) & (top_values > -jnp.inf)
  chosen_S, real_S = lambo2_selection.farthest_first(
    history.sequences_CxL[top_idx], top_values, best_tier, num_seeds, distance='hamming'
  )
  num_tied = jnp.sum(real_S, dtype=jnp.int32)  # min(ties, num_seeds).
  # The remaining slots take the candidates after the tier, best first.
  fill_S = jnp.sum(best_tier, dtype=jnp.int32) + jnp.arange(num_seeds) - num_tied
  in_range_S = fill_S < top_idx.shape[0]
  fill_S = jnp.clip(fill_S, 0, top_idx.shape[0] - 1)
  pick_S = jnp.where(real_S, chosen_S, fill_S)
  where_S = (real_S | in_range_S) & (top_values[pick_S] > -jnp.inf)
  return (
    history.sequences_CxL[top_idx[pick_S]].astype(jnp.int32),
    where_S,
    jnp.where(where_S, top_values[pick_S], -jnp.inf),
  )


def two_site_mutants(
  key: PRNGKeyArray, seeds_SxL: Int[Array, 'S L'], seed_where_S: Bool[Array, ' S'], num: int, num_states: int
) -> tuple[Int[Array, 'M L'], Bool[Array, ' M']]:
  """`num` blind mutants: each a uniformly drawn real seed with two distinct positions set to other
  states, uniformly. Rows are unreal (False) when there is no real seed."""
  seed_key, first_key, second_key, state_key = jax.random.split(key, 4)
  length = seeds_SxL.shape[1]
  logits_S = jnp.where(seed_where_S, 0.0, -jnp.inf)
  rows_M = jax.random.categorical(seed_key, jnp.where(jnp.any(seed_where_S), logits_S, 0.0), shape=(num,))
  first_M = jax.random.randint(first_key, (num,), 0, length)
  second_M = (first_M + jax.random.randint(second_key, (num,), 1, length)) % length
  shifts_Mx2 = jax.random.randint(state_key, (num, 2), 1, num_states)
  mutants_MxL = seeds_SxL[rows_M]
  for column, positions_M in enumerate((first_M, second_M)):
    old_M = mutants_MxL[jnp.arange(num), positions_M]
    mutants_MxL = mutants_MxL.at[jnp.arange(num), positions_M].set(
      (old_M + shifts_Mx2[:, column]) % num_states
    )
  return mutants_MxL, jnp.broadcast_to(jnp.any(seed_where_S), (num,))


def certified_transitions(history: archive_lib.Archive, num_states: int) -> Bool[Array, 'V V']:
  """[a, b] is True when token b follows token a somewhere in a feasible labelled sequence: a transition
  the labels prove allowed. Nothing about the constraint is read; only the oracle's values are."""
  held_C = history.held()
  feasible_C = held_C & jnp.isfinite(history.values_C)
  seqs_CxL = history.sequences_CxL
  pair_CxP = seqs_CxL[:, :-1] * num_states + seqs_CxL[:, 1:]
  weight_CxP = jnp.broadcast_to(feasible_C[:, None], pair_CxP.shape).astype(jnp.int32)
  seen = jnp.zeros(num_states * num_states, jnp.int32).at[pair_CxP.reshape(-1)].add(weight_CxP.reshape(-1))
  return (seen > 0).reshape(num_states, num_states)


def infeasible_explained(history: archive_lib.Archive, certified_VxV: Array) -> Array:
  """Of the infeasible labelled sequences, the fraction holding a transition no feasible label holds:
  1.0 when an adjacent-pair model of feasibility is consistent with every label (NaN if none is
  infeasible)."""
  held_C = history.held()
  infeasible_C = held_C & ~jnp.isfinite(history.values_C)
  seqs_CxL = history.sequences_CxL
  unproven_C = jnp.any(~certified_VxV[seqs_CxL[:, :-1], seqs_CxL[:, 1:]], axis=1)
  count = jnp.sum(infeasible_C)
  return jnp.where(count > 0, jnp.sum(unproven_C & infeasible_C) / jnp.maximum(count, 1), jnp.nan)


def repair_mutants(
  key: PRNGKeyArray,
  seeds_SxL: Int[Array, 'S L'],
  seed_where_S: Bool[Array, ' S'],
  num: int,
  certified_VxV: Bool[Array, 'V V'],
) -> tuple[Int[Array, 'M L'], Bool[Array, ' M']]:
  """`num` mutants that repair what a substitution breaks: each a uniformly drawn real seed with one
  uniformly drawn position set to another state, uniformly; then each neighbour whose transition with
  the new token is not certified (`certified_transitions`) is set to a state, uniformly among those
  certified on both of its sides. A neighbour with no such state stays (the mutant may be infeasible).

  At f2's 0.4219 plateau every improving double substitution is an adjacent pair in which the token
  completing a motif element cannot follow its left neighbour (issue 17). A blind pair hits one with
  probability 2 / (L (L - 1)) x 1 / (v - 1) x g / (v - 1) (g good neighbour states); this kernel with
  1 / L x 1 / (v - 1) x g / f (f certified fits, f >= g once the labels certify the good states):
  (L - 1) (v - 1) / (2 f) times as often, about 20x on f2.
  """
  seed_key, position_key, state_key, left_key, right_key = jax.random.split(key, 5)
  num_states = certified_VxV.shape[0]
  length = seeds_SxL.shape[1]
  logits_S = jnp.where(seed_where_S, 0.0, -jnp.inf)
  rows_M = jax.random.categorical(seed_key, jnp.where(jnp.any(seed_where_S), logits_S, 0.0), shape=(num,))
  at_M = jax.random.randint(position_key, (num,), 0, length)
  mutants_MxL = seeds_SxL[rows_M]
  index_M = jnp.arange(num)

  def near(offset):  # (position, token there, whether it is inside), `offset` places from the edit.
    where_M = at_M + offset
    clipped_M = jnp.clip(where_M, 0, length - 1)
    return clipped_M, mutants_MxL[index_M, clipped_M], (where_M >= 0) & (where_M < length)

  new_M = (mutants_MxL[index_M, at_M] + jax.random.randint(state_key, (num,), 1, num_states)) % num_states
  mutants_MxL = mutants_MxL.at[index_M, at_M].set(new_M)
  every_MxV = jnp.ones((num, num_states), bool)
  for offset, side_key in ((-1, left_key), (1, right_key)):
    where_M, neighbour_M, inside_M = near(offset)
    _, beyond_M, beyond_inside_M = near(2 * offset)
    if offset < 0:  # Neighbour -> new token must hold, and beyond -> neighbour.
      broken_M = ~certified_VxV[neighbour_M, new_M]
      fits_MxV = certified_VxV[:, new_M].T & jnp.where(
        beyond_inside_M[:, None], certified_VxV[beyond_M], every_MxV
      )
    else:  # New token -> neighbour, and neighbour -> beyond.
      broken_M = ~certified_VxV[new_M, neighbour_M]
      fits_MxV = certified_VxV[new_M] & jnp.where(
        beyond_inside_M[:, None], certified_VxV[:, beyond_M].T, every_MxV
      )
    repair_M = jax.random.categorical(side_key, jnp.where(fits_MxV, 0.0, -jnp.inf))
    change_M = inside_M & broken_M & jnp.any(fits_MxV, axis=1)
    mutants_MxL = mutants_MxL.at[index_M, where_M].set(jnp.where(change_M, repair_M, neighbour_M))
  return mutants_MxL, jnp.broadcast_to(jnp.any(seed_where_S), (num,))


def recombinants(
  key: PRNGKeyArray,
  parents_SxL: Int[Array, 'S L'],
  parent_where_S: Bool[Array, ' S'],
  num: int,
  certified_VxV: Bool[Array, 'V V'] | None = None,
) -> tuple[Int[Array, 'M L'], Bool[Array, ' M']]:
  """`num` two-point recombinants: each a uniformly drawn real parent A with a segment [i, j) taken from
  another real parent B, drawn uniformly. The segment holds at least one site where A and B differ and
  leaves out at least one, so the child is neither parent: a site d1 of the differences is drawn to go
  in and another, d2, to stay out, and i and j uniformly among the cuts that keep d1 in and d2 out. With
  `certified` transitions (`certified_transitions`), only cuts whose new junctions (A[i-1] -> B[i] and
  B[j-1] -> A[j]) are certified are drawn, so two feasible parents give a child with no transition the
  labels have not shown feasible. A row is unreal (False) when its parents differ at fewer than two
  sites or no such cut exists.

  Not in the paper (issue 17): on f2's 0.5625 plateau the parents tie in one arrangement of the
  motifs, and each lineage drifts on its own; a partial copy of a motif held in two lineages can only
  be joined by recombination, the GA's other operator.
  """
  a_key, b_key, in_key, out_key, start_key, end_key = jax.random.split(key, 6)
  num_parents, length = parents_SxL.shape
  logits_S = jnp.where(parent_where_S, 0.0, -jnp.inf)
  a_M = jax.random.categorical(a_key, jnp.where(jnp.any(parent_where_S), logits_S, 0.0), shape=(num,))
  others_MxS = jnp.where(jnp.arange(num_parents)[None, :] == a_M[:, None], -jnp.inf, logits_S[None, :])
  has_other_M = jnp.any(others_MxS > -jnp.inf, axis=1)
  b_M = jax.random.categorical(b_key, jnp.where(has_other_M[:, None], others_MxS, 0.0))
  a_MxL, b_MxL = parents_SxL[a_M], parents_SxL[b_M]
  differ_MxL = a_MxL != b_MxL
  sites_L = jnp.arange(length)
  d_in_M = jax.random.categorical(in_key, jnp.where(differ_MxL, 0.0, -jnp.inf))
  out_MxL = differ_MxL & (sites_L[None, :] != d_in_M[:, None])
  d_out_M = jax.random.categorical(out_key, jnp.where(out_MxL, 0.0, -jnp.inf))
  # Starts i in [0, L), ends j in (0, L] (index j - 1), keeping d_in in [i, j) and d_out out of it.
  before_M = d_out_M < d_in_M  # d_out left of the segment: d_out < i <= d_in < j.
  start_lo_M = jnp.where(before_M, d_out_M + 1, 0)
  end_hi_M = jnp.where(before_M, length, d_out_M)
  ends_L = sites_L + 1
  start_ok_MxL = (sites_L[None, :] >= start_lo_M[:, None]) & (sites_L[None, :] <= d_in_M[:, None])
  end_ok_MxL = (ends_L[None, :] > d_in_M[:, None]) & (ends_L[None, :] <= end_hi_M[:, None])
  if certified_VxV is not None:
    left_MxL = jnp.roll(a_MxL, 1, axis=1)  # A[i - 1] before B[i]; i = 0 has no junction.
    start_ok_MxL &= (sites_L[None, :] == 0) | certified_VxV[left_MxL, b_MxL]
    right_MxL = jnp.roll(a_MxL, -1, axis=1)  # B[j - 1] before A[j]; j = L has no junction.
    end_ok_MxL &= (ends_L[None, :] == length) | certified_VxV[b_MxL, right_MxL]
  start_M = jax.random.categorical(start_key, jnp.where(start_ok_MxL, 0.0, -jnp.inf))
  end_M = jax.random.categorical(end_key, jnp.where(end_ok_MxL, 0.0, -jnp.inf)) + 1
  inside_MxL = (sites_L[None, :] >= start_M[:, None]) & (sites_L[None, :] < end_M[:, None])
  real_M = (
    jnp.any(parent_where_S)
    & has_other_M
    & (jnp.sum(differ_MxL, axis=1) >= 2)
    & jnp.any(start_ok_MxL, axis=1)
    & jnp.any(end_ok_MxL, axis=1)
  )
  children_MxL = jnp.where(real_M[:, None] & inside_MxL, b_MxL, a_MxL)
  return children_MxL, real_M


def duplications(
  key: PRNGKeyArray,
  parents_SxL: Int[Array, 'S L'],
  parent_where_S: Bool[Array, ' S'],
  num: int,
  max_length: int,
  certified_VxV: Bool[Array, 'V V'] | None = None,
) -> tuple[Int[Array, 'M L'], Bool[Array, ' M']]:
  """`num` segment duplications: a uniformly drawn real parent A with A[s:s+l] copied over A[d:d+l]
  (copied from A as it was, so the two may overlap). The length l is uniform in [2, max_length] (at
  most L - 1) and the source s uniform in [0, L - l]; the destination d is uniform among those where
  the copy changes A and, with `certified` transitions, both new junctions (A[d-1] -> A[s] and
  A[s+l-1] -> A[d+l]) are certified. Inside the copy every transition is one of A's own, so a
  feasible parent gives a child with no transition the labels have not shown feasible. A row is unreal
  (False) when no such destination exists.

  Not in the paper (issue 17): the GA's and the policy's edits rebuild a motif that another overlaps
  one element at a time, each step neutral; a duplication moves the three elements it holds at once.
  """
  a_key, length_key, source_key, dest_key = jax.random.split(key, 4)
  length = parents_SxL.shape[1]
  longest = min(max_length, length - 1)
  logits_S = jnp.where(parent_where_S, 0.0, -jnp.inf)
  a_M = jax.random.categorical(a_key, jnp.where(jnp.any(parent_where_S), logits_S, 0.0), shape=(num,))
  a_MxL = parents_SxL[a_M]
  len_M = jax.random.randint(length_key, (num,), 2, longest + 1)
  source_M = jax.random.randint(source_key, (num,), 0, length - len_M + 1)
  sites_L, offsets_T = jnp.arange(length), jnp.arange(longest)
  in_copy_MxT = offsets_T[None, :] < len_M[:, None]
  copy_MxT = jnp.take_along_axis(a_MxL, jnp.minimum(source_M[:, None] + offsets_T, length - 1), axis=1)
  # What each destination d would overwrite: A[d + t] for t < l.
  under_MxLxT = jax.vmap(lambda a_L: a_L[jnp.minimum(sites_L[:, None] + offsets_T[None, :], length - 1)])(
    a_MxL
  )
  changes_MxL = jnp.any((copy_MxT[:, None, :] != under_MxLxT) & in_copy_MxT[:, None, :], axis=2)
  ok_MxL = (sites_L[None, :] <= (length - len_M)[:, None]) & changes_MxL
  if certified_VxV is not None:
    first_M = copy_MxT[:, 0]
    last_M = jnp.take_along_axis(a_MxL, (source_M + len_M - 1)[:, None], axis=1)[:, 0]
    left_MxL = jnp.roll(a_MxL, 1, axis=1)  # A[d - 1]; d = 0 has no left junction.
    ok_MxL &= (sites_L[None, :] == 0) | certified_VxV[left_MxL, first_M[:, None]]
    end_MxL = sites_L[None, :] + len_M[:, None]  # d + l; d + l = L has no right junction.
    right_MxL = jnp.take_along_axis(a_MxL, jnp.minimum(end_MxL, length - 1), axis=1)
    ok_MxL &= (end_MxL == length) | certified_VxV[last_M[:, None], right_MxL]
  dest_M = jax.random.categorical(dest_key, jnp.where(ok_MxL, 0.0, -jnp.inf))
  real_M = jnp.any(parent_where_S) & jnp.any(ok_MxL, axis=1)
  inside_MxL = (sites_L[None, :] >= dest_M[:, None]) & (sites_L[None, :] < (dest_M + len_M)[:, None])
  from_MxL = jnp.clip(sites_L[None, :] - dest_M[:, None] + source_M[:, None], 0, length - 1)
  copied_MxL = jnp.take_along_axis(a_MxL, from_MxL, axis=1)
  children_MxL = jnp.where(real_M[:, None] & inside_MxL, copied_MxL, a_MxL)
  return children_MxL, real_M


def _draw_mutants(
  key,
  parents_SxL,
  parent_where_S,
  num,
  *,
  num_states,
  certified,
  num_recombinants=0,
  num_duplications=0,
  duplication_max_length=2,
):
  """`num` mutants of the real parents: repair mutants when `certified` transitions are given, blind
  2-site ones otherwise; of them, `num_recombinants` and then the last `num_duplications` are
  `recombinants` and segment `duplications` instead (with certified junctions when `certified` is
  given)."""
  num_mutated = num - num_recombinants - num_duplications
  if certified is not None:
    mutants = repair_mutants(key, parents_SxL, parent_where_S, num_mutated, certified)
  else:
    mutants = two_site_mutants(key, parents_SxL, parent_where_S, num_mutated, num_states)
  parts = [mutants]
  if num_recombinants:
    parts.append(
      recombinants(jax.random.fold_in(key, 1), parents_SxL, parent_where_S, num_recombinants, certified)
    )
  if num_duplications:
    parts.append(
      duplications(
        jax.random.fold_in(key, 2),
        parents_SxL,
        parent_where_S,
        num_duplications,
        duplication_max_length,
        certified,
      )
    )
  if len(parts) == 1:
    return mutants
  seqs = jnp.concatenate([part[0].astype(mutants[0].dtype) for part in parts])
  return seqs, jnp.concatenate([part[1] for part in parts])


def _with_mutants(
  key,
  selection: labelling.Selection,
  seeds_SxL,
  seed_where_S,
  history,
  *,
  num,
  num_states,
  certified=None,
  num_recombinants=0,
  num_duplications=0,
  duplication_max_length=2,
):
  """The policy's selection followed by `num` mutant slots (repair mutants when `certified` transitions
  are given, blind ones otherwise); a mutant already labelled, or repeating an earlier row, is not
  labelled. Returns (the selection, which rows are the policy's)."""
  mutants_MxL, mutant_where_M = _draw_mutants(
    key,
    seeds_SxL,
    seed_where_S,
    num,
    num_states=num_states,
    certified=certified,
    num_recombinants=num_recombinants,
    num_duplications=num_duplications,
    duplication_max_length=duplication_max_length,
  )
  seqs_NxL = jnp.concatenate([selection.seqs_NxL, mutants_MxL.astype(selection.seqs_NxL.dtype)])
  where_N = jnp.concatenate([selection.where_N, mutant_where_M])
  where_N = round_metrics.first_occurrences(seqs_NxL, where_N) & ~archive_lib.contains(history, seqs_NxL)
  policy_N = jnp.arange(seqs_NxL.shape[0]) < selection.seqs_NxL.shape[0]
  combined = selection.replace(
    seqs_NxL=jnp.where(where_N[:, None], seqs_NxL, 0),
    likelihood_N=jnp.concatenate([selection.likelihood_N, jnp.full((num,), jnp.nan, jnp.float32)]),
    where_N=where_N,
  )
  return combined, policy_N


def row_sources(cfg: LoopConfig, num_rows: int) -> Int[Array, ' N']:
  """Where each of a round's `num_rows` labelled rows comes from: `SOURCE_POLICY` for the policy's rows,
  which come first, then the mutant generations' num_mutants / G rows each: in every generation the
  last `duplications_per_generation` are `SOURCE_DUPLICATION`, the `recombinants_per_generation` before
  them `SOURCE_RECOMBINANT` and the rest `SOURCE_MUTANT`.
  The one statement of a round's row layout: the round's metrics and the saved labels both read it."""
  per_generation = cfg.slots_per_generation
  offset_N = jnp.arange(num_rows) - (num_rows - cfg.num_mutants)  # Into the mutant rows.
  slot_N = offset_N % max(per_generation, 1)  # Within its generation: mutants, recombinants, duplications.
  duplication_N = (offset_N >= 0) & (slot_N >= per_generation - cfg.duplications_per_generation)
  recombinant_N = (
    (offset_N >= 0)
    & ~duplication_N
    & (slot_N >= per_generation - cfg.duplications_per_generation - cfg.recombinants_per_generation)
  )
  mixed_N = jnp.where(
    duplication_N, SOURCE_DUPLICATION, jnp.where(recombinant_N, SOURCE_RECOMBINANT, SOURCE_MUTANT)
  )
  return jnp.where(offset_N < 0, SOURCE_POLICY, mixed_N)


def _later_mutant_generations(
  key,
  selection: labelling.Selection,
  policy_N,
  values_N,
  parents_SxL,
  parent_values_S,
  history,
  *,
  cfg: LoopConfig,
  num_states: int,
  evaluate,
):
  """Mutant generations 2..G of a round, each labelled before the next is drawn (`mutant_generations`).

  The parents of a generation are the `num_seeds` best of the last generation's labelled mutants and
  its own parents, ties going to the mutants, and mutants are drawn from those that hold the best value
  (the GA's truncation selection): an improvement is exploited at once, and on a plateau each neutral
  mutant becomes a parent, so the plateau is walked instead of resampled around the same seeds. Repair
  mutants certify transitions from every label so far, this round's included. Returns the selection,
  its policy mask and its values, each extended by G - 1 generations of `num_mutants / G` rows.
  """
  per_generation = cfg.slots_per_generation
  seq_dtype = selection.seqs_NxL.dtype

  def generation_step(carry, generation):
    parents_SxL, parent_values_S, last_MxL, last_values_M, history = carry
    pool_values = jnp.concatenate([last_values_M, parent_values_S])
    parent_values_S, top_S = jax.lax.top_k(pool_values, parents_SxL.shape[0])  # Ties: lower index.
    parents_SxL = jnp.concatenate([last_MxL.astype(parents_SxL.dtype), parents_SxL])[top_S]
    certified = certified_transitions(history, num_states) if cfg.mutant_kind == 'repair' else None
    mutants_MxL, where_M = _draw_mutants(
      jax.random.fold_in(key, generation),
      parents_SxL,
      (parent_values_S == parent_values_S[0]) & (parent_values_S > -jnp.inf),
      per_generation,
      num_states=num_states,
      certified=certified,
      num_recombinants=cfg.recombinants_per_generation,
      num_duplications=cfg.duplications_per_generation,
      duplication_max_length=cfg.duplication_max_length,
    )
    mutants_MxL = mutants_MxL.astype(seq_dtype)
    where_M = round_metrics.first_occurrences(mutants_MxL, where_M) & ~archive_lib.contains(
      history, mutants_MxL
    )
    mutants_MxL = jnp.where(where_M[:, None], mutants_MxL, 0)
    values_M = evaluate(mutants_MxL, where_M)
    history = archive_lib.add(history, mutants_MxL, values_M, where_M)
    return (parents_SxL, parent_values_S, mutants_MxL, values_M, history), (mutants_MxL, where_M, values_M)

  # A scan, not a Python loop: the round program compiles one generation whatever G is.
  history = archive_lib.add(history, selection.seqs_NxL, values_N, selection.where_N)
  carry = (
    parents_SxL,
    parent_values_S,
    selection.seqs_NxL[-per_generation:],
    values_N[-per_generation:],
    history,
  )
  generations = jnp.arange(1, cfg.mutant_generations, dtype=jnp.int32)
  _, (mutants_GxMxL, where_GxM, values_GxM) = jax.lax.scan(generation_step, carry, generations)
  num_later = (cfg.mutant_generations - 1) * per_generation
  combined = selection.replace(
    seqs_NxL=jnp.concatenate([selection.seqs_NxL, mutants_GxMxL.reshape(num_later, -1)]),
    likelihood_N=jnp.concatenate([selection.likelihood_N, jnp.full((num_later,), jnp.nan, jnp.float32)]),
    where_N=jnp.concatenate([selection.where_N, where_GxM.reshape(num_later)]),
  )
  policy_N = jnp.concatenate([policy_N, jnp.zeros((num_later,), bool)])
  return combined, policy_N, jnp.concatenate([values_N, values_GxM.reshape(num_later)])


def round_step(
  state: OuterState,
  *,
  graphdef: nnx.GraphDef,
  problem: oracle.Problem,
  codec: codec_lib.CompactCodec,
  cfg: LoopConfig,
  objective: str,
  epochs: int,
  mesh: Mesh | None = None,
) -> tuple[OuterState, tuple[dict[str, Array], labelling.Selection, Array]]:
  """One round: pairs -> `epochs` epochs of `objective` -> inner loop -> label selection -> oracle.

  The only oracle calls that the algorithm sees are on the selected sequences; f of the other
  generations enters `frac_improved` alone, a logged diagnostic computed for Ehrlich functions only
  (a user's scorer is called on the selected sequences and nothing else). With a `mesh`, training is
  data-parallel (each batch split across the data axis); with `cfg.split_rows` too, the row-wise work
  (decoding the inner loop, reference log-probs) is split as well.

  Returns:
    The new state, and (metrics, the selection, the selected sequences' values).
  """
  rows_mesh = mesh if cfg.split_rows else None
  round_key = jax.random.fold_in(state.key, state.round + 1)
  pair_key, train_key, inner_key, select_key, diversity_key = jax.random.split(round_key, 5)

  # ------------------------------------------------------------------ Train on pairs.
  dataset, found, num_candidates = _dataset(
    pair_key, state, graphdef=graphdef, codec=codec, cfg=cfg, objective=objective, mesh=rows_mesh
  )
  params, metrics = _train(
    train_key,
    state.params,
    dataset,
    graphdef=graphdef,
    cfg=cfg,
    objective=objective,
    epochs=epochs,
    mesh=mesh,
  )
  metrics |= {'num_pairs': jnp.sum(found.where_P, dtype=jnp.int32), 'num_pair_candidates': num_candidates}

  # ------------------------------------------------------------------ Inner loop, no oracle.
  if cfg.seed_pool > 1:
    seeds_SxL, seed_where_S, seed_values_S = _diverse_seeds(state, cfg.num_seeds, cfg.seed_pool)
  else:
    seeds_SxL, seed_where_S, seed_values_S = _seeds(state, found, cfg.num_seeds)
  shift = inner_loop.collapse_shift(state.mean_hamming) if cfg.temperature_scaling else jnp.float32(0.0)
  gens = inner_loop.run(
    inner_key, graphdef, params, seeds_SxL, seed_where_S, shift, codec=codec, cfg=cfg.inner, mesh=rows_mesh
  )
  evaluate = problem.evaluator(mesh)
  diagnostic = evaluate if problem.host is None else None
  metrics |= _generation_metrics(diversity_key, gens, evaluate=diagnostic, shift=shift)

  # ------------------------------------------------------------------ Label n generations.
  length = seeds_SxL.shape[-1]
  select_cfg = dataclasses.replace(cfg.select, num_labels=cfg.select.num_labels - cfg.num_mutants)
  selection = labelling.select(
    select_key,
    gens.outputs_IxRxL.reshape(-1, length),
    gens.mean_logp_IxR.reshape(-1),
    gens.valid_IxR.reshape(-1),
    state.history,
    cfg=select_cfg,
  )
  policy_N = jnp.ones(selection.where_N.shape, bool)
  repairing = cfg.num_mutants and cfg.mutant_kind == 'repair'
  certified = certified_transitions(state.history, codec.num_states) if repairing else None
  mutant_key = jax.random.fold_in(select_key, 1)
  if cfg.num_mutants:
    selection, policy_N = _with_mutants(
      mutant_key,
      selection,
      seeds_SxL,
      seed_where_S,
      state.history,
      num=cfg.slots_per_generation,
      num_states=codec.num_states,
      certified=certified,
      num_recombinants=cfg.recombinants_per_generation,
      num_duplications=cfg.duplications_per_generation,
      duplication_max_length=cfg.duplication_max_length,
    )
  values_N = evaluate(selection.seqs_NxL, selection.where_N)
  if cfg.num_mutants and cfg.mutant_generations > 1:
    selection, policy_N, values_N = _later_mutant_generations(
      mutant_key,
      selection,
      policy_N,
      values_N,
      seeds_SxL,
      seed_values_S,
      state.history,
      cfg=cfg,
      num_states=codec.num_states,
      evaluate=evaluate,
    )
  num_labelled = jnp.sum(selection.where_N, dtype=jnp.int32)
  regret_round, regret_best = problem.regrets(values_N, selection.where_N, problem.regret(state.best_value))
  calibration = round_metrics.calibration(
    jnp.where(policy_N, selection.likelihood_N, 0.0),
    values_N,
    selection.where_N & policy_N,
    num_bins=cfg.num_calibration_bins,
  )
  best = jnp.argmax(values_N)
  improved = values_N[best] > state.best_value
  pad = state.labelled_CxL.shape[0] - values_N.shape[0]
  new_state = state.replace(
    round=state.round + 1,
    params=params,
    labelled_CxL=jnp.pad(selection.seqs_NxL, ((0, pad), (0, 0))),
    labelled_values_C=jnp.pad(values_N, (0, pad), constant_values=-jnp.inf),
    labelled_where_C=jnp.pad(selection.where_N, (0, pad)),
    history=archive_lib.add(state.history, selection.seqs_NxL, values_N, selection.where_N),
    best_value=jnp.where(improved, values_N[best], state.best_value),
    best_solution_L=jnp.where(improved, selection.seqs_NxL[best], state.best_solution_L),
    num_evaluations=state.num_evaluations + num_labelled,
    cumulative_regret=state.cumulative_regret + regret_best,
    mean_hamming=jnp.where(metrics['num_generations'] > 0, metrics['mean_edit_hamming'], state.mean_hamming),
  )
  metrics |= {
    'round': new_state.round,
    'num_evaluations': new_state.num_evaluations,
    'best_value': new_state.best_value,
    'simple_regret_best': regret_best,
    'simple_regret_round': regret_round,
    'cumulative_regret': new_state.cumulative_regret,
    'num_labelled': num_labelled,
    'num_labelled_mutants': jnp.sum(selection.where_N & ~policy_N, dtype=jnp.int32),
    'best_value_policy': jnp.max(jnp.where(selection.where_N & policy_N, values_N, -jnp.inf)),
    'best_value_mutants': jnp.max(jnp.where(selection.where_N & ~policy_N, values_N, -jnp.inf)),
    'frac_labelled_feasible': round_metrics.feasible_fraction(values_N, selection.where_N),
    'num_pool_unique': selection.num_unique,
    'num_label_eligible': selection.num_eligible,
    'likelihood_threshold': selection.threshold,
    'calibration_spearman': calibration.spearman,
    'calibration_bin_likelihood': calibration.bin_mean_likelihood,
    'calibration_bin_reward': calibration.bin_mean_reward,
    'calibration_bin_count': calibration.bin_count,
  }
  sources_N = row_sources(cfg, values_N.shape[0])
  for name, count, source in (
    ('recombinants', cfg.recombinants_per_generation, SOURCE_RECOMBINANT),
    ('duplications', cfg.duplications_per_generation, SOURCE_DUPLICATION),
  ):
    if count:  # Only then, so that earlier configs' rows keep their keys.
      labelled_N = selection.where_N & (sources_N == source)
      metrics[f'num_labelled_{name}'] = jnp.sum(labelled_N, dtype=jnp.int32)
      metrics[f'best_value_{name}'] = jnp.max(jnp.where(labelled_N, values_N, -jnp.inf))
  if repairing:
    metrics['frac_infeasible_explained'] = infeasible_explained(state.history, certified)
    metrics['num_certified_transitions'] = jnp.sum(certified, dtype=jnp.int32)
  return new_state, (metrics, selection, values_N)


def run_rounds(state: OuterState, *, num_rounds: int, **round_kwargs):
  """`num_rounds` rounds of `round_step` (same objective) in one `lax.scan`; outputs stacked per round."""
  return jax.lax.scan(lambda s, _: round_step(s, **round_kwargs), state, length=num_rounds)


def state_shardings(state: OuterState, mesh, *, fsdp: bool = True) -> OuterState:
  """Parameters by the rules of `sharding.param_shardings`; the rest (small buffers) replicated."""
  shardings = jax.tree.map(lambda _: sharding.replicated(mesh), state)
  return shardings.replace(params=sharding.param_shardings(state.params, mesh, fsdp=fsdp))


def jit_run_rounds(state_sh: OuterState, mesh, **kwargs):
  """`run_rounds` jitted at the edge with explicit shardings, the state donated; `num_rounds`,
  `objective` and `epochs` static (one compilation per distinct triple)."""
  replicated = sharding.replicated(mesh)

  @functools.cache
  def compiled(num_rounds: int, objective: str, epochs: int):
    fn = functools.partial(
      run_rounds, num_rounds=num_rounds, objective=objective, epochs=epochs, mesh=mesh, **kwargs
    )
    return jax.jit(fn, in_shardings=(state_sh,), out_shardings=(state_sh, replicated), donate_argnums=0)

  def run(state: OuterState, num_rounds: int, objective: str, epochs: int):
    return compiled(num_rounds, objective, epochs)(state)

  return run
