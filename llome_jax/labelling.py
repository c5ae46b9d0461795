"""Label selection (SPEC 3, step 1): which of a pool's generations are sent to the oracle.

Dedupe the pool, keep the generations whose mean token log-likelihood is at or above a quantile, and
draw n of them uniformly. Static shapes: a pool of N rows with a validity mask in, n slots out.
"""

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import archive as archive_lib
from llome_jax import round_metrics


@dataclasses.dataclass(frozen=True)
class SelectConfig:
  """Attributes:
  num_labels: n, the oracle calls per round (fewer when fewer generations qualify).
  likelihood_quantile: keep generations whose likelihood is >= this quantile of the deduplicated
    pool's (the reference's `likelihood_quantile_threshold`, 0.6 in f2); 0 keeps them all.
  """

  num_labels: int = 2000
  likelihood_quantile: float = 0.6

  def __post_init__(self):
    if self.num_labels < 1:
      raise ValueError(f'num_labels must be positive, got {self.num_labels}.')
    if not 0.0 <= self.likelihood_quantile <= 1.0:
      raise ValueError(f'likelihood_quantile must lie in [0, 1], got {self.likelihood_quantile}.')


@flax.struct.dataclass
class Selection:
  seqs_NxL: Int[Array, 'N L']  # N = num_labels slots; unreal ones hold zeros.
  likelihood_N: Float[Array, ' N']  # Mean token log-likelihood of each selected generation.
  where_N: Bool[Array, ' N']
  num_unique: Array  # int32: distinct valid generations in the pool.
  num_eligible: Array  # int32: those above the likelihood threshold and never labelled before.
  threshold: Array  # float32: the likelihood quantile (NaN for an empty pool).


def masked_quantile(x_N: Float[Array, ' N'], where_N: Bool[Array, ' N'], q: float) -> Array:
  """The q-quantile of the masked entries with linear interpolation (NumPy's default); NaN if empty."""
  count = jnp.sum(where_N, dtype=jnp.int32)
  sorted_N = jnp.sort(jnp.where(where_N, x_N, jnp.inf))
  rank = jnp.float32(q) * (jnp.maximum(count, 1) - 1).astype(jnp.float32)
  # NumPy forms the rank in float64; in float32 an integral rank (0.6 * 25 = 15) can land an ulp above
  # it (relative error <= 2^-23), lifting the threshold past the element at the quantile: snap it back.
  rank = jnp.where(jnp.abs(rank - jnp.round(rank)) <= 2.4e-7 * rank, jnp.round(rank), rank)
  below = jnp.floor(rank).astype(jnp.int32)
  above = jnp.minimum(below + 1, jnp.maximum(count, 1) - 1)
  weight = rank - below.astype(jnp.float32)
  low, high = sorted_N[below], sorted_N[above]
  value = jnp.where(weight > 0, low + weight * (high - low), low)  # No inf * 0 at an exact rank.
  return jnp.where(count > 0, value, jnp.nan)


def select(
  key: PRNGKeyArray,
  seqs_NxL: Int[Array, 'N L'],
  likelihood_N: Float[Array, ' N'],
  valid_N: Bool[Array, ' N'],
  labelled: archive_lib.Archive,
  *,
  cfg: SelectConfig,
) -> Selection:
  """Chooses the generations to label this round; calls no oracle.

  Eligible: valid, the first occurrence of its sequence in the pool, mean log-likelihood at or above
  the `likelihood_quantile` of the distinct valid generations, and not labelled in an earlier round
  (the reference may label a sequence twice; an oracle call spent on a known sequence teaches nothing).
  Then `num_labels` of the eligible are drawn uniformly without replacement.

  Args:
    key: randomness of the uniform draw.
    seqs_NxL, likelihood_N, valid_N: the pool (e.g. flattened inner-loop generations).
    labelled: every sequence labelled so far.
    cfg: static settings.
  """
  unique_N = round_metrics.first_occurrences(seqs_NxL, valid_N)
  threshold = masked_quantile(likelihood_N, unique_N, cfg.likelihood_quantile)
  eligible_N = unique_N & (likelihood_N >= threshold) & ~archive_lib.contains(labelled, seqs_NxL)
  num_eligible = jnp.sum(eligible_N, dtype=jnp.int32)
  # A uniform subset of size min(n, eligible): the eligible rows that come first in a random order.
  noise_N = jax.random.uniform(key, eligible_N.shape)
  order_N = jnp.argsort(jnp.where(eligible_N, noise_N, 2.0))
  rows_n = jnp.pad(order_N, (0, max(0, cfg.num_labels - order_N.shape[0])))[: cfg.num_labels]
  where_n = jnp.arange(cfg.num_labels) < jnp.minimum(num_eligible, cfg.num_labels)
  return Selection(
    seqs_NxL=jnp.where(where_n[:, None], seqs_NxL[rows_n], 0),
    likelihood_N=jnp.where(where_n, likelihood_N[rows_n], 0.0),
    where_N=where_n,
    num_unique=jnp.sum(unique_N, dtype=jnp.int32),
    num_eligible=num_eligible,
    threshold=threshold,
  )
