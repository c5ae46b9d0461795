"""Ehrlich functions (Stanton et al., 2024) with pytorch-holo's exact semantics, in pure JAX.

`evaluate` reproduces holo 0.0.5's float32 values bit for bit; `sample_params` follows holo's generative
procedure with JAX keys (holo's own instances come from torch's generator: load those, see `instances`).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from llome_jax.test_functions import dmp, ehrlich_kernels, ehrlich_params

EhrlichParams = ehrlich_params.EhrlichParams


def _as_int_matrix(name: str, value, shape_hint: str) -> np.ndarray:
  array = np.asarray(value)
  if array.ndim != 2:
    raise ValueError(f'{name} must have shape {shape_hint}, got shape {array.shape}.')
  if array.size and not np.all(np.equal(np.mod(array, 1), 0)):
    raise ValueError(f'{name} must hold integers, got {array.dtype} values {array.tolist()}.')
  return array.astype(np.int64)


def _check_transition_matrix(matrix: np.ndarray) -> None:
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f'transition_matrix must be square [v, v], got shape {matrix.shape}.')
  if matrix.shape[0] < 2:
    raise ValueError(f'num_states must be >= 2, got {matrix.shape[0]}.')
  if not np.all(np.isfinite(matrix)) or np.any(matrix < 0):
    raise ValueError('transition_matrix must hold finite, non-negative probabilities.')
  row_sums = matrix.sum(axis=-1)
  if not np.allclose(row_sums, 1.0, atol=1e-4):
    worst = int(np.argmax(np.abs(row_sums - 1.0)))
    raise ValueError(f'transition_matrix is not row-stochastic: row {worst} sums to {row_sums[worst]}.')
  if not dmp.is_ergodic(matrix):
    raise ValueError('transition_matrix is not ergodic: some entry of A^((v-1)^2+1) is zero.')


def make_params(
  transition_matrix,
  motifs,
  spacings,
  *,
  quantization: int | None = None,
  epistasis_factor: float = 0.0,
) -> EhrlichParams:
  """Builds and validates an instance from arrays in holo's conventions.

  Args:
    transition_matrix: [v, v] row-stochastic, ergodic; zero entries are banned transitions.
    motifs: [c, k] integer motif elements in [0, v).
    spacings: [c, k-1] gaps between consecutive motif elements (holo's `Ehrlich.spacings`), each >= 1.
    quantization: q in [1, k]; None means k (no quantization).
    epistasis_factor: e in rho(h) = (e h (h - 1) + 1) h.

  Returns:
    The instance. Raises ValueError naming the problem for malformed or impossible parameters.
  """
  matrix_VxV = np.asarray(transition_matrix, dtype=np.float64)
  _check_transition_matrix(matrix_VxV)
  num_states = matrix_VxV.shape[0]
  motifs_MxK = _as_int_matrix('motifs', motifs, '[num_motifs, motif_length]')
  num_motifs, motif_length = motifs_MxK.shape
  if num_motifs < 1 or motif_length < 1:
    raise ValueError(f'need at least one motif of length >= 1, got motifs of shape {motifs_MxK.shape}.')
  if motifs_MxK.min() < 0 or motifs_MxK.max() >= num_states:
    raise ValueError(f'motif tokens must lie in [0, {num_states}), got {motifs_MxK.tolist()}.')
  spacings_Mx_ = np.asarray(spacings)
  if spacings_Mx_.size == 0 and motif_length == 1:
    spacings_Mx_ = np.zeros((num_motifs, 0), np.int64)
  spacings_Mx_ = _as_int_matrix('spacings', spacings_Mx_, '[num_motifs, motif_length - 1]')
  if spacings_Mx_.shape != (num_motifs, motif_length - 1):
    raise ValueError(
      f'spacings must have shape [num_motifs, motif_length - 1] = {(num_motifs, motif_length - 1)}, '
      f'got {spacings_Mx_.shape}.'
    )
  if spacings_Mx_.size and spacings_Mx_.min() < 1:
    raise ValueError(f'spacings must be >= 1, got {spacings_Mx_.tolist()}.')
  if quantization is None:
    quantization = motif_length
  if isinstance(quantization, bool) or int(quantization) != quantization:
    raise ValueError(f'quantization must be an integer, got {quantization!r}.')
  if not 1 <= quantization <= motif_length:
    raise ValueError(f'quantization must lie in [1, motif_length={motif_length}], got {quantization}.')
  if not math.isfinite(float(epistasis_factor)):
    raise ValueError(f'epistasis_factor must be finite, got {epistasis_factor}.')
  params = EhrlichParams(
    transition_matrix=jnp.asarray(matrix_VxV, dtype=jnp.float32),
    motifs=tuple(tuple(int(a) for a in row) for row in motifs_MxK),
    spacings=tuple(tuple(int(s) for s in row) for row in spacings_Mx_),
    quantization=int(quantization),
    epistasis_factor=float(epistasis_factor),
  )
  witness = _optimal_solution_np(params, params.min_dim)
  if not np.all(matrix_VxV[witness[:-1], witness[1:]] > 0):
    raise ValueError(
      'motifs are infeasible under the transition matrix: writing them in order with repeats '
      f'({witness.tolist()}) uses a banned transition, so no solution reaches 1.0.'
    )
  return params


def _check_dim(params: EhrlichParams, dim: int) -> None:
  if dim < params.num_motifs * params.motif_length or dim < params.min_dim:
    raise ValueError(
      f'dim={dim} cannot hold {params.num_motifs} motifs of length {params.motif_length} at their '
      f'spacings (needs dim >= {params.min_dim}).'
    )


# Jitted, so that a call outside jit compiles one program per input shape instead of running (and
# compiling) each of the kernels' dozens of ops eagerly: ~2.5 s per new shape on 2 CPU cores.
@functools.partial(jax.jit, static_argnums=0)
def _map_chunks(chunk_fn, params: EhrlichParams, x: jax.Array) -> jax.Array:
  return ehrlich_kernels.map_chunks(chunk_fn, params, x)


def is_feasible(params: EhrlichParams, x: Int[Array, '... L']) -> jax.Array:
  """True where every token is in [0, v) and no adjacent pair is a banned transition."""
  return _map_chunks(ehrlich_kernels.feasible_chunk, params, ehrlich_kernels.as_tokens(params, x))


def motif_presence(params: EhrlichParams, x: Int[Array, '... L']) -> Float[Array, '... M']:
  """Quantised fraction h_i of each motif present at its best window, as holo computes it (float32)."""
  return _map_chunks(ehrlich_kernels.presence_chunk, params, ehrlich_kernels.as_tokens(params, x))


response = ehrlich_kernels.response


def evaluate(params: EhrlichParams, x: Int[Array, '... L']) -> Float[Array, '...']:
  """f(x) = prod_i rho(h_i(x)) if x is feasible, else -inf. float32, exactly holo's values.

  Runs in fixed-size chunks of the flattened batch, so memory beyond the input and output is bounded
  for any batch size.

  Args:
    params: the instance.
    x: integer tokens of shape [..., L]; tokens outside [0, v) make a sequence infeasible.

  Returns:
    float32 values of shape [...].
  """
  x = ehrlich_kernels.as_tokens(params, x)
  _check_dim(params, x.shape[-1])
  return _map_chunks(ehrlich_kernels.value_chunk, params, x)


def observe(
  key: PRNGKeyArray, params: EhrlichParams, x: Int[Array, '... L'], *, noise_std: float
) -> Float[Array, '...']:
  """Noisy observation f(x) + noise_std * N(0, 1), as botorch's forward(noise=True); -inf stays -inf."""
  values = evaluate(params, x)
  return values + noise_std * jax.random.normal(key, values.shape, values.dtype)


def _optimal_solution_np(params: EhrlichParams, dim: int) -> np.ndarray:
  pieces = []
  for motif, gaps in zip(params.motifs, params.spacings, strict=True):
    pieces.append(np.repeat(np.asarray(motif), np.asarray(gaps + (1,))))
  solution = np.concatenate(pieces)
  return np.concatenate([solution, np.full(dim - solution.size, solution[-1])]).astype(np.int32)


def optimal_solution(params: EhrlichParams, dim: int) -> Int[Array, ' L']:
  """Each motif written at its offsets, gaps filled by repeating the previous element, tail padded."""
  _check_dim(params, dim)
  return jnp.asarray(_optimal_solution_np(params, dim))


def initial_solution(key: PRNGKeyArray, params: EhrlichParams, dim: int, n: int = 1) -> Int[Array, 'N L']:
  """`n` DMP paths of length `dim` started from the stationary distribution (always feasible)."""
  pi = dmp.stationary_distribution(params.transition_matrix)
  return dmp.sample_paths(key, pi, params.transition_matrix, num_steps=dim, num_samples=n)


def sample_params(
  key: PRNGKeyArray,
  *,
  num_states: int,
  dim: int,
  num_motifs: int,
  motif_length: int,
  quantization: int | None = None,
  epistasis_factor: float = 0.0,
) -> EhrlichParams:
  """Samples an instance with holo's generative procedure, from a JAX key.

  Matrix: band half-width floor(0.4 v), softmax temperature 0.5, diagonal allowed, ergodicity checked.
  Motifs: one DMP path of length c*k from the stationary distribution, cut into c chunks. Spacings per
  motif: w ~ U(0,1)^(k-1), w /= sum(w), gap = 1 + floor(w * ((L - c*k) // c)).
  """
  for name, value, low in [
    ('num_states', num_states, 2),
    ('dim', dim, 1),
    ('num_motifs', num_motifs, 1),
    ('motif_length', motif_length, 1),
  ]:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f'{name} must be an integer >= {low}, got {value!r}.')
  if num_motifs * motif_length > dim:
    raise ValueError(
      f'num_motifs * motif_length = {num_motifs * motif_length} > dim = {dim}: the motifs cannot all fit.'
    )
  matrix_key, motif_key, spacing_key = jax.random.split(key, 3)
  matrix_VxV = dmp.sample_transition_matrix(matrix_key, num_states, int(num_states * 0.4))
  if not dmp.is_ergodic(matrix_VxV):
    raise ValueError(f'sampled transition matrix is not ergodic (num_states={num_states}); try another key.')
  pi = dmp.stationary_distribution(matrix_VxV)
  path = dmp.sample_paths(motif_key, pi, matrix_VxV, num_steps=num_motifs * motif_length, num_samples=1)
  weights_MxG = jax.random.uniform(spacing_key, (num_motifs, motif_length - 1))
  weights_MxG = weights_MxG / weights_MxG.sum(axis=-1, keepdims=True)
  spacings_MxG = 1 + jnp.floor(((dim - num_motifs * motif_length) // num_motifs) * weights_MxG)
  return make_params(
    np.asarray(matrix_VxV),
    np.asarray(path).reshape(num_motifs, motif_length),
    np.asarray(spacings_MxG).astype(np.int64),
    quantization=quantization,
    epistasis_factor=epistasis_factor,
  )
