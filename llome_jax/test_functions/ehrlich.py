"""Ehrlich functions (Stanton et al., 2024) with pytorch-holo's exact semantics, in pure JAX.

`evaluate` reproduces holo 0.0.5's float32 values bit for bit; `sample_params` follows holo's generative
procedure with JAX keys (holo's own instances come from torch's generator: load those, see `instances`).
"""

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from llome_jax.test_functions import dmp


@flax.struct.dataclass
class EhrlichParams:
  """One Ehrlich instance.

  The transition matrix is a traced leaf. Motifs, spacings, quantization and epistasis are static: they
  fix the window offsets, so XLA compiles each motif into contiguous shifted compares instead of
  gathers (one compilation per instance, which is what an optimisation run uses).
  """

  transition_matrix: Float[Array, 'V V']
  motifs: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False)
  spacings: tuple[tuple[int, ...], ...] = flax.struct.field(pytree_node=False)
  quantization: int = flax.struct.field(pytree_node=False)
  epistasis_factor: float = flax.struct.field(pytree_node=False)

  @property
  def num_states(self) -> int:
    return self.transition_matrix.shape[0]

  @property
  def num_motifs(self) -> int:
    return len(self.motifs)

  @property
  def motif_length(self) -> int:
    return len(self.motifs[0])

  @property
  def offsets(self) -> tuple[tuple[int, ...], ...]:
    """Position of each motif element relative to the window start: (0, cumsum(spacings))."""
    return tuple(tuple(int(o) for o in np.cumsum((0,) + gaps)) for gaps in self.spacings)

  @property
  def min_dim(self) -> int:
    """Shortest sequence that can hold every motif at its spacing (the optimum's footprint)."""
    return sum(offsets[-1] + 1 for offsets in self.offsets)


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


# Evaluation runs over chunks of at most this many rows of the flattened batch. XLA:CPU materialises
# every intermediate ([B, W] window counts, [B, L-1] transition checks), so chunking keeps them in cache
# and bounds memory for any B. Smaller chunks pay more per-kernel overhead; at L=256 on a 2-core AVX-512
# CPU, 512..2048 rows were within noise of each other (benchmarks/ehrlich_speed.py).
_CPU_CHUNK_ROWS = 1024
# Accelerators want large batches per kernel; a chunk this size still bounds memory (16 MB at L=256).
_ACCELERATOR_CHUNK_ROWS = 1 << 16


def _chunk_rows() -> int:
  return _CPU_CHUNK_ROWS if jax.default_backend() == 'cpu' else _ACCELERATOR_CHUNK_ROWS


def _as_tokens(params: EhrlichParams, x) -> jax.Array:
  """The input as a JAX integer array, without silently wrapping wide host integers.

  With x64 off, jnp.asarray truncates int64 to int32, so 2**32 + t would score as token t; host
  arrays wider than 32 bits have their out-of-range entries set to -1 (still out of range) first.
  """
  if not isinstance(x, jax.Array):
    x = np.asarray(x)
    if x.dtype.kind in 'iu' and x.dtype.itemsize >= 4 and not jax.config.jax_enable_x64:
      x = np.where((x >= 0) & (x < params.num_states), x, -1).astype(np.int32)
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.integer):
    raise TypeError(f'Ehrlich inputs must be integer tokens, got dtype {x.dtype}.')
  return x


def _encode_tokens(params: EhrlichParams, x_BxL: jax.Array) -> jax.Array:
  """Tokens in the narrowest unsigned dtype, with every out-of-range token replaced by the sentinel v.

  The sentinel never equals a motif element and its transitions are all banned, so the range check
  costs nothing downstream; one-byte tokens put 4x more lanes in each vector compare than int32.
  """
  num_states = params.num_states
  if x_BxL.dtype.itemsize < 4:  # Compare against v without overflowing int8/uint8 inputs.
    x_BxL = x_BxL.astype(jnp.int32)
  token_dtype = jnp.uint8 if num_states < 2**8 else jnp.uint16 if num_states < 2**16 else jnp.int32
  in_range_BxL = (x_BxL >= 0) & (x_BxL < num_states)
  return jnp.where(in_range_BxL, x_BxL, num_states).astype(token_dtype)


def _feasible_chunk(params: EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  """No banned transition (the sentinel's are all banned), via a bitmask row per state.

  Row s packs allowed[s, :] into 32-bit words, so each transition costs a gather of one word from a
  small table plus a shift; XLA:CPU scalarises gathers, and this ran ~2x faster than gathering from the
  flattened boolean [v, v] matrix.
  """
  num_states = params.num_states
  words_per_row = (num_states + 1 + 31) // 32
  allowed_SxT = jnp.pad(params.transition_matrix > 0, ((0, 1), (0, 32 * words_per_row - num_states)))
  bits_SxWx32 = allowed_SxT.reshape(num_states + 1, words_per_row, 32).astype(jnp.uint32)
  words_flat = jnp.sum(bits_SxWx32 << jnp.arange(32, dtype=jnp.uint32), axis=-1, dtype=jnp.uint32).reshape(-1)
  current_CxL = tokens_CxL[:, :-1].astype(jnp.int32)
  following_CxL = tokens_CxL[:, 1:].astype(jnp.int32)
  if words_per_row == 1:
    word_index_CxL = current_CxL
  else:
    word_index_CxL = current_CxL * words_per_row + (following_CxL >> 5)
  word_CxL = words_flat.at[word_index_CxL].get(mode='promise_in_bounds')
  pair_ok_CxL = ((word_CxL >> (following_CxL & 31).astype(jnp.uint32)) & 1).astype(jnp.uint8)
  return jnp.min(pair_ok_CxL, axis=-1) > 0  # A uint8 min reduces much faster than a bool `all` on CPU.


def _presence_chunk(params: EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  """[C, M] quantised motif presence, holo's formula on narrow integer window counts."""
  length = tokens_CxL.shape[-1]
  count_dtype = jnp.int8 if params.motif_length < 2**7 else jnp.int32
  quant_factor_1 = math.ceil(params.motif_length / params.quantization)
  quant_factor_2 = np.float32(params.motif_length / quant_factor_1)
  per_motif = []
  for motif, offsets in zip(params.motifs, params.offsets, strict=True):
    width = length - offsets[-1]
    count_CxW = sum(
      (tokens_CxL[:, offset : offset + width] == element).astype(count_dtype)
      for element, offset in zip(motif, offsets, strict=True)
    )
    # An identity select, kept as a fusion fence: XLA:CPU otherwise pulls the adds into its YNN reduce
    # fusion, which materialises every compare separately and runs ~10x slower.
    count_CxW = jnp.where(count_CxW > 0, count_CxW, 0)
    # The quantisation floor(n / f1) / f2 is non-decreasing in n, so max over windows commutes with it.
    best_count_C = jnp.max(count_CxW, axis=-1).astype(jnp.float32)
    per_motif.append(jnp.floor(best_count_C / quant_factor_1) / quant_factor_2)
  return jnp.stack(per_motif, axis=-1)


def _value_chunk(params: EhrlichParams, tokens_CxL: jax.Array) -> jax.Array:
  contributions_CxM = response(params, _presence_chunk(params, tokens_CxL))
  value_C = contributions_CxM[:, 0]
  for i in range(1, params.num_motifs):  # Sequential, as torch's prod over a stacked dim 0.
    value_C = value_C * contributions_CxM[:, i]
  return jnp.where(_feasible_chunk(params, tokens_CxL), value_C, -jnp.inf)


def _map_chunks(chunk_fn, params: EhrlichParams, x: jax.Array) -> jax.Array:
  """Applies chunk_fn(params, tokens_CxL) -> [C, ...] to x [..., L] in chunks of `_chunk_rows()` rows.

  The next chunk is encoded into the loop carry one iteration ahead, so the kernels read a plain
  buffer: reading through the loop's dynamic slice instead stops XLA from vectorising them (~10x).
  The last chunk starts at B - C and may overlap the one before it; the overlap is recomputed to equal
  values, so no padded copy of the input is needed.
  """
  length = x.shape[-1]
  x_BxL = x.reshape(-1, length)
  batch = x_BxL.shape[0]
  num_chunks = -(-batch // _chunk_rows())
  chunk = -(-batch // num_chunks) if num_chunks else 0  # Equal chunks: the overlap is < num_chunks rows.
  if num_chunks <= 1:
    out = chunk_fn(params, _encode_tokens(params, x_BxL))
    return out.reshape(x.shape[:-1] + out.shape[1:])

  def start(i):
    return jnp.minimum(i * chunk, batch - chunk)

  def load(i):
    return _encode_tokens(params, jax.lax.dynamic_slice_in_dim(x_BxL, start(i), chunk))

  def body(i, carry):
    tokens_CxL, out = carry
    out = jax.lax.dynamic_update_slice_in_dim(out, chunk_fn(params, tokens_CxL), start(i), axis=0)
    return load(i + 1), out  # start(num_chunks) clamps, so the final prefetch stays in bounds.

  first_tokens_CxL = load(0)
  out_shape = jax.eval_shape(chunk_fn, params, first_tokens_CxL)
  out = jnp.zeros((batch,) + out_shape.shape[1:], out_shape.dtype)
  _, out = jax.lax.fori_loop(0, num_chunks, body, (first_tokens_CxL, out))
  return out.reshape(x.shape[:-1] + out.shape[1:])


def is_feasible(params: EhrlichParams, x: Int[Array, '... L']) -> jax.Array:
  """True where every token is in [0, v) and no adjacent pair is a banned transition."""
  return _map_chunks(_feasible_chunk, params, _as_tokens(params, x))


def motif_presence(params: EhrlichParams, x: Int[Array, '... L']) -> Float[Array, '... M']:
  """Quantised fraction h_i of each motif present at its best window, as holo computes it (float32)."""
  return _map_chunks(_presence_chunk, params, _as_tokens(params, x))


def response(params: EhrlichParams, presence: Float[Array, '...']) -> Float[Array, '...']:
  """rho(h) = (e h (h - 1) + 1) h, in holo's operation order."""
  coeff = params.epistasis_factor * presence * (presence - 1.0) + 1.0
  return coeff * presence


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
  x = _as_tokens(params, x)
  _check_dim(params, x.shape[-1])
  return _map_chunks(_value_chunk, params, x)


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
