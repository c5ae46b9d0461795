"""Tests of label selection: the masked quantile against NumPy, `select` against a brute-force reference of
its rule, the uniformity of its draw, jit against eager."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import archive, labelling

# Jitted once per (config, shapes); eager `select` is covered by the jit-equals-eager test.
_select = jax.jit(labelling.select, static_argnames='cfg')
QUANTILES = (0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.9, 1.0)


def _quantile(x, where, q):
  return float(labelling.masked_quantile(jnp.asarray(x, jnp.float32), jnp.asarray(where), q))


# masked_quantile


@pytest.mark.parametrize('seed', range(4))
def test_masked_quantile_matches_numpy(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=40).astype(np.float32)
  where = rng.random(40) < 0.6
  # Entries outside the mask may be anything, NaN and infinities included.
  x[~where] = rng.choice([np.nan, np.inf, -np.inf, 1e30], size=int((~where).sum()))
  for q in (*QUANTILES, 0.37, 0.999):
    expected = np.quantile(x[where].astype(np.float64), q)
    np.testing.assert_allclose(_quantile(x, where, q), expected, rtol=1e-6, atol=1e-6, err_msg=f'q={q}')


def test_masked_quantile_exact_ranks_hit_the_element():
  # Where q (n - 1) is an integer k (in float64, as NumPy computes it), the quantile is the k-th smallest
  # entry exactly: no float32 rounding of the rank may lift it above (0.6 * 25 is such a case).
  rng = np.random.default_rng(7)
  x = rng.normal(size=64).astype(np.float32)
  checked = 0
  for n in range(1, 65):
    where = np.zeros(64, bool)
    where[rng.permutation(64)[:n]] = True
    for q in (0.1, 0.2, 0.25, 0.3, 0.5, 0.6, 0.7, 0.75, 0.9):
      rank = q * (n - 1)
      if rank != round(rank):
        continue
      checked += 1
      expected = np.sort(x[where])[round(rank)]
      assert _quantile(x, where, q) == expected, (n, q)
      assert np.quantile(x[where], q) == expected  # The reference agrees.
  assert checked > 50


def test_masked_quantile_ties_single_entry_and_empty():
  x = np.array([3.0, 1.0, 2.0, 1.0, 2.0, 2.0, 9.0, 1.0], np.float32)
  where = np.array([1, 1, 1, 1, 1, 1, 0, 1], bool)
  for q in QUANTILES:
    assert _quantile(x, where, q) == pytest.approx(np.quantile(x[where], q), abs=1e-6)
  same = np.full(8, 0.5, np.float32)
  assert all(_quantile(same, where, q) == 0.5 for q in QUANTILES)
  single = np.zeros(8, bool)
  single[3] = True
  assert all(_quantile(x, single, q) == 1.0 for q in (*QUANTILES, 0.37))
  assert all(np.isnan(_quantile(x, np.zeros(8, bool), q)) for q in QUANTILES)


def test_masked_quantile_infinite_entries_at_exact_ranks():
  # An exact rank takes the element without interpolating, so -inf there gives -inf, not NaN.
  x = np.array([-np.inf, -np.inf, 0.0, 1.0], np.float32)
  where = np.ones(4, bool)
  assert _quantile(x, where, 0.0) == -np.inf
  assert _quantile(x, where, 1 / 3) == -np.inf
  assert _quantile(x, where, 1.0) == 1.0
  assert _quantile(x, where, 5 / 6) == pytest.approx(0.5)


# select: a brute-force reference of the documented rule


def _reference(seqs, likelihood, valid, labelled_rows, q):
  """Eligible rows by the rule, in plain Python: (unique mask, threshold, eligible mask, archived mask)."""
  seen, unique = set(), np.zeros(len(seqs), bool)
  for i, row in enumerate(map(tuple, seqs)):
    if valid[i] and row not in seen:
      seen.add(row)
      unique[i] = True
  threshold = np.quantile(likelihood[unique].astype(np.float64), q) if unique.any() else np.nan
  held = {tuple(r) for r in labelled_rows}
  archived = np.array([tuple(r) in held for r in seqs])
  eligible = unique & (likelihood >= threshold) & ~archived
  return unique, threshold, eligible, archived


def _pool(seed, n=80, length=4, vocab=2):
  """A pool with many duplicates (2^4 = 16 distinct rows), tied likelihoods, invalid rows, and an archive
  holding some of its sequences (its likeliest distinct one among them) plus sequences it lacks."""
  rng = np.random.default_rng(seed)
  seqs = rng.integers(0, vocab, size=(n, length)).astype(np.int32)
  likelihood = np.round(rng.normal(size=n), 1).astype(np.float32)
  valid = rng.random(n) < 0.8
  unique = _reference(seqs, likelihood, valid, [], 0.0)[0]
  best = seqs[np.flatnonzero(unique)[np.argmax(likelihood[unique])]]
  held = np.concatenate([best[None], seqs[valid][[1, 3]], np.full((2, length), vocab, np.int32)])
  labelled = archive.add(archive.init(16, length), jnp.asarray(held), jnp.zeros(len(held)))
  return seqs, likelihood, valid, labelled, held


def _check_selection(sel, seqs, likelihood, valid, held, *, num_labels, q):
  unique, threshold, eligible, _ = _reference(seqs, likelihood, valid, held, q)
  sel = jax.tree.map(np.asarray, sel)
  num_eligible = int(eligible.sum())
  assert int(sel.num_unique) == int(unique.sum())
  assert int(sel.num_eligible) == num_eligible
  np.testing.assert_allclose(sel.threshold, threshold, rtol=1e-6, atol=1e-6)
  count = min(num_labels, num_eligible)
  chex.assert_shape(sel.seqs_NxL, (num_labels, seqs.shape[1]))
  np.testing.assert_array_equal(sel.where_N, np.arange(num_labels) < count)
  # Each eligible row is the first occurrence of its sequence, so a sequence names its row.
  row_of = {tuple(seqs[i]): i for i in np.flatnonzero(eligible)}
  chosen = [tuple(r) for r in sel.seqs_NxL[:count]]
  assert len(set(chosen)) == count, 'a row was selected twice'
  assert all(r in row_of for r in chosen), 'an ineligible row was selected'
  np.testing.assert_array_equal(sel.likelihood_N[:count], likelihood[[row_of[r] for r in chosen]])
  assert not sel.seqs_NxL[count:].any() and not sel.likelihood_N[count:].any()
  return set(chosen), set(row_of)


@pytest.mark.parametrize(
  ('q', 'num_labels'), [(0.0, 3), (0.0, 200), (0.3, 1), (0.6, 3), (0.6, 200), (1.0, 3)]
)
def test_select_matches_the_reference_rule(q, num_labels):
  for seed in range(3):
    seqs, likelihood, valid, labelled, held = _pool(seed)
    unique, _, eligible, archived = _reference(seqs, likelihood, valid, held, q)
    # The pool exercises every clause: invalid rows, duplicates, archived rows among the unique ones.
    assert (~valid).any() and (valid & ~unique).any() and (unique & archived).any()
    cfg = labelling.SelectConfig(num_labels=num_labels, likelihood_quantile=q)
    for k in range(3):
      sel = _select(
        jax.random.key(k), jnp.asarray(seqs), jnp.asarray(likelihood), jnp.asarray(valid), labelled, cfg=cfg
      )
      chosen, allowed = _check_selection(sel, seqs, likelihood, valid, held, num_labels=num_labels, q=q)
      if num_labels >= len(allowed):
        assert chosen == allowed
    # The archived likeliest distinct row stays out even where it alone clears the threshold.
    assert not eligible[np.argmax(np.where(unique, likelihood, -np.inf))]


def test_select_empty_pool():
  seqs, likelihood, _, labelled, _ = _pool(0)
  cfg = labelling.SelectConfig(num_labels=5)
  sel = _select(
    jax.random.key(0),
    jnp.asarray(seqs),
    jnp.asarray(likelihood),
    jnp.zeros(len(seqs), bool),
    labelled,
    cfg=cfg,
  )
  assert int(sel.num_unique) == 0 and int(sel.num_eligible) == 0 and np.isnan(float(sel.threshold))
  assert not sel.where_N.any() and not sel.seqs_NxL.any() and not sel.likelihood_N.any()


def test_select_more_labels_than_pool_rows():
  seqs, likelihood, valid, labelled, held = _pool(1, n=12, length=6, vocab=3)
  cfg = labelling.SelectConfig(num_labels=50, likelihood_quantile=0.0)
  sel = _select(
    jax.random.key(3), jnp.asarray(seqs), jnp.asarray(likelihood), jnp.asarray(valid), labelled, cfg=cfg
  )
  chosen, allowed = _check_selection(sel, seqs, likelihood, valid, held, num_labels=50, q=0.0)
  assert chosen == allowed and len(allowed) > 0


def test_select_draw_is_uniform():
  # Six eligible rows (distinct, valid, all at or above the 0-quantile, none archived), two labels.
  seqs = np.array([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1], [0, 1], [2, 2]], np.int32)
  valid = np.array([1, 1, 1, 1, 1, 1, 1, 0], bool)
  likelihood = np.linspace(-2.0, -1.0, 8).astype(np.float32)
  labelled = archive.add(archive.init(4, 2), jnp.array([[3, 3]]), jnp.zeros(1))
  num_labels, num_keys = 2, 6000
  cfg = labelling.SelectConfig(num_labels=num_labels, likelihood_quantile=0.0)
  draw = jax.jit(
    jax.vmap(
      lambda key: (
        labelling.select(key, *map(jnp.asarray, (seqs, likelihood, valid)), labelled, cfg=cfg).seqs_NxL
      )
    )
  )
  chosen_KxNxL = np.asarray(draw(jax.random.split(jax.random.key(0), num_keys)))
  eligible = [tuple(r) for r in seqs[:6]]
  subsets = [frozenset(map(tuple, rows)) for rows in chosen_KxNxL]
  assert all(len(s) == num_labels and s <= set(eligible) for s in subsets)
  # Each row is chosen with probability n / E and each n-subset with probability 1 / C(E, n); counts are
  # binomial, held to 6 standard deviations (a chance failure has probability ~1e-9 per count).
  for p, counts in (
    (num_labels / 6, [sum(r in s for s in subsets) for r in eligible]),
    (1 / 15, [sum(s == frozenset(c) for s in subsets) for c in itertools.combinations(eligible, 2)]),
  ):
    sigma = np.sqrt(num_keys * p * (1 - p))
    assert np.all(np.abs(np.array(counts) - num_keys * p) < 6 * sigma), counts


def test_select_jit_equals_eager_and_traces_once():
  cfg = labelling.SelectConfig(num_labels=6, likelihood_quantile=0.6)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jitted(key, seqs, likelihood, valid, labelled):
    return labelling.select(key, seqs, likelihood, valid, labelled, cfg=cfg)

  eager = functools.partial(labelling.select, cfg=cfg)
  for seed in range(3):
    seqs, likelihood, valid, labelled, _ = _pool(seed)
    args = (jax.random.key(seed), jnp.asarray(seqs), jnp.asarray(likelihood), jnp.asarray(valid), labelled)
    chex.assert_trees_all_close(jitted(*args), eager(*args))


def test_select_config_validation():
  for kwargs in (
    {'num_labels': 0},
    {'num_labels': -3},
    {'likelihood_quantile': -0.1},
    {'likelihood_quantile': 1.5},
  ):
    with pytest.raises(ValueError):
      labelling.SelectConfig(**kwargs)
  labelling.SelectConfig(num_labels=1, likelihood_quantile=0.0)
  labelling.SelectConfig(num_labels=1, likelihood_quantile=1.0)
