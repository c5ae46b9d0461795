"""Tests for llome_jax.pairs against a brute-force NumPy reference of the pair and triple definitions."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import pairs

_VALUE_LEVELS = np.array([-np.inf, 0.0, 0.25, 0.5, 1.0], np.float32)


def _case(seed: int, capacity: int = 50, length: int = 8, num_states: int = 3, frac_valid: float = 0.85):
  """Mutants of a few parents over a small vocabulary (many near neighbours and distance ties), tied
  and infeasible values, and some invalid rows."""
  rng = np.random.default_rng(seed)
  parents = rng.integers(0, num_states, (3, length))[rng.integers(0, 3, capacity)]
  mutate = rng.random((capacity, length)) < 0.15
  seqs = np.where(mutate, rng.integers(0, num_states, (capacity, length)), parents).astype(np.int32)
  values = rng.choice(_VALUE_LEVELS, capacity, p=[0.3, 0.1, 0.2, 0.2, 0.2]).astype(np.float32)
  valid = rng.random(capacity) < frac_valid
  return seqs, values, valid


def _reference_neighbors(seqs, valid, num_neighbors):
  counts = (seqs[:, None, :] != seqs[None, :, :]).sum(-1)
  neighbors = {}
  for i in np.flatnonzero(valid):
    others = [j for j in np.flatnonzero(valid) if j != i]
    neighbors[i] = sorted(others, key=lambda j: (counts[i, j], j))[:num_neighbors]
  return neighbors, counts


def _reference_pairs(seqs, values, valid, cfg):
  """The set of (worse, better) candidate pairs, by the definition in `pairs.candidate_pairs`."""
  neighbors, counts = _reference_neighbors(seqs, valid, cfg.num_neighbors)
  max_count = math.floor(cfg.max_distance * seqs.shape[1] + 1e-9)
  result = set()
  for i, near in neighbors.items():
    for j in near:
      if counts[i, j] <= max_count and values[i] != values[j]:
        result.add((i, j) if values[i] < values[j] else (j, i))
  return result


def _reference_triples(seqs, values, valid, cfg, include_self=True):
  neighbors, counts = _reference_neighbors(seqs, valid, cfg.num_neighbors)
  max_count = math.floor(cfg.max_distance * seqs.shape[1] + 1e-9)
  result = set()
  for x, near in neighbors.items():
    near = [j for j in near if counts[x, j] <= max_count]
    rejected = [j for j in near if values[j] <= values[x]] + ([x] if include_self else [])
    result |= {(x, w, r) for w in near if values[w] > values[x] for r in rejected}
  return result


def _kept(result: pairs.Pairs):
  where = np.asarray(result.where_P)
  return list(
    zip(np.asarray(result.x_idx_P)[where].tolist(), np.asarray(result.y_idx_P)[where].tolist(), strict=True)
  )


@functools.cache
def _jitted(fn, cfg, **kwargs):
  return jax.jit(functools.partial(fn, cfg=cfg, **kwargs))


def test_config_validation():
  with pytest.raises(ValueError, match='capacity'):
    pairs.PairConfig(capacity=0)
  with pytest.raises(ValueError, match='max_distance'):
    pairs.PairConfig(capacity=4, max_distance=1.5)
  with pytest.raises(ValueError, match='max_infeasible_fraction'):
    pairs.PairConfig(capacity=4, max_infeasible_fraction=-0.1)
  assert pairs.PairConfig(capacity=4).infeasible_ratio == (1, 9)
  assert pairs.PairConfig(capacity=4, max_infeasible_fraction=1.0).infeasible_ratio is None
  assert pairs.PairConfig(capacity=4).max_count(32) == 8


def test_chunked_hamming_equals_direct_at_large_c():
  rng = np.random.default_rng(0)
  b = rng.integers(0, 4, (3001, 32)).astype(np.int32)
  a = b[:257]
  direct = (a[:, None, :] != b[None, :, :]).mean(-1)
  chunked = jax.jit(functools.partial(pairs.hamming_BxC, block_size=64))(a, b)
  np.testing.assert_allclose(np.asarray(chunked), direct, rtol=0, atol=1e-7)


def test_nearest_neighbors_match_reference_with_ties_and_ragged_blocks():
  rng = np.random.default_rng(1)
  seqs = rng.integers(0, 2, (301, 8)).astype(np.int32)
  valid = rng.random(301) < 0.9
  fn = jax.jit(functools.partial(pairs.nearest_neighbors, num_neighbors=7, block_size=64))
  nbr, count, ok = map(np.asarray, fn(seqs, valid))
  expected, counts = _reference_neighbors(seqs, valid, 7)
  assert not ok[~valid].any()
  for i, near in expected.items():
    assert nbr[i][ok[i]].tolist() == near
    np.testing.assert_array_equal(count[i][ok[i]], counts[i, near])


def test_nearest_neighbors_with_fewer_rows_than_k():
  seqs = np.arange(12, dtype=np.int32).reshape(4, 3)
  valid = np.array([True, True, False, True])
  nbr, _, ok = map(np.asarray, pairs.nearest_neighbors(seqs, valid, num_neighbors=5))
  assert ok.shape == (4, 5)
  assert ok.sum(1).tolist() == [2, 2, 0, 2]
  assert nbr[0][ok[0]].tolist() == [1, 3]


@pytest.mark.parametrize('num_neighbors', [4, 30])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_candidates_equal_reference(seed, num_neighbors):
  seqs, values, valid = _case(seed, capacity=50)
  cfg = pairs.PairConfig(capacity=2000, num_neighbors=num_neighbors, max_infeasible_fraction=1.0)
  expected = _reference_pairs(seqs, values, valid, cfg)
  assert len(expected) > 20
  x, y, qualifies = map(np.asarray, _jitted(pairs.candidate_pairs, cfg)(seqs, values, valid))
  found = list(zip(x[qualifies].tolist(), y[qualifies].tolist(), strict=True))
  assert len(found) == len(set(found))  # Each unordered pair once.
  assert set(found) == expected
  # With no cap and room for all, make_pairs keeps exactly the candidates.
  result = _jitted(pairs.make_pairs, cfg)(jax.random.key(seed), seqs, values, valid)
  kept = _kept(result)
  assert sorted(kept) == sorted(expected)
  assert int(result.num_candidates) == len(expected)


def test_orientation_rewards_and_invalid_rows():
  seqs, values, valid = _case(3, capacity=60)
  cfg = pairs.PairConfig(capacity=500, max_infeasible_fraction=0.3)
  result = _jitted(pairs.make_pairs, cfg)(jax.random.key(0), seqs, values, valid)
  where = np.asarray(result.where_P)
  x, y = np.asarray(result.x_idx_P)[where], np.asarray(result.y_idx_P)[where]
  assert where.sum() > 0
  assert (values[x] < values[y]).all()  # Worse -> better; -inf is below every feasible value.
  assert np.isfinite(values[y]).all()
  assert valid[x].all() and valid[y].all()
  f_tilde = np.maximum(values, 0.0)
  np.testing.assert_allclose(np.asarray(result.rewards_P)[where], np.maximum(0, f_tilde[y] - f_tilde[x]))
  assert (np.asarray(result.rewards_P)[~where] == 0).all()


@pytest.mark.parametrize('fraction', [0.1, 0.25])
def test_infeasible_cap_holds_and_is_exact_when_binding(fraction):
  seqs, values, valid = _case(4, capacity=60)
  cfg = pairs.PairConfig(capacity=4000, max_infeasible_fraction=fraction)
  expected = _reference_pairs(seqs, values, valid, cfg)
  num_infeasible = sum(values[x] == -np.inf for x, _ in expected)
  num_feasible = len(expected) - num_infeasible
  quota = math.floor(num_feasible * fraction / (1 - fraction) + 1e-9)
  assert num_infeasible > quota  # The cap binds in this case.
  fn = _jitted(pairs.make_pairs, cfg)
  chosen = set()
  for seed in range(3):
    result = fn(jax.random.key(seed), seqs, values, valid)
    kept = _kept(result)
    kept_infeasible = [p for p in kept if values[p[0]] == -np.inf]
    assert set(kept) <= expected and len(kept) == len(set(kept))
    assert len(kept) - len(kept_infeasible) == num_feasible  # Every feasible pair is kept.
    assert len(kept_infeasible) == quota
    assert len(kept_infeasible) <= fraction * len(kept)
    assert int(result.num_candidates) == len(expected)
    assert int(result.num_infeasible_candidates) == num_infeasible
    chosen.add(frozenset(kept_infeasible))
  assert len(chosen) > 1  # The capped subset is random.


def test_capacity_keeps_a_uniform_stratified_subset():
  seqs, values, valid = _case(5, capacity=60)
  cfg = pairs.PairConfig(capacity=40, max_infeasible_fraction=0.1)
  expected = _reference_pairs(seqs, values, valid, cfg)
  assert len(expected) > 2 * cfg.capacity
  result = _jitted(pairs.make_pairs, cfg)(jax.random.key(0), seqs, values, valid)
  kept = _kept(result)
  assert len(kept) == cfg.capacity and len(set(kept)) == cfg.capacity
  assert set(kept) <= expected
  assert sum(values[x] == -np.inf for x, _ in kept) <= math.floor(0.1 * cfg.capacity)
  assert np.asarray(result.where_P).all()


def test_no_pairs_when_nothing_qualifies():
  seqs = np.zeros((10, 8), np.int32) + np.arange(10)[:, None]  # All rows differ everywhere.
  values = np.linspace(0, 1, 10).astype(np.float32)
  fn = _jitted(pairs.make_pairs, pairs.PairConfig(capacity=8))
  result = fn(jax.random.key(0), seqs, values, np.ones(10, bool))
  assert not np.asarray(result.where_P).any() and int(result.num_candidates) == 0


def test_jit_equals_eager_and_traces_once():
  cfg = pairs.PairConfig(capacity=64, num_neighbors=6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key, seqs, values, valid):
    return pairs.make_pairs(key, seqs, values, valid, cfg=cfg)

  for seed in range(3):
    seqs, values, valid = _case(seed, capacity=48)
    jitted = step(jax.random.key(seed), seqs, values, valid)
  eager = pairs.make_pairs(
    jax.random.key(2), jnp.asarray(seqs), jnp.asarray(values), jnp.asarray(valid), cfg=cfg
  )
  chex.assert_trees_all_equal(jitted, eager)


def test_make_pairs_inside_scan():
  seqs, values, valid = _case(6, capacity=40)
  cfg = pairs.PairConfig(capacity=32, num_neighbors=5)

  def body(carry, key):
    result = pairs.make_pairs(key, seqs, values, valid, cfg=cfg)
    return carry + jnp.sum(result.where_P), result.num_candidates

  total, num = jax.lax.scan(body, jnp.int32(0), jax.random.split(jax.random.key(0), 3))
  assert int(total) == 3 * min(32, int(num[0]))


def test_best_pairs_pick_the_best_better_members():
  seqs, values, valid = _case(7, capacity=60)
  cfg = pairs.PairConfig(capacity=300, max_infeasible_fraction=0.2)
  result = _jitted(pairs.make_pairs, cfg)(jax.random.key(1), seqs, values, valid)
  idx, where = map(np.asarray, jax.jit(pairs.best_pairs, static_argnums=2)(result, values, 25))
  assert where.all()
  real_values = np.sort(values[np.asarray(result.y_idx_P)[np.asarray(result.where_P)]])[::-1]
  chosen = values[np.asarray(result.y_idx_P)[idx]]
  np.testing.assert_array_equal(chosen, real_values[:25])
  assert np.asarray(result.where_P)[idx].all()
  # More seeds asked for than real pairs: the extra slots are unreal.
  num_real = int(np.asarray(result.where_P).sum())
  _, where = pairs.best_pairs(result, values, min(300, num_real + 5))
  assert int(np.asarray(where).sum()) == num_real


def test_best_pairs_of_triples_rank_the_chosen_member():
  seqs, values, valid = _case(8, capacity=60)
  cfg = pairs.PairConfig(capacity=200)
  triples = _jitted(pairs.make_triples, cfg)(jax.random.key(2), seqs, values, valid)
  idx, where = map(np.asarray, pairs.best_pairs(triples, values, 10))
  assert where.all()
  real = np.sort(values[np.asarray(triples.yw_idx_P)[np.asarray(triples.where_P)]])[::-1]
  np.testing.assert_array_equal(values[np.asarray(triples.yw_idx_P)[idx]], real[:10])


def test_cap_infeasible_rows():
  values = np.array([-np.inf] * 12 + [0.5] * 18, np.float32)
  valid = np.ones(30, bool)
  valid[0] = valid[-1] = False
  cfg = pairs.PairConfig(capacity=4, max_infeasible_fraction=0.1)
  kept = np.asarray(pairs.cap_infeasible_rows(jax.random.key(0), values, valid, cfg=cfg))
  assert not kept[0] and not kept[-1]
  assert kept[12:-1].all()  # All 17 valid feasible rows.
  assert kept[:12].sum() == 17 // 9


@pytest.mark.parametrize('include_self', [True, False])
def test_triples_equal_reference_without_caps(include_self):
  seqs, values, valid = _case(8, capacity=45)
  cfg = pairs.PairConfig(capacity=20000, num_neighbors=10, max_infeasible_fraction=1.0)
  expected = _reference_triples(seqs, values, valid, cfg, include_self)
  fn = _jitted(pairs.make_triples, cfg, include_self_rejected=include_self)
  result = fn(jax.random.key(0), seqs, values, valid)
  where = np.asarray(result.where_P)
  found = list(
    zip(
      *(np.asarray(a)[where].tolist() for a in (result.x_idx_P, result.yw_idx_P, result.yl_idx_P)),
      strict=True,
    )
  )
  assert len(found) == len(set(found)) and set(found) == expected
  assert int(result.num_candidates) == len(expected)


def test_triples_satisfy_their_definition_under_caps():
  seqs, values, valid = _case(9, capacity=60)
  cfg = pairs.PairConfig(capacity=100, num_neighbors=12, max_infeasible_fraction=0.1)
  key = jax.random.key(3)
  result = _jitted(pairs.make_triples, cfg)(key, seqs, values, valid)
  # The rows left after the infeasible-row cap, which make_triples draws with the first half of its key.
  capped = np.asarray(pairs.cap_infeasible_rows(jax.random.split(key)[0], values, valid, cfg=cfg))
  assert capped.sum() < valid.sum()
  where = np.asarray(result.where_P)
  x, w, r = (np.asarray(a)[where] for a in (result.x_idx_P, result.yw_idx_P, result.yl_idx_P))
  assert where.all() and int(result.num_candidates) > cfg.capacity
  assert len(set(zip(x.tolist(), w.tolist(), r.tolist(), strict=True))) == cfg.capacity
  assert (values[w] > values[x]).all() and (values[r] <= values[x]).all()
  assert capped[x].all() and capped[w].all() and capped[r].all()
  neighbors, counts = _reference_neighbors(seqs, capped, cfg.num_neighbors)
  for xi, wi, ri in zip(x, w, r, strict=True):
    assert wi in neighbors[xi] and counts[xi, wi] <= 2
    assert ri == xi or (ri in neighbors[xi] and counts[xi, ri] <= 2)
  assert (capped & ~np.isfinite(values)).sum() == (valid & np.isfinite(values)).sum() // 9
