"""Training the policy: one pure step `(state, batch, key) -> (state, metrics)` for SFT, DPO and MargE,
and an epoch over a fixed-capacity dataset as a `lax.scan` of such steps."""

import dataclasses
import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from llome_jax import codec as codec_lib
from llome_jax import losses, sharding
from llome_jax import model as model_lib

OBJECTIVES = ('sft', 'dpo', 'marge')
SCHEDULES = ('constant', 'cosine', 'linear')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """AdamW with linear warmup, then constant, cosine or linear decay to `end_fraction` of the peak."""

  learning_rate: float = 1e-3
  warmup_steps: int = 0
  decay_steps: int = 0
  schedule: str = 'constant'
  end_fraction: float = 0.1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  grad_clip: float = 1.0

  def __post_init__(self):
    if not self.learning_rate > 0:
      raise ValueError(f'learning_rate must be positive, got {self.learning_rate}.')
    if self.schedule not in SCHEDULES:
      raise ValueError(f'schedule must be one of {SCHEDULES}, got {self.schedule!r}.')
    if self.warmup_steps < 0 or self.decay_steps < 0:
      raise ValueError('warmup_steps and decay_steps must be >= 0.')
    if self.schedule != 'constant' and self.decay_steps == 0:
      raise ValueError(f'schedule={self.schedule!r} needs decay_steps > 0.')
    if not self.grad_clip > 0:
      raise ValueError(f'grad_clip must be positive, got {self.grad_clip}.')


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
  """Which loss and its hyperparameters (SPEC section 4); see llome_jax.losses for the formulas."""

  name: str = 'sft'
  dpo_beta: float = 0.1
  dpo_label_smoothing: float = 0.0
  marge_alpha: float = 1.0
  marge_beta: float = 10.0
  marge_self_normalize: bool = True

  def __post_init__(self):
    if self.name not in OBJECTIVES:
      raise ValueError(f'objective must be one of {OBJECTIVES}, got {self.name!r}.')


def schedule(cfg: OptimConfig) -> optax.Schedule:
  peak = cfg.learning_rate
  if cfg.schedule == 'constant':
    decay = optax.constant_schedule(peak)
  elif cfg.schedule == 'cosine':
    decay = optax.cosine_decay_schedule(peak, cfg.decay_steps, alpha=cfg.end_fraction)
  else:
    decay = optax.linear_schedule(peak, peak * cfg.end_fraction, cfg.decay_steps)
  if not cfg.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
  return optax.join_schedules([warmup, decay], [cfg.warmup_steps])


def _decays(params):
  # Weight decay on matrices only: biases, LayerNorm parameters and nothing else of rank 1.
  return jax.tree.map(lambda x: x.ndim > 1, params)


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip),
    optax.adamw(
      schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=_decays
    ),
  )


@flax.struct.dataclass
class TrainState:
  step: Int[Array, '']
  params: model_lib.Params
  opt_state: optax.OptState


def init_state(params: model_lib.Params, optimizer: optax.GradientTransformation) -> TrainState:
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params))


@flax.struct.dataclass
class Batch:
  """One training batch. `pairs` is (x -> y) for SFT and MargE and (x -> y_w) for DPO; `rejected` is
  (x -> y_l) for DPO only. Reference log-probs are summed over target tokens and precomputed with the
  frozen reference policy (`sequence_logps`); `where_B` marks real rows of a fixed-capacity batch."""

  pairs: codec_lib.PairBatch
  where_B: Bool[Array, ' B']
  rewards_B: Float[Array, ' B'] | None = None
  ref_logps_B: Float[Array, ' B'] | None = None
  rejected: codec_lib.PairBatch | None = None
  ref_rejected_logps_B: Float[Array, ' B'] | None = None


def sequence_logps(graphdef: nnx.GraphDef, params: model_lib.Params, pairs: codec_lib.PairBatch):
  """Summed target-token log-probabilities [B] and target token counts [B] of each pair."""
  logits_BxTxV, _ = model_lib.apply(graphdef, params, pairs.inputs_BxT, pairs.input_mask_BxT)
  return losses.token_logps(logits_BxTxV, pairs.targets_BxT, pairs.loss_mask_BxT)


def _objective(params, batch: Batch, *, graphdef, objective: ObjectiveConfig):
  """Mean loss over real rows and per-objective diagnostics."""
  where_B = batch.where_B
  num_rows = jnp.maximum(jnp.sum(where_B), 1)
  pairs = batch.pairs
  metrics = {}
  if objective.name == 'sft':
    logits_BxTxV, _ = model_lib.apply(graphdef, params, pairs.inputs_BxT, pairs.input_mask_BxT)
    token_logps_BxT = losses.per_token_logps(logits_BxTxV, pairs.targets_BxT)
    loss_B = losses.sft_loss(token_logps_BxT, pairs.loss_mask_BxT)
  elif objective.name == 'marge':
    logps_B, lengths_B = sequence_logps(graphdef, params, pairs)
    loss_B = losses.marge_loss(
      logps_B,
      batch.ref_logps_B,
      batch.rewards_B,
      lengths_B,
      alpha=objective.marge_alpha,
      beta=objective.marge_beta,
      self_normalize=objective.marge_self_normalize,
      where=where_B,
    )
    log_ratio_B = jnp.where(where_B, logps_B - batch.ref_logps_B, -jnp.inf)
    weights_B = jax.nn.softmax(log_ratio_B)
    metrics['marge_ess'] = 1.0 / jnp.sum(weights_B**2)
    metrics['mean_token_logp'] = jnp.sum(jnp.where(where_B, logps_B / lengths_B, 0.0)) / num_rows
  else:
    both = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), pairs, batch.rejected)
    logps_2B, _ = sequence_logps(graphdef, params, both)
    chosen_B, rejected_B = jnp.split(logps_2B, 2)
    loss_B = losses.dpo_loss(
      chosen_B,
      rejected_B,
      batch.ref_logps_B,
      batch.ref_rejected_logps_B,
      beta=objective.dpo_beta,
      label_smoothing=objective.dpo_label_smoothing,
    )
    margin_B = (chosen_B - batch.ref_logps_B) - (rejected_B - batch.ref_rejected_logps_B)
    metrics['dpo_accuracy'] = jnp.sum(where_B & (margin_B > 0)) / num_rows
    metrics['dpo_margin'] = jnp.sum(jnp.where(where_B, margin_B, 0.0)) / num_rows
  loss = jnp.sum(jnp.where(where_B, loss_B, 0.0)) / num_rows
  return loss, metrics


def train_step(
  state: TrainState,
  batch: Batch,
  key: PRNGKeyArray,
  *,
  graphdef: nnx.GraphDef,
  optimizer: optax.GradientTransformation,
  objective: ObjectiveConfig,
) -> tuple[TrainState, dict[str, Array]]:
  """One optimiser step on the mean loss over the batch's real rows.

  A step whose loss or gradient is not finite leaves the state unchanged and reports `nonfinite` = 1,
  so a NaN never reaches the parameters; `fit_epoch` callers turn it into an error.
  `key` is unused today (no dropout) and kept so that stochastic objectives fit the same signature.
  """
  del key
  grad_fn = jax.value_and_grad(
    functools.partial(_objective, graphdef=graphdef, objective=objective), has_aux=True
  )
  (loss, metrics), grads = grad_fn(state.params, batch)
  grad_norm = optax.tree.norm(grads)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state)
  state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
  metrics.update(loss=loss, grad_norm=grad_norm, nonfinite=(~finite).astype(jnp.int32))
  metrics['num_rows'] = jnp.sum(batch.where_B)
  return state, metrics


def _epoch_order(key, where_C: Bool[Array, ' C']) -> Int[Array, ' C']:
  """A random order of the C rows with every real row first, so batches fill up before padding."""
  noise_C = jax.random.uniform(key, where_C.shape)
  return jnp.argsort(jnp.where(where_C, noise_C, 2.0 + noise_C))


def fit_epoch(
  state: TrainState,
  dataset: Batch,
  key: PRNGKeyArray,
  *,
  step_fn,
  batch_size: int,
  mesh: Mesh | None = None,
) -> tuple[TrainState, dict[str, Array]]:
  """One epoch over a fixed-capacity dataset (leading axis C), shuffled, in ceil(C / batch_size) steps.

  Batches holding no real row are skipped (`lax.cond`), so the optimiser count and schedule advance
  only on real steps. Metrics come back stacked per batch with `skipped` marking skipped ones.

  Args:
    state: the train state.
    dataset: a Batch whose arrays have leading axis C; `where_B` marks real rows.
    key: shuffling (and the step key, folded per batch).
    step_fn: `train_step` with its keyword arguments bound.
    batch_size: rows per step; C is padded with unreal rows up to a multiple of it.
    mesh: when given, every batch is split along the mesh's data axis (data parallelism: each device
      takes the gradient of its own rows, and the mean over the batch becomes a cross-device sum).
      Without it the batches take whatever sharding the dataset has; a dataset built inside a larger
      program is usually replicated, and then every device would compute the whole batch.
  """
  capacity = dataset.where_B.shape[0]
  num_batches = -(-capacity // batch_size)
  order_key, step_key = jax.random.split(key)
  order_C = _epoch_order(order_key, dataset.where_B)
  pad = num_batches * batch_size - capacity
  # Padding rows repeat row order[0] with where=False: shapes stay static and they carry no weight.
  order = jnp.concatenate([order_C, jnp.full((pad,), order_C[0])]).reshape(num_batches, batch_size)
  real = jnp.concatenate([jnp.ones((capacity,), bool), jnp.zeros((pad,), bool)]).reshape(order.shape)

  def body(state, inputs):
    i, rows, real_rows = inputs
    batch = jax.tree.map(lambda x: x[rows], dataset)
    batch = batch.replace(where_B=batch.where_B & real_rows)
    if mesh is not None:
      batch = jax.lax.with_sharding_constraint(batch, sharding.leading_axis(mesh))

    def run(state):
      return step_fn(state, batch, jax.random.fold_in(step_key, i))

    def skip(state):
      return state, jax.tree.map(jnp.zeros_like, jax.eval_shape(run, state)[1])

    state, metrics = jax.lax.cond(jnp.any(batch.where_B), run, skip, state)
    metrics['skipped'] = ~jnp.any(batch.where_B)
    return state, metrics

  return jax.lax.scan(body, state, (jnp.arange(num_batches), order, real))


def check_finite(metrics: dict[str, Any], what: str) -> None:
  """Raises FloatingPointError naming the first step whose loss or gradient was not finite."""
  bad = jnp.asarray(metrics['nonfinite']).reshape(-1)
  if bool(jnp.any(bad)):
    first = int(jnp.argmax(bad))
    raise FloatingPointError(
      f'{what}: the loss or gradient was not finite at batch {first} of the epoch '
      f'({int(jnp.sum(bad))} such batches); those updates were skipped, the parameters are unchanged by them.'
    )


def state_shardings(state: TrainState, optimizer: optax.GradientTransformation, mesh, *, fsdp: bool = True):
  """Shardings of a TrainState (or its abstract shape) on `mesh`: see sharding.param_shardings."""
  params = sharding.param_shardings(state.params, mesh, fsdp=fsdp)
  return TrainState(
    step=sharding.replicated(mesh),
    params=params,
    opt_state=sharding.opt_state_shardings(optimizer, state.opt_state, params, mesh),
  )


def batch_shardings(batch: Batch, mesh):
  """Every batch array is split along its leading (row) axis over the data axis (`sharding.rows`:
  replicated when the rows do not divide evenly; training inside the step is data-parallel either way)."""
  return jax.tree.map(lambda x: sharding.rows(mesh, x.shape[0]), batch)


def jit_train_step(step_fn, state_sh, batch_sh, mesh):
  """`step_fn` jitted at the edge with explicit shardings; the input state is donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(state_sh, batch_sh, replicated),
    out_shardings=(state_sh, replicated),
    donate_argnums=0,
  )


def jit_fit_epoch(step_fn, batch_size: int, state_sh, dataset_sh, mesh):
  """`fit_epoch` jitted at the edge with explicit shardings; the input state is donated."""
  replicated = sharding.replicated(mesh)
  return jax.jit(
    functools.partial(fit_epoch, step_fn=step_fn, batch_size=batch_size),
    in_shardings=(state_sh, dataset_sh, replicated),
    out_shardings=(state_sh, replicated),
    donate_argnums=0,
  )


def jit_sequence_logps(graphdef, params_sh, pairs_sh, mesh):
  """Reference log-probabilities of a dataset of pairs, jitted with the dataset split over `data`; the
  outputs, one per pair, follow the pairs' row sharding."""
  out = jax.tree.leaves(pairs_sh)[0]
  return jax.jit(
    functools.partial(sequence_logps, graphdef), in_shardings=(params_sh, pairs_sh), out_shardings=(out, out)
  )
