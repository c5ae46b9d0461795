"""Tests for ehrlich: holo parity, jit/vmap/batching, infeasibility, quantisation, sampling, validation."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax.test_functions import dmp, ehrlich, ehrlich_kernels

NUM_HOLO_CASES = 12
INT32_MAX = int(np.iinfo(np.int32).max)
INT32_MIN = int(np.iinfo(np.int32).min)

# One jitted evaluate for the module, so its compilation cache is shared between tests. Eager evaluate
# compiles every shifted slice separately (about a second per new instance on CPU), so tests that are not
# about eager execution use this one.
evaluate_jit = jax.jit(ehrlich.evaluate)
observe_jit = jax.jit(ehrlich.observe)
is_feasible_jit = jax.jit(ehrlich.is_feasible)


def _params_from_case(case) -> ehrlich.EhrlichParams:
  return ehrlich.make_params(
    case['transition_matrix'],
    case['motifs'],
    case['spacings'],
    quantization=case['quantization'],
    epistasis_factor=case['epistasis_factor'],
  )


def _reference_evaluate(params: ehrlich.EhrlichParams, x_NxL) -> np.ndarray:
  """Independent NumPy float32 transcription of holo's `Ehrlich._evaluate_true` and `motif_search`."""
  x_NxL = np.asarray(x_NxL, dtype=np.int64)
  matrix_VxV = np.asarray(params.transition_matrix)
  num_states = matrix_VxV.shape[0]
  motif_length = len(params.motifs[0])
  quant_factor_1 = math.ceil(motif_length / params.quantization)
  quant_factor_2 = np.float32(motif_length / quant_factor_1)
  epistasis = np.float32(params.epistasis_factor)
  value_N = None
  for motif, gaps in zip(params.motifs, params.spacings, strict=True):
    index_K = np.concatenate([[0], np.cumsum(gaps, dtype=np.int64)])
    starts_W = np.arange(x_NxL.shape[-1] - index_K[-1])
    gathered_NxWxK = x_NxL[:, starts_W[:, None] + index_K[None, :]]
    count_NxW = (gathered_NxWxK == np.asarray(motif)).sum(-1).astype(np.float32)
    presence_N = (np.floor(count_NxW / np.float32(quant_factor_1)) / quant_factor_2).max(-1)
    rho_N = (epistasis * presence_N * (presence_N - np.float32(1.0)) + np.float32(1.0)) * presence_N
    value_N = rho_N if value_N is None else value_N * rho_N
  in_range_N = np.all((x_NxL >= 0) & (x_NxL < num_states), axis=-1)
  safe_NxL = np.clip(x_NxL, 0, num_states - 1)
  allowed_N = np.all(matrix_VxV[safe_NxL[:, :-1], safe_NxL[:, 1:]] > 0, axis=-1)
  return np.where(in_range_N & allowed_N, value_N, np.float32(-np.inf)).astype(np.float32)


def _probe_batch(params: ehrlich.EhrlichParams, dim: int, seed: int, paths_NxL=None) -> np.ndarray:
  """Optimum mutants (0..7 motif elements and maybe one other token changed at random), constant
  sequences (always feasible, mostly low values) and, if given, DMP paths."""
  rng = np.random.default_rng(seed)
  optimum_L = np.asarray(ehrlich.optimal_solution(params, dim))
  # Where the optimum holds the motif elements: each motif's offsets, motifs written one after another.
  element_positions, start = [], 0
  for gaps in params.spacings:
    offsets = np.concatenate([[0], np.cumsum(gaps, dtype=np.int64)])
    element_positions.extend((start + offsets).tolist())
    start += int(offsets[-1]) + 1
  mutants_NxL = np.tile(optimum_L, (48, 1))
  for row, mutant_L in enumerate(mutants_NxL):
    positions = rng.choice(element_positions, size=min(row % 8, len(element_positions)), replace=False)
    if row % 2:
      positions = np.append(positions, rng.integers(0, dim))
    mutant_L[positions] = rng.integers(0, params.num_states, size=positions.size)
  constants_VxL = np.repeat(np.arange(params.num_states)[:, None], dim, axis=1)
  x_NxL = np.concatenate(
    [mutants_NxL, constants_VxL] + ([] if paths_NxL is None else [np.asarray(paths_NxL)])
  )
  return x_NxL.astype(np.int32)


def _assert_probe_is_informative(values_N: np.ndarray, min_distinct: int = 3) -> None:
  finite_N = values_N[np.isfinite(values_N)]
  assert np.isneginf(values_N).any(), 'probe batch has no infeasible rows'
  assert np.unique(finite_N).size >= min_distinct, (
    f'probe batch has too few distinct values: {np.unique(finite_N)}'
  )


@pytest.fixture(scope='module')
def instance(holo_cases):
  """Holo's f2-shaped case (v=32, L=32, c=4, k=4, q=4) with epistasis 0.3, and a probe batch for it."""
  case = holo_cases[4]
  assert (case['num_states'], case['dim'], case['num_motifs'], case['motif_length']) == (32, 32, 4, 4)
  params = ehrlich.make_params(
    case['transition_matrix'], case['motifs'], case['spacings'], quantization=4, epistasis_factor=0.3
  )
  return params, case['dim'], _probe_batch(params, case['dim'], seed=0)


# --- Parity with pytorch-holo 0.0.5 ------------------------------------------------------------------


@pytest.mark.parametrize('index', range(NUM_HOLO_CASES), ids=lambda i: f'case{i}')
def test_matches_holo(holo_cases, index):
  assert len(holo_cases) == NUM_HOLO_CASES
  case = holo_cases[index]
  params = _params_from_case(case)
  expected_N = np.asarray(case['values'], dtype=np.float32)
  # The stored values are float32 numbers written as doubles: the cast above must be exact.
  np.testing.assert_array_equal(expected_N.astype(np.float64), np.asarray(case['values'], np.float64))

  optimum_L = ehrlich.optimal_solution(params, case['dim'])
  np.testing.assert_array_equal(np.asarray(optimum_L), np.asarray(case['optimal_solution']))

  # One call per mode for the holo sequences and the optimum together (same length).
  x_NxL = jnp.concatenate([jnp.asarray(case['sequences'], dtype=jnp.int32), optimum_L[None]])
  eager_N = ehrlich.evaluate(params, x_NxL)
  jitted_N = evaluate_jit(params, x_NxL)
  chex.assert_type([eager_N, jitted_N], jnp.float32)
  chex.assert_shape([eager_N, jitted_N], (expected_N.size + 1,))
  for values_N in (np.asarray(eager_N), np.asarray(jitted_N)):
    np.testing.assert_array_equal(values_N[:-1], expected_N)
    assert values_N[-1] == 1.0


# --- Transformations and batching --------------------------------------------------------------------


def test_jit_equals_eager(instance):
  params, _, x_NxL = instance
  eager_N = np.asarray(ehrlich.evaluate(params, x_NxL))
  _assert_probe_is_informative(eager_N)
  np.testing.assert_array_equal(np.asarray(evaluate_jit(params, x_NxL)), eager_N)
  np.testing.assert_array_equal(eager_N, _reference_evaluate(params, x_NxL))


def test_vmap_equals_python_loop(instance):
  params, _, x_NxL = instance
  vmapped_N = jax.jit(jax.vmap(ehrlich.evaluate, in_axes=(None, 0)))(params, jnp.asarray(x_NxL))
  looped_N = np.stack([np.asarray(evaluate_jit(params, x_L)) for x_L in x_NxL])
  chex.assert_shape(vmapped_N, (x_NxL.shape[0],))
  np.testing.assert_array_equal(np.asarray(vmapped_N), looped_N)


def test_leading_batch_dims(instance):
  params, dim, x_NxL = instance
  x_2x3xL = x_NxL[:6].reshape(2, 3, dim)
  flat_6 = np.asarray(evaluate_jit(params, x_NxL[:6]))
  values_2x3 = evaluate_jit(params, x_2x3xL)
  chex.assert_shape(values_2x3, (2, 3))
  np.testing.assert_array_equal(np.asarray(values_2x3), flat_6.reshape(2, 3))
  single = evaluate_jit(params, x_NxL[0])
  chex.assert_shape(single, ())
  assert float(single) == flat_6[0]


def test_evaluate_traces_once(instance):
  params, dim, x_NxL = instance

  @chex.assert_max_traces(n=1)
  def evaluate_fn(params, x_BxL):
    return ehrlich.evaluate(params, x_BxL)

  evaluate_fn_jit = jax.jit(evaluate_fn)
  x_BxL = jnp.asarray(x_NxL[:16])
  expected_B = np.asarray(evaluate_jit(params, x_BxL))
  for shift in range(4):
    values_B = evaluate_fn_jit(params, jnp.roll(x_BxL, shift, axis=0))
    np.testing.assert_array_equal(np.asarray(values_B), np.roll(expected_B, shift))

  # Only the zero pattern of the matrix matters, and the matrix is a traced leaf: new probabilities on
  # the same support reuse the trace and give the same values.
  matrix_VxV = np.asarray(params.transition_matrix, np.float64)
  reweighted_VxV = matrix_VxV * np.random.default_rng(0).uniform(0.5, 2.0, matrix_VxV.shape)
  reweighted = ehrlich.make_params(
    reweighted_VxV / reweighted_VxV.sum(-1, keepdims=True),
    params.motifs,
    params.spacings,
    quantization=params.quantization,
    epistasis_factor=params.epistasis_factor,
  )
  np.testing.assert_array_equal(
    np.asarray(evaluate_fn_jit(reweighted, x_BxL)), np.asarray(evaluate_fn_jit(params, x_BxL))
  )

  # A new shape must retrace, which shows the trace counter is live.
  with pytest.raises(AssertionError):
    evaluate_fn_jit(params, x_BxL[:4])


@pytest.mark.parametrize('dtype', [np.int8, np.uint8, np.int16, np.uint16, np.uint32, np.int64])
def test_narrow_and_wide_token_dtypes_match_int32(instance, dtype):
  params, _, x_NxL = instance
  expected_N = np.asarray(evaluate_jit(params, x_NxL.astype(np.int32)))
  np.testing.assert_array_equal(
    np.asarray(evaluate_jit(params, jnp.asarray(x_NxL.astype(dtype)))), expected_N
  )


# --- Infeasibility and input checks ------------------------------------------------------------------


@pytest.mark.parametrize('position', [0, 13, -1], ids=['first', 'middle', 'last'])
@pytest.mark.parametrize('token', ['num_states', -1, INT32_MAX, INT32_MIN], ids=['v', 'minus1', 'max', 'min'])
def test_out_of_range_token_is_infeasible(instance, token, position):
  params, dim, _ = instance
  x_L = np.asarray(ehrlich.optimal_solution(params, dim)).copy()
  x_L[position] = params.num_states if token == 'num_states' else token
  assert float(evaluate_jit(params, x_L)) == -np.inf
  assert not bool(is_feasible_jit(params, x_L))


def test_int64_token_beyond_int32_is_infeasible(instance):
  params, _, x_NxL = instance
  # Same shape as the eager call in test_jit_equals_eager, so no new compilation. Rows hold valid
  # tokens; adding 2**32 to one makes every row infeasible.
  x_NxL = x_NxL.astype(np.int64)
  x_NxL[:, 5] += 2**32
  values_N = np.asarray(ehrlich.evaluate(params, x_NxL))
  np.testing.assert_array_equal(values_N, np.full(x_NxL.shape[0], -np.inf, np.float32))


def test_banned_transitions_are_infeasible_and_allowed_ones_are_not(instance):
  params, dim, _ = instance
  matrix_VxV = np.asarray(params.transition_matrix)
  assert np.all(np.diag(matrix_VxV) > 0)
  first_P, second_P = np.meshgrid(np.arange(params.num_states), np.arange(params.num_states), indexing='ij')
  first_P, second_P = first_P.ravel(), second_P.ravel()
  # [a, ..., a, b, ..., b]: repeats are always allowed, so the only pair that can be banned is (a, b).
  x_PxL = np.where(np.arange(dim) < dim // 2, first_P[:, None], second_P[:, None]).astype(np.int32)
  values_P = np.asarray(evaluate_jit(params, x_PxL))
  banned_P = matrix_VxV[first_P, second_P] == 0
  assert banned_P.sum() > 0
  assert np.all(np.isneginf(values_P[banned_P]))
  assert np.all(np.isfinite(values_P[~banned_P]))


@pytest.mark.parametrize('dtype', [np.float32, np.float64, np.bool_])
def test_non_integer_input_raises_type_error(instance, dtype):
  params, dim, _ = instance
  x_L = np.asarray(ehrlich.optimal_solution(params, dim)).astype(dtype)
  with pytest.raises(TypeError, match='integer tokens'):
    ehrlich.evaluate(params, x_L)


def test_sequence_shorter_than_footprint_raises(instance):
  params, _, _ = instance
  min_dim = sum(sum(gaps) + 1 for gaps in params.spacings)
  optimum_L = ehrlich.optimal_solution(params, min_dim)
  assert float(evaluate_jit(params, optimum_L)) == 1.0
  with pytest.raises(ValueError, match='cannot hold'):
    ehrlich.evaluate(params, optimum_L[:-1])
  with pytest.raises(ValueError, match='cannot hold'):
    ehrlich.optimal_solution(params, min_dim - 1)


# --- Quantisation and epistasis on hand-built instances ----------------------------------------------


def _full_support_matrix(num_states: int) -> np.ndarray:
  """Every transition allowed, so every in-range sequence is feasible."""
  return np.full((num_states, num_states), 1.0 / num_states)


def _subset_sequences(motif, filler: int) -> tuple[np.ndarray, np.ndarray]:
  """The motif with every subset of its elements kept (the rest set to `filler`), and each subset's size."""
  motif_K = np.asarray(motif)
  keep_KxS = np.array(np.meshgrid(*[[False, True]] * motif_K.size, indexing='ij')).reshape(motif_K.size, -1)
  x_SxK = np.where(keep_KxS.T, motif_K, filler).astype(np.int32)
  return x_SxK, keep_KxS.sum(0)


@pytest.mark.parametrize(
  'quantization, expected_by_count',
  [
    (4, [0.0, 0.25, 0.5, 0.75, 1.0]),
    (3, [0.0, 0.0, 0.5, 0.5, 1.0]),  # ceil(4/3) = 2, like q = 2.
    (2, [0.0, 0.0, 0.5, 0.5, 1.0]),
    (1, [0.0, 0.0, 0.0, 0.0, 1.0]),
  ],
)
def test_quantisation_levels_k4(quantization, expected_by_count):
  # L = k: a single window, so the count is exactly the number of kept motif elements.
  params = ehrlich.make_params(
    _full_support_matrix(5), [[0, 1, 2, 3]], [[1, 1, 1]], quantization=quantization
  )
  x_SxK, counts_S = _subset_sequences(params.motifs[0], filler=4)
  assert sorted(set(counts_S.tolist())) == [0, 1, 2, 3, 4]
  values_S = np.asarray(evaluate_jit(params, x_SxK))
  np.testing.assert_array_equal(values_S, np.asarray(expected_by_count, np.float32)[counts_S])


def test_quantisation_k3_q2_follows_holo_formula():
  # ceil(3/2) = 2, so h = floor(n / 2) / 1.5: even the full motif scores 2/3, as in holo.
  params = ehrlich.make_params(_full_support_matrix(5), [[3, 1, 2]], [[1, 1]], quantization=2)
  x_SxK, counts_S = _subset_sequences(params.motifs[0], filler=4)
  expected_S = np.floor(counts_S.astype(np.float32) / np.float32(2)) / np.float32(1.5)
  assert expected_S.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(evaluate_jit(params, x_SxK)), expected_S)
  assert float(evaluate_jit(params, ehrlich.optimal_solution(params, 3))) == np.float32(1.0) / np.float32(1.5)


def test_best_window_counts_and_spacings_are_respected():
  # Offsets (0, 1, 3, 4): the motif 0 1 2 3 is read at l, l+1, l+3, l+4.
  params = ehrlich.make_params(_full_support_matrix(4), [[0, 1, 2, 3]], [[1, 2, 1]])
  x_BxL = np.array(
    [
      [0, 1, 0, 2, 3, 0, 0, 0, 0, 0],  # full motif at l = 0, the gap filled by anything
      [0, 1, 2, 3, 0, 0, 0, 0, 0, 0],  # contiguous motif ignores the spacing: best window has 2
      [0, 1, 1, 1, 1, 1, 1, 0, 2, 3],  # 2 at l = 0, 3 at l = 5 (x5=1, x6=1, x8=2, x9=3)
      [1, 1, 1, 1, 1, 1, 1, 1, 1, 0],  # the 0 sits where no window can use it as its first element
    ],
    dtype=np.int32,
  )
  np.testing.assert_array_equal(
    np.asarray(evaluate_jit(params, x_BxL)), np.array([1.0, 0.5, 0.75, 0.25], np.float32)
  )


@pytest.mark.parametrize('epistasis', [0.25, 1.0, 3.0])
def test_epistasis_response_and_product_over_motifs(epistasis):
  # Disjoint motif tokens, each token at one position, filler 8: motif 1 can only match in the window at
  # 0 and motif 2 only in the window at 4, so the counts are exactly the kept elements.
  params = ehrlich.make_params(
    _full_support_matrix(9), [[0, 1, 2, 3], [4, 5, 6, 7]], [[1, 1, 1], [1, 1, 1]], epistasis_factor=epistasis
  )
  first_SxK, first_S = _subset_sequences(params.motifs[0], filler=8)
  second_SxK, second_S = _subset_sequences(params.motifs[1], filler=8)
  x_SxSxL = np.concatenate(
    [
      np.broadcast_to(first_SxK[:, None], (16, 16, 4)),
      np.broadcast_to(second_SxK[None, :], (16, 16, 4)),
    ],
    axis=-1,
  )

  def rho(h):
    return (np.float32(epistasis) * h * (h - np.float32(1.0)) + np.float32(1.0)) * h

  h_first_S = first_S.astype(np.float32) / np.float32(4)
  h_second_S = second_S.astype(np.float32) / np.float32(4)
  expected_SxS = rho(h_first_S)[:, None] * rho(h_second_S)[None, :]
  assert expected_SxS.dtype == np.float32
  values_SxS = np.asarray(evaluate_jit(params, x_SxSxL))
  np.testing.assert_array_equal(values_SxS, expected_SxS)
  assert values_SxS[-1, -1] == 1.0


# --- Sampled instances -------------------------------------------------------------------------------

SWEEP_CONFIGS = {
  'v32_l32_c4_k4': dict(num_states=32, dim=32, num_motifs=4, motif_length=4),
  'v20_l64_c2_k8_q4': dict(num_states=20, dim=64, num_motifs=2, motif_length=8, quantization=4),
  'v8_l24_c3_k3': dict(num_states=8, dim=24, num_motifs=3, motif_length=3),
}
SWEEP_KEYS = {'v32_l32_c4_k4': 8, 'v20_l64_c2_k8_q4': 4, 'v8_l24_c3_k3': 4}


@pytest.fixture(scope='module', params=sorted(SWEEP_CONFIGS))
def sweep(request):
  """(config, {seed: sampled instance}, number of seeds whose matrix was not ergodic) for one shape."""
  config = SWEEP_CONFIGS[request.param]
  sampled, num_rejected = {}, 0
  for seed in range(SWEEP_KEYS[request.param]):
    try:
      sampled[seed] = ehrlich.sample_params(jax.random.key(seed), **config)
    except ValueError as err:
      assert 'not ergodic' in str(err)
      num_rejected += 1
  assert sampled, f'no seed gave an ergodic matrix for {config}'
  return config, sampled, num_rejected


def test_sweep_rarely_rejects_a_matrix(sweep):
  config, sampled, num_rejected = sweep
  assert num_rejected <= (len(sampled) + num_rejected) // 4, f'{num_rejected} non-ergodic draws for {config}'


def test_sampled_shapes_match_config(sweep):
  config, sampled, _ = sweep
  c, k = config['num_motifs'], config['motif_length']
  for params in sampled.values():
    assert params.num_states == config['num_states']
    chex.assert_shape(params.transition_matrix, (config['num_states'], config['num_states']))
    assert np.asarray(params.motifs).shape == (c, k)
    assert np.asarray(params.spacings).shape == (c, k - 1)
    assert params.quantization == config.get('quantization', k)
    assert np.all((np.asarray(params.motifs) >= 0) & (np.asarray(params.motifs) < config['num_states']))


def test_sampled_transition_matrix_is_banded_stochastic_ergodic(sweep):
  config, sampled, _ = sweep
  num_states = config['num_states']
  bandwidth = int(0.4 * num_states)
  for params in sampled.values():
    matrix_VxV = np.asarray(params.transition_matrix)
    assert matrix_VxV.dtype == np.float32
    assert np.all(matrix_VxV >= 0)
    nonzero_VxV = matrix_VxV > 0
    # A row is a shuffled band row (2b+1 states) plus the diagonal, which may fall outside the band.
    assert set(nonzero_VxV.sum(-1).tolist()) <= {2 * bandwidth + 1, 2 * bandwidth + 2}
    # The band rows are a permutation of the cyclic band, so columns have the same counts.
    assert set(nonzero_VxV.sum(0).tolist()) <= {2 * bandwidth + 1, 2 * bandwidth + 2}
    assert np.all(np.diag(matrix_VxV) > 0)
    np.testing.assert_allclose(matrix_VxV.sum(-1), 1.0, atol=1e-5)
    assert dmp.is_ergodic(matrix_VxV)


def test_sampled_motifs_are_feasible(sweep):
  _, sampled, _ = sweep
  for params in sampled.values():
    matrix_VxV = np.asarray(params.transition_matrix)
    # One DMP path cut into chunks: consecutive elements, across motif boundaries too, are allowed.
    path = np.asarray(params.motifs).ravel()
    assert np.all(matrix_VxV[path[:-1], path[1:]] > 0), path


def test_sampled_spacings_fit(sweep):
  config, sampled, _ = sweep
  dim, c, k = config['dim'], config['num_motifs'], config['motif_length']
  slack_per_motif = (dim - c * k) // c
  for params in sampled.values():
    spacings_MxG = np.asarray(params.spacings)
    assert np.all(spacings_MxG >= 1)
    # gap = 1 + floor(w * slack) with w on the simplex, so each motif spans at most k + slack.
    assert np.all(spacings_MxG.sum(-1) <= (k - 1) + slack_per_motif)
    assert (spacings_MxG.sum(-1) + 1).sum() <= dim


def test_sampled_optimum_scores_one(sweep):
  config, sampled, _ = sweep
  for params in sampled.values():
    optimum_L = ehrlich.optimal_solution(params, config['dim'])
    chex.assert_shape(optimum_L, (config['dim'],))
    assert float(evaluate_jit(params, optimum_L)) == 1.0


def test_sampled_initial_solution_is_feasible(sweep):
  config, sampled, _ = sweep
  dim = config['dim']
  # initial_solution recompiles its sampling scan on every call (~0.3 s), so only the first instance.
  params = next(iter(sampled.values()))
  x_NxL = ehrlich.initial_solution(jax.random.key(100), params, dim, n=16)
  chex.assert_shape(x_NxL, (16, dim))
  assert jnp.issubdtype(x_NxL.dtype, jnp.integer)
  assert bool(jnp.all(is_feasible_jit(params, x_NxL)))
  values_N = np.asarray(evaluate_jit(params, x_NxL))
  assert np.all((values_N >= 0) & (values_N <= 1))
  # Distinct paths, not one path repeated.
  assert np.unique(np.asarray(x_NxL), axis=0).shape[0] > 1


def test_sample_params_is_deterministic_per_key(sweep):
  config, sampled, _ = sweep
  seed, params = next(iter(sampled.items()))
  chex.assert_trees_all_equal(ehrlich.sample_params(jax.random.key(seed), **config), params)
  matrices = {np.asarray(params.transition_matrix).tobytes() for params in sampled.values()}
  assert len(matrices) == len(sampled), 'different keys gave the same transition matrix'


@pytest.mark.parametrize('quantization, epistasis', [(2, 0.5), (1, 1.0), (3, 0.25)], ids=['q2', 'q1', 'q3'])
def test_evaluate_matches_numpy_reference(sweep, quantization, epistasis):
  # q = 3 divides neither k = 4 nor k = 8 (f1 = 2 or 3); k >= 3 in every sweep, so q <= k throughout.
  config, sampled, _ = sweep
  sampled_params = next(iter(sampled.values()))
  params = ehrlich.make_params(
    sampled_params.transition_matrix,
    sampled_params.motifs,
    sampled_params.spacings,
    quantization=quantization,
    epistasis_factor=epistasis,
  )
  x_NxL = _probe_batch(params, config['dim'], seed=1)
  expected_N = _reference_evaluate(params, x_NxL)
  # Coarse or non-dividing quantisations leave few levels: ask for two distinct feasible values.
  _assert_probe_is_informative(expected_N, min_distinct=2)
  np.testing.assert_array_equal(np.asarray(evaluate_jit(params, x_NxL)), expected_N)


def test_sample_params_without_slack_uses_unit_spacings():
  params = ehrlich.sample_params(jax.random.key(0), num_states=8, dim=9, num_motifs=3, motif_length=3)
  assert params.spacings == ((1, 1),) * 3
  assert float(evaluate_jit(params, ehrlich.optimal_solution(params, 9))) == 1.0


# --- Validation --------------------------------------------------------------------------------------

# Ergodic 3-state chain in which 0 -> 1 is the only banned transition.
_M3 = [[0.5, 0.0, 0.5], [1 / 3, 1 / 3, 1 / 3], [1 / 3, 1 / 3, 1 / 3]]
_VALID = dict(transition_matrix=_M3, motifs=[[0, 2]], spacings=[[1]])


def test_valid_base_instance_is_accepted():
  params = ehrlich.make_params(**_VALID)
  assert float(evaluate_jit(params, ehrlich.optimal_solution(params, 2))) == 1.0


@pytest.mark.parametrize(
  'changes, match',
  [
    (dict(quantization=0), 'quantization must lie in'),
    (dict(quantization=3), 'quantization must lie in'),
    (dict(quantization=1.5), 'quantization must be an integer'),
    (dict(transition_matrix=[[1.0]], motifs=[[0, 0]]), 'num_states must be >= 2'),
    (dict(transition_matrix=[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]), 'must be square'),
    (dict(transition_matrix=[0.5, 0.5]), 'must be square'),
    (dict(transition_matrix=[[0.5, 0.0, 0.5], [0.5, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]]), 'not row-stochastic'),
    (dict(transition_matrix=[[1.5, -0.5], [0.5, 0.5]], motifs=[[0, 1]]), 'non-negative'),
    (dict(transition_matrix=[[np.nan, 0.5], [0.5, 0.5]], motifs=[[0, 1]]), 'finite'),
    (dict(transition_matrix=[[0.0, 1.0], [1.0, 0.0]], motifs=[[0, 1]]), 'not ergodic'),
    (
      dict(
        transition_matrix=[[0.5, 0.5, 0, 0], [0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]],
        motifs=[[0, 1]],
      ),
      'not ergodic',
    ),
    (dict(motifs=[[0, 3]]), r'motif tokens must lie in \[0, 3\)'),
    (dict(motifs=[[-1, 0]]), 'motif tokens must lie in'),
    (dict(motifs=[[0.5, 2]]), 'motifs must hold integers'),
    (dict(motifs=[0, 2]), 'motifs must have shape'),
    (dict(motifs=[[0, 1]]), 'motifs are infeasible'),
    (dict(motifs=[[2, 0], [1, 2]], spacings=[[1], [1]]), 'motifs are infeasible'),  # 0 -> 1 across motifs
    (dict(spacings=[[1, 1]]), 'spacings must have shape'),
    (dict(spacings=[[1], [1]]), 'spacings must have shape'),
    (dict(spacings=[[0]]), 'spacings must be >= 1'),
    (dict(spacings=[[1.5]]), 'spacings must hold integers'),
    (dict(epistasis_factor=np.inf), 'epistasis_factor must be finite'),
  ],
  ids=[
    'q_zero',
    'q_above_k',
    'q_fraction',
    'single_state',
    'non_square',
    'vector_matrix',
    'not_row_stochastic',
    'negative_entry',
    'nan_entry',
    'periodic',
    'block_diagonal',
    'motif_token_v',
    'motif_token_negative',
    'motif_fraction',
    'motifs_rank1',
    'motif_banned_transition',
    'motifs_banned_across_chunks',
    'spacings_too_long',
    'spacings_too_many',
    'spacing_zero',
    'spacing_fraction',
    'epistasis_inf',
  ],
)
def test_make_params_rejects_bad_input(changes, match):
  kwargs = {**_VALID, **changes}
  with pytest.raises(ValueError, match=match):
    ehrlich.make_params(
      kwargs.pop('transition_matrix'), kwargs.pop('motifs'), kwargs.pop('spacings'), **kwargs
    )


@pytest.mark.parametrize(
  'changes, match',
  [
    (dict(num_motifs=2, motif_length=4, dim=7), 'cannot all fit'),
    (dict(num_states=1), 'num_states must be an integer >= 2'),
    (dict(num_states=8.0), 'num_states must be an integer'),
    (dict(motif_length=0), 'motif_length must be an integer >= 1'),
    (dict(num_motifs=0), 'num_motifs must be an integer >= 1'),
  ],
  ids=['too_many_motif_elements', 'one_state', 'float_states', 'k_zero', 'c_zero'],
)
def test_sample_params_rejects_bad_input(changes, match):
  config = {**dict(num_states=8, dim=16, num_motifs=2, motif_length=4), **changes}
  with pytest.raises(ValueError, match=match):
    ehrlich.sample_params(jax.random.key(0), **config)


# --- Noisy observations ------------------------------------------------------------------------------


def test_observe_without_noise_equals_evaluate(instance):
  params, _, x_NxL = instance
  observed_N = ehrlich.observe(jax.random.key(0), params, x_NxL, noise_std=0.0)
  np.testing.assert_array_equal(np.asarray(observed_N), np.asarray(ehrlich.evaluate(params, x_NxL)))


def test_observe_noise_has_the_requested_std_and_keeps_infeasible(instance):
  params, dim, _ = instance
  noise_std, num_samples = 0.1, 8192
  optimum_L = np.asarray(ehrlich.optimal_solution(params, dim))
  infeasible_L = optimum_L.copy()
  infeasible_L[3] = -1
  x_NxL = np.concatenate([np.tile(optimum_L, (num_samples, 1)), np.tile(infeasible_L, (64, 1))])
  observed_N = np.asarray(observe_jit(jax.random.key(1), params, x_NxL, noise_std=noise_std))
  noise_N = observed_N[:num_samples] - 1.0
  assert np.all(np.isneginf(observed_N[num_samples:]))
  assert abs(noise_N.mean()) < 5 * noise_std / math.sqrt(num_samples)
  assert abs(noise_N.std() / noise_std - 1.0) < 0.05
  again_N = np.asarray(observe_jit(jax.random.key(1), params, x_NxL, noise_std=noise_std))
  other_N = np.asarray(observe_jit(jax.random.key(2), params, x_NxL, noise_std=noise_std))
  np.testing.assert_array_equal(again_N, observed_N)
  assert not np.array_equal(other_N[:num_samples], observed_N[:num_samples])


@pytest.mark.parametrize('chunk_rows', [7, 50])
def test_chunked_evaluation_equals_one_chunk(holo_cases, monkeypatch, chunk_rows):
  """Batches larger than a chunk go through the fori_loop path (with an overlapping last chunk)."""
  case = holo_cases[5]
  params = ehrlich.make_params(
    case['transition_matrix'],
    case['motifs'],
    case['spacings'],
    quantization=case['quantization'],
    epistasis_factor=case['epistasis_factor'],
  )
  x_BxL = np.asarray(case['sequences'])
  monkeypatch.setattr(ehrlich_kernels, 'CPU_CHUNK_ROWS', chunk_rows)
  chunked = np.asarray(jax.jit(ehrlich.evaluate)(params, x_BxL))
  np.testing.assert_array_equal(chunked, np.asarray(case['values'], np.float32))
  np.testing.assert_array_equal(np.asarray(jax.jit(ehrlich.is_feasible)(params, x_BxL)), np.isfinite(chunked))
