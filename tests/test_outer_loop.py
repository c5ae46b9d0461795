"""Tests for llome_jax.outer_loop on a tiny sampled Ehrlich function and the tiny policy: oracle
accounting, every objective, chunking invariance (what resume relies on) and the seed fallback."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import archive, ga, inner_loop, labelling, oracle, outer_loop, pairs, sharding, train
from llome_jax import codec as codec_lib
from llome_jax import model as model_lib
from llome_jax.test_functions import ehrlich

_LENGTH, _STATES = 10, 6


@pytest.fixture(scope='module')
def problem():
  key = jax.random.key(0)
  params = ehrlich.sample_params(
    key, num_states=_STATES, dim=_LENGTH, num_motifs=2, motif_length=2, quantization=2, epistasis_factor=0.0
  )
  initial = ehrlich.initial_solution(jax.random.fold_in(key, 1), params, _LENGTH)[0]
  ga_cfg = ga.GAConfig(
    num_particles=64,
    num_states=_STATES,
    mutation_prob=0.1,
    recombine_prob=0.1,
    survival_quantile=0.25,
    archive_capacity=256,
  )
  state, _ = ga.run(
    key,
    ga.init(initial, cfg=ga_cfg),
    objective=functools.partial(ehrlich.evaluate, params),
    cfg=ga_cfg,
    num_steps=3,
  )
  seqs, values = archive.contents(state.archive)
  codec = codec_lib.CompactCodec(_STATES, _LENGTH)
  graphdef, model_params = model_lib.init(
    model_lib.preset('tiny', vocab_size=codec.vocab_size), jax.random.key(1)
  )
  cfg = outer_loop.LoopConfig(
    pairs=pairs.PairConfig(capacity=128),
    inner=inner_loop.InnerLoopConfig(num_iterations=2, temperatures=(0.8, 1.3), samples_per_temperature=2),
    select=labelling.SelectConfig(num_labels=24),
    batch_size=32,
    num_seeds=6,
    sft_optim=train.OptimConfig(learning_rate=3e-3),
    pref_optim=train.OptimConfig(learning_rate=1e-3),
    objective=train.ObjectiveConfig(dpo_beta=0.4),
  )
  state = outer_loop.init(
    jax.random.key(2),
    model_params,
    seqs,
    values,
    192,
    capacity=max(len(values), 24),
    history_capacity=len(values) + 4 * 24,
  )
  mesh = sharding.make_mesh(1)
  state_sh = outer_loop.state_shardings(state, mesh)
  # Placed as the binary places it: a state typed by another sharding would compile the rounds anew.
  state = jax.device_put(state, state_sh)
  run = outer_loop.jit_run_rounds(
    state_sh,
    mesh,
    graphdef=graphdef,
    problem=oracle.ehrlich_problem(params, _LENGTH),
    codec=codec,
    cfg=cfg,
  )
  return dict(
    params=params, seqs=seqs, values=values, state=state, run=run, cfg=cfg, graphdef=graphdef, codec=codec
  )


def _copy(tree):
  return jax.tree.map(jnp.copy, tree)  # The jitted rounds donate their input state.


def test_init_holds_the_seed_data(problem):
  state, seqs, values = problem['state'], problem['seqs'], problem['values']
  n = len(values)
  np.testing.assert_array_equal(np.asarray(state.labelled_CxL[:n]), seqs)
  np.testing.assert_array_equal(np.asarray(state.labelled_values_C[:n]), values)
  assert int(state.labelled_where_C.sum()) == n == int(state.history.count)
  assert float(state.best_value) == values.max()
  assert float(ehrlich.evaluate(problem['params'], state.best_solution_L)) == values.max()
  metrics = outer_loop.seed_metrics(state)
  assert int(metrics['num_evaluations']) == 192
  np.testing.assert_allclose(float(metrics['simple_regret_best']), 1.0 - max(values.max(), 0.0))


def test_sft_round_pays_the_oracle_only_for_new_labelled_sequences(problem):
  before = _copy(problem['state']).replace(mean_hamming=jnp.float32(0.05))  # Collapsed: shift +0.6.
  state, (metrics, selection, values) = problem['run'](_copy(before), 1, 'sft', 1)
  metrics, selection, values = jax.tree.map(lambda x: np.asarray(x[0]), (metrics, selection, values))
  where = selection.where_N
  labelled = selection.seqs_NxL[where]
  num = int(where.sum())
  assert 0 < num <= 24 and metrics['num_labelled'] == num
  assert int(state.num_evaluations) == int(before.num_evaluations) + num == metrics['num_evaluations']
  np.testing.assert_array_equal(values[where], np.asarray(ehrlich.evaluate(problem['params'], labelled)))
  # Distinct, and none of them labelled before.
  assert len({tuple(r) for r in labelled.tolist()}) == num
  assert not np.asarray(archive.contains(before.history, labelled)).any()
  assert int(state.history.count) == int(before.history.count) + num
  # The next round trains on exactly this batch.
  np.testing.assert_array_equal(np.asarray(state.labelled_CxL)[:24][where], labelled)
  assert int(state.labelled_where_C.sum()) == num
  # Regrets: best-so-far is the better of the seed data's and this round's.
  round_regret = 1.0 - max(float(np.max(np.where(where, values, 0.0))), 0.0)
  np.testing.assert_allclose(metrics['simple_regret_round'], round_regret, rtol=1e-6)
  np.testing.assert_allclose(
    metrics['simple_regret_best'], min(round_regret, 1.0 - max(float(before.best_value), 0.0)), rtol=1e-6
  )
  assert float(state.best_value) == max(float(before.best_value), float(values.max()))
  # It trained, on real pairs, and shifted the temperatures against collapse.
  assert metrics['num_pairs'] > 0 and metrics['train_steps'] > 0 and np.isfinite(metrics['train_loss'])
  assert metrics['train_nonfinite_steps'] == 0
  assert not np.allclose(
    np.asarray(state.params['embed_in']['embedding']), np.asarray(before.params['embed_in']['embedding'])
  )
  assert metrics['temperature_shift'] == pytest.approx(0.6)
  assert metrics['frac_generations_valid'] == 1.0
  assert float(state.mean_hamming) == pytest.approx(float(metrics['mean_edit_hamming']))
  assert int(state.round) == 1


@pytest.mark.slow
@pytest.mark.parametrize('objective', ['marge', 'dpo'])
def test_preference_rounds_train_against_the_entering_policy(problem, objective):
  state, (metrics, _, _) = problem['run'](_copy(problem['state']), 1, objective, 1)
  metrics = jax.tree.map(lambda x: np.asarray(x[0]), metrics)
  assert metrics['num_pairs'] > 0 and metrics['train_steps'] > 0
  assert np.isfinite(metrics['train_loss']) and metrics['train_nonfinite_steps'] == 0
  before = problem['state'].params['embed_out']['kernel']
  assert not np.allclose(np.asarray(state.params['embed_out']['kernel']), np.asarray(before))


@pytest.mark.slow
def test_two_rounds_in_one_chunk_equal_two_chunks(problem):
  """Chunk boundaries (where checkpoints go) do not change the run: resume relies on it."""
  run = problem['run']
  together, (metrics_2, _, values_2) = run(_copy(problem['state']), 2, 'marge', 1)
  first, (metrics_a, _, values_a) = run(_copy(problem['state']), 1, 'marge', 1)
  second, (metrics_b, _, values_b) = run(first, 1, 'marge', 1)
  chex.assert_trees_all_equal(jax.device_get(together), jax.device_get(second))
  stacked = jax.tree.map(
    lambda a, b: np.concatenate([a, b]), jax.device_get(metrics_a), jax.device_get(metrics_b)
  )
  chex.assert_trees_all_equal(jax.device_get(metrics_2), stacked)
  np.testing.assert_array_equal(np.asarray(values_2), np.concatenate([values_a, values_b]))


def test_seeds_fall_back_to_the_best_labelled_sequences(problem):
  state = problem['state']
  capacity = 8
  some = pairs.Pairs(
    x_idx_P=jnp.array([0, 1] + [0] * 6, jnp.int32),
    y_idx_P=jnp.array([2, 3] + [0] * 6, jnp.int32),
    where_P=jnp.arange(capacity) < 2,
    rewards_P=jnp.zeros(capacity),
    num_candidates=jnp.int32(2),
    num_infeasible_candidates=jnp.int32(0),
  )
  seeds, where, seed_values = outer_loop._seeds(state, some, 5)
  seeds, where = np.asarray(seeds), np.asarray(where)
  assert where.all()
  labelled, values = np.asarray(state.labelled_CxL), np.asarray(state.labelled_values_C)
  # The two real pairs' better members first, best first, then the best labelled sequences overall.
  order = sorted([2, 3], key=lambda i: -values[i])
  np.testing.assert_array_equal(seeds[:2], labelled[order])
  best = np.argsort(-np.asarray(state.history.values_C)[: int(state.history.count)], kind='stable')[:3]
  np.testing.assert_array_equal(seeds[2:], np.asarray(state.history.sequences_CxL)[best])
  want_values = np.concatenate([values[order], np.asarray(state.history.values_C)[best]])
  np.testing.assert_array_equal(np.asarray(seed_values), want_values)  # Each seed's own label.


def _one_round_cfg(problem, split_rows: bool = False):
  """One SFT round at a learning rate of 1e-30, rows that do not divide 8 (6 seeds x 5 decoding
  settings = 30 trajectories, 21 labels, 8 of them mutant slots in 2 generations of 4: 2 repair
  mutants, 1 recombinant and 1 duplication each), the seeds spread farthest-first over the best 12
  labelled sequences (seed_pool=2)."""
  return dataclasses.replace(
    problem['cfg'],
    select=labelling.SelectConfig(num_labels=21),
    sft_optim=train.OptimConfig(learning_rate=1e-30),
    split_rows=split_rows,
    num_mutants=8,
    mutant_kind='repair',
    mutant_generations=2,
    seed_pool=2,
    crossover_fraction=1 / 4,
    duplication_fraction=1 / 4,
    duplication_max_length=4,
  )


def _one_round_on(problem, mesh, *, split_rows: bool):
  cfg = _one_round_cfg(problem, split_rows)
  state_sh = outer_loop.state_shardings(problem['state'], mesh)
  run = outer_loop.jit_run_rounds(
    state_sh,
    mesh,
    graphdef=problem['graphdef'],
    problem=oracle.ehrlich_problem(problem['params'], _LENGTH),
    codec=problem['codec'],
    cfg=cfg,
  )
  return jax.device_get(run(jax.device_put(_copy(problem['state']), state_sh), 1, 'sft', 1))


@pytest.fixture(scope='module')
def one_device_round(problem):
  return _one_round_on(problem, sharding.make_mesh(1), split_rows=False)  # Nothing to split on 1 device.


@pytest.mark.parametrize('split_rows', [False, True])
def test_a_round_on_8_devices_equals_one_device(problem, one_device_round, split_rows):
  """A whole round on 1 and on 8 devices. Training runs, but at a learning rate of 1e-30 its updates
  vanish against the parameters in float32, so the policy is in effect fixed: the pairs, the
  generations (decoded split across the devices or not), the labelled sequences and their oracle values
  must agree bit for bit. Floats computed by the policy (losses, likelihoods) come from programs
  compiled for another mesh and may differ in the last bit."""
  state_1, (metrics_1, selection_1, values_1) = one_device_round
  state_8, (metrics_8, selection_8, values_8) = _one_round_on(
    problem, sharding.make_mesh(8), split_rows=split_rows
  )
  assert metrics_1['num_labelled'][0] > 0 and metrics_1['num_pairs'][0] > 0
  assert metrics_1['num_labelled_mutants'][0] > 0
  chex.assert_trees_all_equal(selection_8.seqs_NxL, selection_1.seqs_NxL)
  chex.assert_trees_all_equal(selection_8.where_N, selection_1.where_N)
  chex.assert_trees_all_equal(values_8, values_1)
  for name in ('labelled_CxL', 'labelled_values_C', 'history', 'best_value', 'num_evaluations'):
    chex.assert_trees_all_equal(getattr(state_8, name), getattr(state_1, name))
  # Integers exactly, floats to a few units in the last place.
  chex.assert_trees_all_close(metrics_8, metrics_1, rtol=1e-5, atol=0)
  chex.assert_trees_all_close(selection_8, selection_1, rtol=1e-6, atol=0)
  chex.assert_trees_all_close(state_8.params, state_1.params, atol=1e-25, rtol=0)


def test_recombinants_and_duplications_in_a_round_are_counted_apart(problem, one_device_round):
  """Of each 4-slot mutant generation the third slot is a recombinant and the fourth a duplication:
  each labelled recombinant joins two sequences labelled before it, each labelled duplication is one
  of them with a piece of itself copied elsewhere, the row's counts and best values are those slots',
  and the mutant slots before them are repair mutants of one parent."""
  metrics, selection, values = jax.tree.map(lambda x: np.asarray(x)[0], one_device_round[1])
  cfg = _one_round_cfg(problem)
  assert cfg.recombinants_per_generation == cfg.duplications_per_generation == 1
  sources = np.zeros(21, int)  # 13 policy rows, then 2 generations of 2 mutants, 1 of each other.
  sources[[13, 14, 17, 18]] = outer_loop.SOURCE_MUTANT
  sources[[15, 19]] = outer_loop.SOURCE_RECOMBINANT
  sources[[16, 20]] = outer_loop.SOURCE_DUPLICATION
  np.testing.assert_array_equal(np.asarray(outer_loop.row_sources(cfg, 21)), sources)
  quarter = dataclasses.replace(cfg, num_mutants=16, select=labelling.SelectConfig(num_labels=24))
  quarter = dataclasses.replace(quarter, crossover_fraction=0.25, duplication_fraction=0.0)
  quarter_sources = np.asarray(outer_loop.row_sources(quarter, 24))  # 2 generations of 8.
  assert np.flatnonzero(quarter_sources == outer_loop.SOURCE_RECOMBINANT).tolist() == [14, 15, 22, 23]
  assert np.flatnonzero(quarter_sources == outer_loop.SOURCE_POLICY).tolist() == list(range(8))
  assert not np.any(quarter_sources == outer_loop.SOURCE_DUPLICATION)
  plain = dataclasses.replace(cfg, crossover_fraction=0.0, duplication_fraction=0.0)
  assert set(np.asarray(outer_loop.row_sources(plain, 21))[13:]) == {outer_loop.SOURCE_MUTANT}
  labelled = selection.where_N
  mutant = sources == outer_loop.SOURCE_MUTANT
  assert metrics['num_labelled_mutants'] == (labelled & (sources != outer_loop.SOURCE_POLICY)).sum()
  for name, source in (
    ('recombinants', outer_loop.SOURCE_RECOMBINANT),
    ('duplications', outer_loop.SOURCE_DUPLICATION),
  ):
    rows = labelled & (sources == source)
    assert metrics[f'num_labelled_{name}'] == rows.sum() > 0, name
    assert metrics[f'best_value_{name}'] == values[rows].max(), name
  known = np.concatenate(
    [np.asarray(archive.contents(problem['state'].history)[0]), selection.seqs_NxL[13:17]]
  )
  for child in selection.seqs_NxL[labelled & (sources == outer_loop.SOURCE_RECOMBINANT)]:
    assert any(_segment_of(child, a, b) for a in known for b in known)
  copies = set().union(*(_duplicates_of(parent, 4) for parent in known))
  for child in selection.seqs_NxL[labelled & (sources == outer_loop.SOURCE_DUPLICATION)]:
    assert tuple(child.tolist()) in copies
  for row in selection.seqs_NxL[labelled & mutant]:
    assert (row != known).sum(-1).min() <= 3


# The mutation kernels jitted as a round runs them: eager, each of their many ops compiles on its own.
_two_site_mutants = jax.jit(outer_loop.two_site_mutants, static_argnums=(3, 4))
_certified_transitions = jax.jit(outer_loop.certified_transitions, static_argnums=1)
_infeasible_explained = jax.jit(outer_loop.infeasible_explained)
_repair_mutants = jax.jit(outer_loop.repair_mutants, static_argnums=3)
_with_mutants = jax.jit(outer_loop._with_mutants, static_argnames=('num', 'num_states'))
_diverse_seeds = jax.jit(outer_loop._diverse_seeds, static_argnums=(1, 2))
_recombinants = jax.jit(outer_loop.recombinants, static_argnums=3)
_duplications = jax.jit(outer_loop.duplications, static_argnums=(3, 4))


def test_two_site_mutants_edit_two_positions_of_a_real_seed():
  seeds = jnp.asarray(np.random.default_rng(0).integers(0, _STATES, (5, _LENGTH)), jnp.int32)
  where = jnp.asarray([False, True, False, True, False])
  mutants, real = _two_site_mutants(jax.random.key(0), seeds, where, 400, _STATES)
  assert bool(jnp.all(real))
  distances = np.asarray(jnp.sum(mutants[:, None, :] != seeds[None], axis=-1))  # [M, S]
  assert np.all(distances[:, [1, 3]].min(axis=1) == 2)  # Each is two edits from a real seed.
  assert np.all(np.asarray(mutants) < _STATES) and np.all(np.asarray(mutants) >= 0)
  _, none = _two_site_mutants(jax.random.key(0), seeds, jnp.zeros(5, bool), 4, _STATES)
  assert not bool(jnp.any(none))


def test_mutant_slots_never_repeat_a_label():
  seeds = jnp.zeros((1, _LENGTH), jnp.int32)  # 2-site mutants of one seed collide often.
  policy = labelling.Selection(
    seqs_NxL=jnp.ones((3, _LENGTH), jnp.int32),
    likelihood_N=jnp.zeros(3),
    where_N=jnp.asarray([True, True, False]),
    num_unique=jnp.int32(1),
    num_eligible=jnp.int32(1),
    threshold=jnp.float32(0.0),
  )
  mutants, _ = _two_site_mutants(jax.random.key(1), seeds, jnp.ones(1, bool), 200, _STATES)
  history = archive.add(archive.init(64, _LENGTH), mutants[:5], jnp.zeros(5))
  combined, policy_N = _with_mutants(
    jax.random.key(1), policy, seeds, jnp.ones(1, bool), history, num=200, num_states=_STATES
  )
  rows = np.asarray(combined.seqs_NxL)[np.asarray(combined.where_N)]
  assert len({tuple(r) for r in rows.tolist()}) == len(rows)  # No row twice, the policy's first.
  assert np.asarray(combined.where_N)[0] and not np.asarray(combined.where_N)[1]
  assert not set(map(tuple, np.asarray(mutants[:5]).tolist())) & set(map(tuple, rows.tolist()))
  assert np.asarray(policy_N).sum() == 3 and np.isnan(np.asarray(combined.likelihood_N)[3:]).all()


def test_repair_mutants_in_a_round_label_only_certified_transitions(problem):
  """A round giving 8 of its 24 labels to repair mutants in 2 generations of 4: they are paid for like
  any label, never repeat one, and hold only transitions that a feasible label held before they were
  drawn (generation 2's certification includes the round's first 20 labels); a generation-2 mutant
  descends from a seed or a generation-1 mutant; and on an Ehrlich function (feasibility is a ban on
  adjacent pairs) the adjacent-pair model explains every infeasible label."""
  before = _copy(problem['state'])
  cfg = dataclasses.replace(problem['cfg'], num_mutants=8, mutant_kind='repair', mutant_generations=2)
  run = outer_loop.jit_run_rounds(
    outer_loop.state_shardings(before, sharding.make_mesh(1)),
    sharding.make_mesh(1),
    graphdef=problem['graphdef'],
    problem=oracle.ehrlich_problem(problem['params'], _LENGTH),
    codec=problem['codec'],
    cfg=cfg,
  )
  certified = np.asarray(_certified_transitions(before.history, _STATES))
  state, (metrics, selection, values) = run(_copy(before), 1, 'sft', 1)
  metrics, selection, values = jax.tree.map(lambda x: np.asarray(x[0]), (metrics, selection, values))
  assert selection.seqs_NxL.shape[0] == 24
  assert (
    int(state.num_evaluations) - int(before.num_evaluations)
    == metrics['num_labelled']
    == selection.where_N.sum()
  )
  labelled = selection.seqs_NxL[selection.where_N]
  assert len({tuple(r) for r in labelled.tolist()}) == len(labelled)
  np.testing.assert_array_equal(
    values[selection.where_N], np.asarray(ehrlich.evaluate(problem['params'], jnp.asarray(labelled)))
  )
  first, second = selection.seqs_NxL[16:20], selection.seqs_NxL[20:]
  first_where, second_where = selection.where_N[16:20], selection.where_N[20:]
  first_rows, second_rows = first[first_where], second[second_where]
  assert 0 < metrics['num_labelled_mutants'] == len(first_rows) + len(second_rows)
  assert len(first_rows) and len(second_rows)
  assert certified[first_rows[:, :-1], first_rows[:, 1:]].all()
  grown = archive.add(
    before.history,
    jnp.asarray(selection.seqs_NxL[:20]),
    jnp.asarray(values[:20]),
    jnp.asarray(selection.where_N[:20]),
  )
  certified_later = np.asarray(_certified_transitions(grown, _STATES))
  assert certified_later[second_rows[:, :-1], second_rows[:, 1:]].all()
  parents = np.concatenate([np.asarray(archive.contents(before.history)[0]), first_rows])
  assert ((second_rows[:, None, :] != parents[None]).sum(-1).min(axis=1) <= 3).all()
  assert metrics['num_certified_transitions'] == certified.sum()
  assert not np.isfinite(np.asarray(before.history.values_C)[: int(before.history.count)]).all()
  assert metrics['frac_infeasible_explained'] == 1.0


def _transition_walks(allowed_VxV: np.ndarray, count: int, length: int, rng) -> np.ndarray:
  """Random walks on an allowed-transition matrix: sequences that hold only allowed transitions."""
  walks = np.zeros((count, length), np.int32)
  walks[:, 0] = rng.integers(0, len(allowed_VxV), count)
  for i in range(1, length):
    for row in range(count):
      walks[row, i] = rng.choice(np.flatnonzero(allowed_VxV[walks[row, i - 1]]))
  return walks


def test_certified_transitions_are_those_of_feasible_labels():
  rng = np.random.default_rng(3)
  seqs = rng.integers(0, _STATES, (40, _LENGTH)).astype(np.int32)
  values = np.where(rng.random(40) < 0.3, -np.inf, rng.random(40)).astype(np.float32)
  history = archive.add(archive.init(64, _LENGTH), jnp.asarray(seqs), jnp.asarray(values))
  want = np.zeros((_STATES, _STATES), bool)
  for row, value in zip(seqs, values, strict=True):
    if np.isfinite(value):
      want[row[:-1], row[1:]] = True
  got = np.asarray(_certified_transitions(history, _STATES))
  np.testing.assert_array_equal(got, want)
  # Every infeasible row here holds a transition no feasible row holds, bar those built otherwise.
  explained = [
    not want[row[:-1], row[1:]].all()
    for row, value in zip(seqs, values, strict=True)
    if not np.isfinite(value)
  ]
  np.testing.assert_allclose(
    float(_infeasible_explained(history, jnp.asarray(want))), np.mean(explained), rtol=1e-6
  )
  assert float(_infeasible_explained(history, jnp.ones((_STATES, _STATES), bool))) == 0.0
  feasible_only = archive.add(archive.init(8, _LENGTH), jnp.asarray(seqs[:2]), jnp.ones(2))
  assert np.isnan(float(_infeasible_explained(feasible_only, jnp.asarray(want))))


def test_repair_mutants_keep_certified_transitions():
  """With the true allowed transitions certified, a substitution's broken neighbours are repaired: each
  mutant is a contiguous edit of 1-3 positions of a real seed, holds only allowed transitions, and
  changes a neighbour exactly when the substitution broke its transition."""
  rng = np.random.default_rng(4)
  allowed = np.zeros((_STATES, _STATES), bool)
  while not ((allowed.astype(int) @ allowed.astype(int)) > 0).all():  # Until any a -> ? -> c has a bridge.
    allowed = rng.random((_STATES, _STATES)) < 0.7
    np.fill_diagonal(allowed, True)
  seeds = _transition_walks(allowed, 6, _LENGTH, rng)
  where = jnp.asarray([True, False, True, True, False, True])
  mutants, real = _repair_mutants(jax.random.key(5), jnp.asarray(seeds), where, 600, jnp.asarray(allowed))
  mutants = np.asarray(mutants)
  assert bool(jnp.all(real))
  distances = (mutants[:, None, :] != seeds[None]).sum(-1)[:, np.asarray(where)]
  source = np.asarray(where).nonzero()[0][distances.argmin(axis=1)]
  assert np.all(allowed[mutants[:, :-1], mutants[:, 1:]])  # Every mutant is feasible.
  blind, _ = _two_site_mutants(jax.random.key(5), jnp.asarray(seeds), where, 600, _STATES)
  blind = np.asarray(blind)
  assert np.mean(allowed[blind[:, :-1], blind[:, 1:]].all(axis=1)) < 0.9  # The blind kernel's are not.

  def explained(seed, mutant, changed):  # Some changed i is the substitution, the rest its repairs.
    for i in changed:
      broken = {j for j in (i - 1, i + 1) if 0 <= j < _LENGTH}
      broken = {
        j for j in broken if not (allowed[seed[j], mutant[i]] if j < i else allowed[mutant[i], seed[j]])
      }
      if set(changed) == {i} | broken:
        return True
    return False

  repaired = 0
  for mutant, seed in zip(mutants, seeds[source], strict=True):
    changed = np.flatnonzero(mutant != seed).tolist()
    assert 1 <= len(changed) <= 3 and np.all(np.diff(changed) == 1) and explained(seed, mutant, changed)
    repaired += len(changed) > 1
  assert repaired > 100  # Repairs happen, and are not the only case.
  assert repaired < len(mutants)


def _segment_of(child, first, second):
  """Whether `child` is `first` with one contiguous segment taken from `second`, neither of them whole."""
  from_first = np.flatnonzero(child != first)  # Must lie inside the segment ...
  from_second = np.flatnonzero(child != second)  # ... and these outside it.
  if not len(from_first) or not len(from_second):
    return False
  lo, hi = from_first.min(), from_first.max()
  return not np.any((from_second >= lo) & (from_second <= hi))


def test_recombinants_join_two_real_parents_at_certified_cuts():
  """Each recombinant is one real parent with a contiguous segment of another, equal to neither; with
  the true allowed transitions certified every child is feasible (its cuts are certified), which
  children cut anywhere are not; parents that differ at fewer than two sites give no child."""
  rng = np.random.default_rng(6)
  allowed = np.zeros((_STATES, _STATES), bool)
  while allowed.sum() < 0.6 * _STATES**2 or not allowed.any(axis=1).all():
    allowed = rng.random((_STATES, _STATES)) < 0.65
  parents = _transition_walks(allowed, 8, _LENGTH, rng)
  where = np.array([True, True, False, True, True, False, True, True])
  real_parents = parents[where]
  children, real = _recombinants(
    jax.random.key(7), jnp.asarray(parents), jnp.asarray(where), 400, jnp.asarray(allowed)
  )
  children, real = np.asarray(children), np.asarray(real)
  assert real.mean() > 0.9
  for child in children[real]:
    assert any(
      _segment_of(child, first, second)
      for i, first in enumerate(real_parents)
      for j, second in enumerate(real_parents)
      if i != j
    )
  assert np.all(allowed[children[real][:, :-1], children[real][:, 1:]])
  assert len({tuple(r) for r in children[real].tolist()}) > 100  # Not a few cuts over and over.
  # Cut anywhere, some junctions are banned transitions.
  anywhere, real_anywhere = _recombinants(
    jax.random.key(7), jnp.asarray(parents), jnp.asarray(where), 400, None
  )
  anywhere = np.asarray(anywhere)[np.asarray(real_anywhere)]
  assert not np.all(allowed[anywhere[:, :-1], anywhere[:, 1:]])
  # One site apart, or one real parent: no recombinant.
  near = np.stack([parents[0], parents[0]])
  near[1, 3] = (near[1, 3] + 1) % _STATES
  _, real_near = _recombinants(jax.random.key(8), jnp.asarray(near), jnp.ones(2, bool), 16, None)
  _, real_alone = _recombinants(
    jax.random.key(8), jnp.asarray(parents), jnp.asarray(np.arange(8) == 2), 16, None
  )
  assert not np.asarray(real_near).any() and not np.asarray(real_alone).any()


def _duplicates_of(parent, max_length):
  """Every sequence that `parent` becomes when a segment of it, 2 to max_length long, is copied over
  another place of it (from the parent as it was), except the parent itself."""
  length = len(parent)
  out = set()
  for size in range(2, min(max_length, length - 1) + 1):
    for source in range(length - size + 1):
      for dest in range(length - size + 1):
        child = parent.copy()
        child[dest : dest + size] = parent[source : source + size]
        out.add(tuple(child.tolist()))
  out.discard(tuple(parent.tolist()))
  return out


def test_duplications_copy_a_segment_of_one_parent_at_certified_junctions():
  """Each duplication is a real parent with a 2..max_length segment of itself copied over another
  place, never the parent unchanged (checked against every such copy, enumerated); with the true
  allowed transitions certified every child is feasible, which children placed anywhere are not; a
  parent no copy can change gives no child; a max_length over L - 1 is clipped."""
  rng = np.random.default_rng(11)
  allowed = np.zeros((_STATES, _STATES), bool)
  while allowed.sum() < 0.6 * _STATES**2 or not allowed.any(axis=1).all() or allowed.all():
    allowed = rng.random((_STATES, _STATES)) < 0.65
  parents = _transition_walks(allowed, 8, _LENGTH, rng)
  where = np.array([True, False, True, True, False, True, True, True])
  reachable = [_duplicates_of(parent, 4) for parent in parents[where]]
  children, real = _duplications(
    jax.random.key(3), jnp.asarray(parents), jnp.asarray(where), 400, 4, jnp.asarray(allowed)
  )
  children, real = np.asarray(children), np.asarray(real)
  assert real.mean() > 0.9
  for child in children[real]:
    assert any(tuple(child.tolist()) in options for options in reachable)
  assert np.all(allowed[children[real][:, :-1], children[real][:, 1:]])
  assert len({tuple(r) for r in children[real].tolist()}) > 100
  anywhere, real_anywhere = _duplications(
    jax.random.key(3), jnp.asarray(parents), jnp.asarray(where), 400, 4, None
  )
  anywhere = np.asarray(anywhere)[np.asarray(real_anywhere)]
  assert all(any(tuple(c.tolist()) in options for options in reachable) for c in anywhere)
  assert not np.all(allowed[anywhere[:, :-1], anywhere[:, 1:]])
  # Copies of the whole length but one: a max_length of 50 on L = 10 draws segments of up to 9.
  long, real_long = _duplications(jax.random.key(4), jnp.asarray(parents), jnp.asarray(where), 200, 50, None)
  long_reachable = [_duplicates_of(parent, _LENGTH - 1) for parent in parents[where]]
  long = np.asarray(long)[np.asarray(real_long)]
  assert len(long) > 150
  assert all(any(tuple(c.tolist()) in options for options in long_reachable) for c in long)
  assert any(all(tuple(c.tolist()) not in options for options in reachable) for c in long)
  # A constant parent: every copy leaves it as it is, so no child.
  flat = np.zeros((2, _LENGTH), parents.dtype)
  _, real_flat = _duplications(jax.random.key(5), jnp.asarray(flat), jnp.ones(2, bool), 16, 4, None)
  assert not np.asarray(real_flat).any()


def _farthest_first_reference(seqs, ranked, num):
  """Farthest-first by brute force over the rows `ranked` (best first): the first, then the row farthest
  (Hamming) from its nearest chosen row, ties to the better rank."""
  chosen = [ranked[0]]
  while len(chosen) < min(num, len(ranked)):
    left = [i for i in ranked if i not in chosen]
    nearest = [min(int((seqs[i] != seqs[j]).sum()) for j in chosen) for i in left]
    chosen.append(left[int(np.argmax(nearest))])  # argmax: the first (best-ranked) of the farthest.
  return chosen


def test_diverse_seeds_spread_over_the_tied_best(problem):
  """seed_pool=E: of the best E x S labelled sequences (newer first among ties), those at the best value
  thinned farthest-first on Hamming distance, then the next best; so a cluster of near-identical ties
  yields one seed and the far ties the others, and without ties the seeds are the best S."""
  rng = np.random.default_rng(0)
  length = 12
  base = rng.integers(0, _STATES, length)
  cluster = np.repeat(base[None], 6, axis=0)
  cluster[np.arange(1, 6), np.arange(1, 6)] = (base[1:6] + 1) % _STATES  # 1-site variants of `base`.
  others = rng.integers(0, _STATES, (10, length))
  seqs = np.concatenate([cluster, others]).astype(np.int32)
  # Rows 0-7 (the cluster and two far rows) tie at 0.5; 8-11 hold 0.3; 12-13 are infeasible; 14-15 0.1.
  values = np.array([0.5] * 8 + [0.3] * 4 + [-np.inf] * 2 + [0.1] * 2, np.float32)
  state = problem['state'].replace(
    history=archive.add(archive.init(32, length), jnp.asarray(seqs), jnp.asarray(values))
  )

  def seeds_of(num, pool):  # (seeds, where, values) as numpy arrays.
    return jax.device_get(_diverse_seeds(state, num, pool))

  seeds, where, seed_values = seeds_of(3, 2)  # Candidates: the 6 newest ties, rows 7..2.
  expected = _farthest_first_reference(seqs, [7, 6, 5, 4, 3, 2], 3)
  assert where.all() and expected[:2] == [7, 6]
  np.testing.assert_array_equal(seeds, seqs[expected])
  np.testing.assert_array_equal(seed_values, values[expected])

  seeds, where, _ = seeds_of(3, 4)  # Candidates: all 8 ties, then rows 11..8.
  expected = _farthest_first_reference(seqs, list(range(7, -1, -1)), 3)
  np.testing.assert_array_equal(seeds, seqs[expected])
  assert sum(i < 6 for i in expected) == 1  # One seed from the cluster.
  pairwise = lambda x: min(int((a != b).sum()) for i, a in enumerate(x) for b in x[i + 1 :])  # noqa: E731
  assert pairwise(seeds) > pairwise(seqs[7:4:-1])  # Farther apart than the 3 newest ties.

  # More seeds than ties: every tie, then the next best, newer first; rows past the feasible ones unreal.
  seeds, where, seed_values = seeds_of(10, 2)
  assert where.all() and {tuple(r) for r in seeds[:8]} == {tuple(r) for r in seqs[:8]}
  np.testing.assert_array_equal(seeds[8:], seqs[[11, 10]])
  seeds, where, seed_values = seeds_of(16, 2)
  assert where.sum() == 14 and np.all(seed_values[~where] == -np.inf)
  np.testing.assert_array_equal(seeds[8:14], seqs[[11, 10, 9, 8, 15, 14]])

  # No ties: the best S, best first.
  distinct = values + np.arange(16, dtype=np.float32) * 1e-3
  state = state.replace(
    history=archive.add(archive.init(32, length), jnp.asarray(seqs), jnp.asarray(distinct))
  )
  seeds, where, seed_values = seeds_of(5, 3)
  order = np.argsort(-distinct, kind='stable')[:5]
  assert where.all()
  np.testing.assert_array_equal(seeds, seqs[order])
  np.testing.assert_array_equal(seed_values, distinct[order])


_GEN_LENGTH, _PER_GENERATION = 12, 32
_FAR = np.stack([np.full(_GEN_LENGTH, token, np.int32) for token in range(6)])  # Pairwise Hamming 12.


def _first_generation():
  """A round's selection up to its first mutant generation: 2 policy rows, then generation 1, whose far
  2-5 are labelled 0.6, 0.1, -inf, 0.6 and whose other 28 slots are unlabelled. Returns (selection,
  its values, its policy mask)."""
  length, per_generation = _GEN_LENGTH, _PER_GENERATION
  policy_rows = np.stack([np.arange(length) % 6, (np.arange(length) + 1) % 6]).astype(np.int32)
  unused = per_generation - 4
  seqs = jnp.asarray(np.concatenate([policy_rows, _FAR[2:], np.zeros((unused, length), np.int32)]))
  values = jnp.asarray([0.0, 0.0, 0.6, 0.1, -np.inf, 0.6] + [-np.inf] * unused, jnp.float32)
  selection = labelling.Selection(
    seqs_NxL=seqs,
    likelihood_N=jnp.asarray([0.1, 0.2] + [np.nan] * per_generation, jnp.float32),
    where_N=jnp.arange(2 + per_generation) < 6,
    num_unique=jnp.int32(6),
    num_eligible=jnp.int32(6),
    threshold=jnp.float32(0.0),
  )
  return selection, values, jnp.arange(2 + per_generation) < 2


def _generations_cfg(problem, num_generations):
  return dataclasses.replace(
    problem['cfg'],
    select=labelling.SelectConfig(num_labels=2 + num_generations * _PER_GENERATION),
    num_mutants=num_generations * _PER_GENERATION,
    mutant_generations=num_generations,
    mutant_kind='blind',
  )


def test_later_mutant_generations_walk_from_the_best_labelled_mutants(problem):
  """Generation 2 of a round's mutants is drawn from the best `num_seeds` of generation 1's labelled
  mutants and its parents, ties going to the mutants (a plateau is walked), and among them only from
  those holding the best value; each generation is labelled before the next is drawn."""
  length, per_generation, far = _GEN_LENGTH, _PER_GENERATION, _FAR
  alternating = np.stack([np.arange(length) % 2, 2 + np.arange(length) % 2]).astype(np.int32)
  selection, values, policy_mask = _first_generation()
  seqs = selection.seqs_NxL
  cfg = _generations_cfg(problem, 2)
  calls = []

  def evaluate(x, where):
    calls.append(x.shape)
    return jnp.where(where, jnp.float32(0.25), -jnp.inf)

  def generation_2(parents, parent_values):
    calls.clear()
    combined, policy_N, values_N = outer_loop._later_mutant_generations(
      jax.random.key(3),
      selection,
      policy_mask,
      values,
      jnp.asarray(parents),
      jnp.asarray(parent_values, jnp.float32),
      archive.init(64, length),
      cfg=cfg,
      num_states=_STATES,
      evaluate=evaluate,
    )
    assert calls == [(per_generation, length)]  # One oracle call, for generation 2 alone.
    first = 2 + per_generation
    assert np.asarray(policy_N).tolist() == [True] * 2 + [False] * (2 * per_generation)
    np.testing.assert_array_equal(np.asarray(combined.seqs_NxL[:first]), np.asarray(seqs))
    assert np.isnan(np.asarray(combined.likelihood_N[2:])).all()
    where = np.asarray(combined.where_N[first:])
    assert where.sum() > per_generation // 2 and np.all(np.asarray(values_N[first:])[where] == 0.25)
    rows = np.asarray(combined.seqs_NxL[first:])[where]
    distances = (rows[:, None, :] != np.concatenate([far, alternating])[None]).sum(-1)
    assert np.all(distances.min(axis=1) == 2)  # Each a 2-site mutant of one of these rows ...
    return set(distances.argmin(axis=1).tolist())  # ... namely of these.

  # 2 parents, far 0 and 1 labelled 0.6 and 0.2: the best 2 are generation 1's 0.6s (far 2 and 5); far 0
  # ties with them and loses to the mutants.
  assert generation_2(far[:2], [0.6, 0.2]) == {2, 5}
  # 4 parents: the best 4 are far 2, 5, 0 (0.6) and far 1 (0.2); only the 0.6s are drawn.
  assert generation_2(np.concatenate([far[:2], alternating]), [0.6, 0.2, 0.05, 0.05]) == {0, 2, 5}


def test_later_mutant_generations_carry_the_walk_from_one_generation_to_the_next(problem):
  """Three generations (two scanned), so the parents, values and history that generation 2 leaves
  are what generation 3 starts from: it is drawn from the best of generation 2's labelled mutants and
  their parents, and repeats no row labelled before it."""
  length, per_generation = _GEN_LENGTH, _PER_GENERATION
  selection, values, policy_mask = _first_generation()
  second, third = slice(2 + per_generation, 2 + 2 * per_generation), slice(2 + 2 * per_generation, None)

  def three_generations(evaluate, num_states):
    """(rows, values, where) of the round, and generation 3's labelled rows and their values."""
    combined, policy_N, values_N = outer_loop._later_mutant_generations(
      jax.random.key(3),
      selection,
      policy_mask,
      values,
      jnp.asarray(_FAR[:2]),  # The round's parents: far 0 and 1 at 0.6 and 0.2.
      jnp.asarray([0.6, 0.2], jnp.float32),
      archive.init(128, length),
      cfg=_generations_cfg(problem, 3),
      num_states=num_states,
      evaluate=evaluate,
    )
    assert np.asarray(policy_N).tolist() == [True] * 2 + [False] * (3 * per_generation)
    seqs, where, values_N = (np.asarray(a) for a in (combined.seqs_NxL, combined.where_N, values_N))
    rows = seqs[third][where[third]]
    assert len(rows) > per_generation // 2
    return seqs, values_N, where, rows, values_N[third][where[third]]

  def parents_of(rows, candidates):  # Each row is a 2-site mutant of one of the candidates.
    return bool(np.all((rows[:, None, :] != candidates[None]).sum(-1).min(axis=1) == 2))

  # Generation 2 improves (any token 3 scores 0.75, above the 0.6 of far 2 and 5, generation 2's
  # parents): generation 3's parents are generation 2's first two rows labelled 0.75 (ties: earlier row).
  def improving(x, where):
    return jnp.where(where, jnp.where(jnp.any(x == 3, axis=-1), 0.75, 0.25), -jnp.inf).astype(jnp.float32)

  seqs, values_N, where, rows, row_values = three_generations(improving, _STATES)
  improved = np.flatnonzero(where[second] & (values_N[second] == 0.75))
  assert len(improved) >= 2
  np.testing.assert_array_equal(row_values, np.where((rows == 3).any(-1), 0.75, 0.25))
  assert parents_of(rows, seqs[second][improved[:2]])

  # Generation 2 improves nothing: generation 3 is drawn from generation 2's parents (far 2 and 5), not
  # the round's (far 0). With 2 states each parent has only 66 two-site mutants, so generation 3 would
  # repeat some of generation 2's rows if the history were not carried.
  def flat(x, where):
    return jnp.where(where, jnp.float32(0.25), -jnp.inf)

  seqs, _, where, rows, row_values = three_generations(flat, 2)
  assert np.all(row_values == 0.25) and parents_of(rows, _FAR[[2, 5]])
  earlier = seqs[third.start - per_generation : third.start][where[second]]
  assert not (rows[:, None, :] == earlier[None]).all(-1).any()
