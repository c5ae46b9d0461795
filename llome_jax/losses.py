"""Per-example training objectives of LLOME: token log-probabilities, SFT, DPO and MargE.

Every loss returns one value per example ([B]); the caller chooses the batch reduction.
"""

import chex
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, Shaped


def _float_dtype(*arrays) -> jnp.dtype:
  """At least float32 (bf16 inputs are promoted), float64 where the inputs are."""
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def per_token_logps(
  logits_BxTxV: Float[Array, 'B T V'], targets_BxT: Int[Array, 'B T']
) -> Float[Array, 'B T']:
  """log softmax(logits)[target] at every position, in at least float32.

  Computed as logit[target] - logsumexp(logits), which never materialises a [B, T, V] log-softmax.

  Args:
    logits_BxTxV: next-token logits (any float dtype; bf16 is promoted to float32).
    targets_BxT: token ids in [0, V) that each position's logits predict.

  Returns:
    The log-probability of each target token.
  """
  if targets_BxT.shape != logits_BxTxV.shape[:-1]:
    raise ValueError(f'targets shape {targets_BxT.shape} must be logits shape {logits_BxTxV.shape} less V.')
  logits_BxTxV = logits_BxTxV.astype(_float_dtype(logits_BxTxV))
  target_logits_BxT = jnp.take_along_axis(logits_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_logits_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)


def token_logps(
  logits_BxTxV: Float[Array, 'B T V'], targets_BxT: Int[Array, 'B T'], mask_BxT: Shaped[Array, 'B T']
) -> tuple[Float[Array, ' B'], Int[Array, ' B']]:
  """Summed log-probability of each example's target tokens: sum_t mask_t * log p(target_t).

  Args:
    logits_BxTxV: next-token logits.
    targets_BxT: token ids; at masked positions they may be anything (e.g. -100), as they are not read.
    mask_BxT: 1 (or True) at target tokens. Masked positions contribute exactly 0, and no gradient.

  Returns:
    (summed log-probs [B], number of target tokens [B] as int32).
  """
  chex.assert_equal_shape([targets_BxT, mask_BxT])
  mask_BxT = mask_BxT.astype(bool)
  logps_BxT = per_token_logps(logits_BxTxV, jnp.where(mask_BxT, targets_BxT, 0))
  summed_B = jnp.sum(jnp.where(mask_BxT, logps_BxT, 0.0), axis=-1)
  return summed_B, jnp.sum(mask_BxT, axis=-1, dtype=jnp.int32)


def sft_loss(token_logps_BxT: Float[Array, 'B T'], mask_BxT: Shaped[Array, 'B T']) -> Float[Array, ' B']:
  """Token-mean negative log-likelihood: -sum_t mask_t * logp_t / max(1, sum_t mask_t).

  Args:
    token_logps_BxT: per-token log-probabilities (`per_token_logps`).
    mask_BxT: 1 (or True) at target tokens; a row without target tokens gives 0, not NaN.

  Returns:
    The loss of each example.
  """
  chex.assert_equal_shape([token_logps_BxT, mask_BxT])
  mask_BxT = mask_BxT.astype(bool)
  summed_B = jnp.sum(jnp.where(mask_BxT, token_logps_BxT, 0.0), axis=-1)
  num_tokens_B = jnp.maximum(jnp.sum(mask_BxT, axis=-1), 1)
  return -summed_B / num_tokens_B.astype(summed_B.dtype)


def dpo_loss(
  policy_chosen_logps: Float[Array, ' B'],
  policy_rejected_logps: Float[Array, ' B'],
  ref_chosen_logps: Float[Array, ' B'],
  ref_rejected_logps: Float[Array, ' B'],
  *,
  beta: float = 0.1,
  label_smoothing: float = 0.0,
) -> Float[Array, ' B']:
  """Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290).

  With d = (lp_w - ref_lp_w) - (lp_l - ref_lp_l) over summed log-probs and eps = label_smoothing
  (conservative DPO: the preference label is flipped with probability eps),

    loss = -(1 - eps) * log sigmoid(beta * d) - eps * log sigmoid(-beta * d).

  `jax.nn.log_sigmoid` keeps this finite for any finite margin.

  Args:
    policy_chosen_logps: summed log-probs of the preferred responses under the policy.
    policy_rejected_logps: the same for the dispreferred responses.
    ref_chosen_logps: preferred responses under the frozen reference.
    ref_rejected_logps: dispreferred responses under the reference.
    beta: inverse temperature of the implicit reward (0.4 in the f2 experiments).
    label_smoothing: eps in [0, 0.5]; 0 is plain DPO.

  Returns:
    The loss of each pair.
  """
  inputs = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
  chex.assert_equal_shape(inputs)
  dtype = _float_dtype(*inputs)  # The margin is a small difference of large sums: not in bf16.
  chosen_B, rejected_B, ref_chosen_B, ref_rejected_B = (jnp.asarray(x, dtype) for x in inputs)
  logits_B = beta * ((chosen_B - ref_chosen_B) - (rejected_B - ref_rejected_B))
  agree_B = -jax.nn.log_sigmoid(logits_B)
  disagree_B = -jax.nn.log_sigmoid(-logits_B)
  return (1.0 - label_smoothing) * agree_B + label_smoothing * disagree_B


def marge_loss(
  policy_logps: Float[Array, ' B'],
  ref_logps: Float[Array, ' B'],
  rewards: Float[Array, ' B'],
  lengths: Shaped[Array, ' B'],
  *,
  alpha: float = 1.0,
  beta: float = 10.0,
  self_normalize: bool = True,
  where: Bool[Array, ' B'] | None = None,
) -> Float[Array, ' B']:
  """Marginal-likelihood-based Exploration (MargE; Chen et al. 2024, arXiv 2410.22296).

  With lbar = lp / n (the token-mean log-prob), w = exp(lp - ref_lp) and, self-normalised,
  w~ = w / mean_batch w (SPEC's w / sum_batch w times the number of rows B),

    loss = alpha * w~ * (lbar - r) - beta * lbar.

  With y drawn from pi_ref, the batch mean of these losses (what train.py minimises) is the
  self-normalised importance-sampling estimate (up to constants) of
  alpha * KL(pi_theta || pi_r) + beta * KL(pi_ref || pi_theta), with pi_r proportional to exp(r):
  alpha / beta interpolates between the reward distribution and the reference. Gradients flow
  through w. Scaling by B is what keeps that balance: with w / sum w, a batch mean would shrink the
  alpha term by 1 / B against the beta term, so the reward's pull would fade as batches grow. For a
  batch of one both give w~ == 1.

  Normalisation scope: mean_batch runs over every row passed in (with `where` True). Under jit with
  the batch sharded over a mesh's data axis that mean is a global reduction (XLA inserts the
  all-reduce), so w~ is normalised over the global batch, not per device. The reference's
  released config normalised over a per-device batch of 1, where w~ == 1 and the reward drops out
  of the gradient. w~ is computed from a softmax of the log-ratios (max subtracted), which equals
  w / mean w exactly in exact arithmetic. With self_normalize=False, w itself is used; it
  overflows to inf once lp - ref_lp exceeds about 88 in float32.

  Args:
    policy_logps: summed log-probs of the target tokens under the policy.
    ref_logps: the same under the frozen reference.
    rewards: r = max(0, f~(y) - f~(x)), already clamped by the caller (not clamped here).
    lengths: number of target tokens n (clamped to at least 1).
    alpha: weight of the reward term (1 in the f2 experiments).
    beta: weight of the reference term (10 in the f2 experiments).
    self_normalize: use w~ = w / mean_batch w rather than w.
    where: rows to include. Other rows output exactly 0, get exactly 0 gradient, and take no part
      in the normaliser, whatever their inputs (inf and NaN included).

  Returns:
    The loss of each example.
  """
  chex.assert_equal_shape([policy_logps, ref_logps, rewards, lengths])
  chex.assert_rank(policy_logps, 1)
  valid_B = jnp.ones(policy_logps.shape, bool) if where is None else jnp.asarray(where, bool)
  chex.assert_equal_shape([valid_B, policy_logps])
  dtype = _float_dtype(policy_logps, ref_logps, rewards)
  # Excluded rows are replaced before any arithmetic, so jnp.where's gradient (which selects, never
  # multiplies) sends them exactly 0 and no NaN can reach the valid rows.
  policy_B = jnp.where(valid_B, policy_logps, 0.0).astype(dtype)
  ref_B = jnp.where(valid_B, ref_logps, 0.0).astype(dtype)
  rewards_B = jnp.where(valid_B, rewards, 0.0).astype(dtype)
  lengths_B = jnp.maximum(jnp.where(valid_B, lengths, 1), 1).astype(dtype)
  lbar_B = policy_B / lengths_B
  log_ratio_B = policy_B - ref_B
  if self_normalize:
    # Shifting by the max leaves the ratio unchanged; stop_gradient as the shift's gradient cancels.
    shift = jax.lax.stop_gradient(jnp.max(jnp.where(valid_B, log_ratio_B, -jnp.inf)))
    shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
    unnormalized_B = jnp.where(valid_B, jnp.exp(log_ratio_B - shift), 0.0)
    total = jnp.sum(unnormalized_B)
    # total >= 1 when any row is valid (the max row gives exp(0)); 1 stands in for an empty batch.
    num_rows = jnp.sum(valid_B).astype(dtype)
    weights_B = unnormalized_B * (num_rows / jnp.where(total > 0, total, 1.0))
  else:
    weights_B = jnp.exp(log_ratio_B)
  loss_B = alpha * weights_B * (lbar_B - rewards_B) - beta * lbar_B
  return jnp.where(valid_B, loss_B, 0.0)
