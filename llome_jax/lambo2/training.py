"""Training LaMBO-2's network on every labelled sequence (SPEC 7): masked-token corruption of the inputs,
and one loss per head, summed.

Corruption follows cortex: each sequence draws t = round(1000 u), u ~ Beta(3, 1), and masks each token
with probability sqrt(alpha_bar(t)) under the cosine schedule (a fraction of about 0.36 on average). The
same fraction smooths the labels: a value member fits N((1 - a) y, a + (1 - a) 0.01 + a (1 - a) y^2) in
KL (the moment-matched mixture of the label and the prior N(0, 1)), a feasibility member a label smoothed
by a towards uniform, and the denoiser predicts the masked tokens.

Departures from the reference, each a waste removed: the three losses are summed and take one Adam step
per batch (cortex takes 17 sequential steps, one per ensemble member and head, on the same batch); every
labelled row is trained on (cortex's dataset silently drops a fixed 20%); batches are uniform over the
rows (cortex upsamples recent rounds); the cosine schedule is stepped per batch, not per epoch.
"""

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import train as train_lib
from llome_jax.lambo2 import network

_NUM_TIMESTEPS = 1000
_COSINE_OFFSET = 0.008  # Nichol & Dhariwal 2021.
_LABEL_VARIANCE = 0.01  # cortex's nominal variance of a standardised label.


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Attributes: learning_rate (peak), b1, b2 (Adam), epochs, batch_size, warmup_epochs (linear warmup,
  then cosine decay to 0 over the remaining batches)."""

  learning_rate: float = 5e-3
  b1: float = 0.9
  b2: float = 0.99
  epochs: int = 16
  batch_size: int = 128
  warmup_epochs: int = 2

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be positive, got {self.learning_rate}.')
    if self.epochs < 1 or self.batch_size < 1 or not 0 <= self.warmup_epochs < self.epochs:
      raise ValueError(
        f'epochs={self.epochs} and batch_size={self.batch_size} must be >= 1, and '
        f'warmup_epochs={self.warmup_epochs} in [0, epochs).'
      )


@flax.struct.dataclass
class Dataset:
  """Labelled rows of a fixed capacity C: tokens, standardised values (-inf infeasible), real rows."""

  tokens_BxL: Int[Array, 'C L']
  values_B: Float[Array, ' C']
  where_B: Bool[Array, ' C']


def standardise(values_C: Array, where_C: Array) -> tuple[Array, Array, Array]:
  """(standardised values, mean, std) over the real feasible rows; infeasible rows stay -inf."""
  feasible_C = where_C & jnp.isfinite(values_C)
  count = jnp.maximum(jnp.sum(feasible_C), 1)
  mean = jnp.sum(jnp.where(feasible_C, values_C, 0.0)) / count
  var = jnp.sum(jnp.where(feasible_C, jnp.square(values_C - mean), 0.0)) / count
  std = jnp.maximum(jnp.sqrt(var), 1e-6)
  return jnp.where(feasible_C, (values_C - mean) / std, -jnp.inf), mean, std


def corruption_fractions(key: PRNGKeyArray, num_rows: int) -> Float[Array, ' B']:
  """sqrt(alpha_bar(t)) of the cosine schedule at t = round(1000 u), u ~ Beta(3, 1), t in [1, 1000]."""
  t = jnp.clip(jnp.round(_NUM_TIMESTEPS * jax.random.beta(key, 3.0, 1.0, (num_rows,))), 1, _NUM_TIMESTEPS)

  def f(step):
    return jnp.cos((step / _NUM_TIMESTEPS + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2

  return jnp.sqrt(jnp.clip(f(t) / f(0.0), 0.0, 1.0))


def _gaussian_kl(mean_p, var_p, mean_q, var_q):
  return 0.5 * (jnp.log(var_q / var_p) + (var_p + jnp.square(mean_p - mean_q)) / var_q - 1.0)


def losses(
  params: network.Params, dataset: Dataset, key: PRNGKeyArray, *, graphdef: nnx.GraphDef
) -> dict[str, Array]:
  """Each head's loss on one batch under random masking; 'total' is their sum (what is minimised)."""
  net = network.merge(graphdef, params)
  frac_key, mask_key = jax.random.split(key)
  tokens_BxL, where_B = dataset.tokens_BxL, dataset.where_B
  a_B = corruption_fractions(frac_key, tokens_BxL.shape[0])
  masked_BxL = jax.random.uniform(mask_key, tokens_BxL.shape) < a_B[:, None]
  heads = net(jnp.where(masked_BxL, net.cfg.mask_token, tokens_BxL))
  feasible_B = where_B & jnp.isfinite(dataset.values_B)
  y_B = jnp.where(feasible_B, dataset.values_B, 0.0)

  mean_BxM, var_BxM = network.gaussian(heads['value_BxMx2'])
  target_mean = ((1 - a_B) * y_B)[:, None]
  target_var = (a_B + (1 - a_B) * _LABEL_VARIANCE + a_B * (1 - a_B) * jnp.square(y_B))[:, None]
  value_B = jnp.mean(_gaussian_kl(target_mean, target_var, mean_BxM, var_BxM), axis=1)

  smooth_Bx2 = (1 - a_B)[:, None] * jax.nn.one_hot(feasible_B.astype(jnp.int32), 2) + (a_B / 2)[:, None]
  log_p_BxMx2 = jax.nn.log_softmax(heads['feasibility_BxMx2'], axis=-1)
  feasibility_B = -jnp.mean(jnp.sum(smooth_Bx2[:, None] * log_p_BxMx2, axis=-1), axis=1)

  token_logp_BxL = jnp.take_along_axis(
    jax.nn.log_softmax(heads['denoiser_BxLxV'], axis=-1), tokens_BxL[..., None], axis=-1
  )[..., 0]
  denoised_BxL = masked_BxL & feasible_B[:, None]

  def mean(x, where):
    return jnp.sum(jnp.where(where, x, 0.0)) / jnp.maximum(jnp.sum(where), 1)

  out = {
    'value': mean(value_B, feasible_B),
    'feasibility': mean(feasibility_B, where_B),
    'denoiser': mean(-token_logp_BxL, denoised_BxL),
  }
  out['total'] = out['value'] + out['feasibility'] + out['denoiser']
  return out


def _learning_rate(cfg: TrainConfig, step: Array, steps_per_epoch: Array) -> Array:
  warmup = cfg.warmup_epochs * steps_per_epoch
  total = cfg.epochs * steps_per_epoch
  rising = (step + 1) / jnp.maximum(warmup, 1)
  progress = (step - warmup) / jnp.maximum(total - warmup, 1)
  falling = 0.5 * (1 + jnp.cos(math.pi * jnp.clip(progress, 0.0, 1.0)))
  return cfg.learning_rate * jnp.where(step < warmup, rising, falling)


def fit(
  key: PRNGKeyArray, params: network.Params, dataset: Dataset, *, graphdef: nnx.GraphDef, cfg: TrainConfig
) -> tuple[network.Params, dict[str, Array]]:
  """`cfg.epochs` epochs of Adam over the real rows of `dataset` (shuffled each epoch).

  Returns the trained parameters and each loss averaged over the last epoch's batches.
  """
  adam = optax.scale_by_adam(b1=cfg.b1, b2=cfg.b2)
  steps_per_epoch = -(-jnp.sum(dataset.where_B) // cfg.batch_size)

  def step_fn(state, batch, step_key):
    grads, metrics = jax.grad(
      lambda p: (lambda out: (out['total'], out))(losses(p, batch, step_key, graphdef=graphdef)), has_aux=True
    )(state.params)
    updates, opt_state = adam.update(grads, state.opt_state)
    lr = _learning_rate(cfg, state.step, steps_per_epoch)
    params = jax.tree.map(lambda p, u: p - lr * u, state.params, updates)
    return train_lib.TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def epoch(state, i):
    state, metrics = train_lib.fit_epoch(
      state, dataset, jax.random.fold_in(key, i), step_fn=step_fn, batch_size=cfg.batch_size
    )
    real = ~metrics.pop('skipped')
    return state, jax.tree.map(
      lambda m: jnp.sum(jnp.where(real, m, 0.0)) / jnp.maximum(jnp.sum(real), 1), metrics
    )

  state = train_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=adam.init(params))
  state, per_epoch = jax.lax.scan(epoch, state, jnp.arange(cfg.epochs))
  return state.params, jax.tree.map(lambda m: m[-1], per_epoch)
