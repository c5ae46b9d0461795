"""Tests of the GPT-NeoX policy: presets, masking and positions, the KV cache, dtypes, jit."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

from llome_jax import model

VOCAB = 37
# Eager dispatch of every op is slow on CPU; the tests compare jitted passes (jit == eager is tested).
_apply = jax.jit(model.apply, static_argnums=0)


@pytest.fixture(scope='module')
def tiny():
  cfg = model.preset('tiny', vocab_size=VOCAB)
  graphdef, params = model.init(cfg, jax.random.key(0))
  return cfg, graphdef, params


def _tokens(batch=3, length=10, seed=1):
  return jax.random.randint(jax.random.key(seed), (batch, length), 0, VOCAB)


@pytest.mark.parametrize(
  'name, expected',
  # Parameter counts Hugging Face reports for EleutherAI/pythia-* (untied embeddings included).
  [('pythia-14m', 14_067_712), ('pythia-70m', 70_426_624), ('pythia-160m', 162_322_944)],
)
def test_pythia_presets_have_pythia_parameter_counts(name, expected):
  _, params = model.abstract_params(model.preset(name))
  assert model.num_params(params) == expected


def test_params_are_float32_plain_dicts(tiny):
  cfg, _, params = tiny
  assert isinstance(params, dict) and set(params['layers']) == set(range(cfg.num_layers))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  chex.assert_shape(params['layers'][0]['query_key_value']['kernel'], (32, 96))


@pytest.mark.parametrize(
  'overrides, message',
  [
    (dict(num_heads=3), 'divisible by num_heads'),
    (dict(rotary_fraction=0.1), 'even number of rotary dims'),
    (dict(dtype='int8'), 'dtype'),
    (dict(vocab_size=0), 'vocab_size'),
  ],
)
def test_bad_config_is_a_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    model.preset('tiny', **{'vocab_size': VOCAB, **overrides})
  with pytest.raises(ValueError, match='Unknown model preset'):
    model.preset('pythia-7b')


def test_causal_logits_do_not_see_the_future(tiny):
  _, graphdef, params = tiny
  tokens = _tokens()
  mask = jnp.ones(tokens.shape, bool)
  logits, cache = _apply(graphdef, params, tokens, mask)
  assert cache is None
  changed, _ = _apply(graphdef, params, tokens.at[:, 6:].set(0), mask)
  chex.assert_trees_all_close(changed[:, :6], logits[:, :6], atol=1e-6)
  assert np.abs(np.asarray(changed[:, 6:] - logits[:, 6:])).max() > 1e-3


def test_padding_is_invisible(tiny):
  _, graphdef, params = tiny
  tokens = _tokens()
  mask = jnp.ones(tokens.shape, bool)
  logits, _ = _apply(graphdef, params, tokens, mask)
  # Left padding (prompts) with arbitrary pad tokens: the same positions and logits for real tokens.
  left = jnp.concatenate([jnp.full((3, 4), 5), tokens], axis=1)
  left_mask = jnp.concatenate([jnp.zeros((3, 4), bool), mask], axis=1)
  left_logits, _ = _apply(graphdef, params, left, left_mask)
  chex.assert_trees_all_close(left_logits[:, 4:], logits, atol=2e-6)
  # Right padding (targets of different lengths) changes nothing before it.
  right = jnp.concatenate([tokens, jnp.full((3, 2), 7)], axis=1)
  right_mask = jnp.concatenate([mask, jnp.zeros((3, 2), bool)], axis=1)
  right_logits, _ = _apply(graphdef, params, right, right_mask)
  chex.assert_trees_all_close(right_logits[:, :10], logits, atol=2e-6)


def test_kv_cache_decoding_equals_the_full_pass(tiny):
  cfg, graphdef, params = tiny
  tokens = _tokens(length=12)
  mask = jnp.ones(tokens.shape, bool).at[0, :3].set(False)  # Row 0 left-padded by 3.
  full, _ = _apply(graphdef, params, tokens, mask)
  cache = model.init_cache(cfg, 3, 16)
  logits, cache = _apply(graphdef, params, tokens[:, :7], mask[:, :7], cache)
  pieces = [logits]
  for t in range(7, 12):
    logits, cache = _apply(graphdef, params, tokens[:, t : t + 1], mask[:, t : t + 1], cache)
    pieces.append(logits)
  assert int(cache.index) == 12
  chex.assert_trees_all_equal(cache.valid_BxS[:, :12], mask)
  assert not np.any(np.asarray(cache.valid_BxS[:, 12:]))
  got = jnp.concatenate(pieces, axis=1)
  chex.assert_trees_all_close(got[1:], full[1:], atol=2e-5)
  chex.assert_trees_all_close(got[0, 3:], full[0, 3:], atol=2e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  cfg = model.preset('tiny', vocab_size=VOCAB)
  bf16 = model.preset('tiny', vocab_size=VOCAB, dtype='bfloat16')
  graphdef, params = model.init(cfg, jax.random.key(0))
  graphdef_bf16, params_bf16 = model.init(bf16, jax.random.key(0))
  chex.assert_trees_all_equal(params, params_bf16)
  tokens = _tokens()
  mask = jnp.ones(tokens.shape, bool)
  logits, _ = _apply(graphdef, params, tokens, mask)
  logits_bf16, _ = _apply(graphdef_bf16, params_bf16, tokens, mask)
  assert logits_bf16.dtype == jnp.float32
  chex.assert_trees_all_close(logits_bf16, logits, atol=0.05)
  assert np.abs(np.asarray(logits_bf16 - logits)).max() > 0  # bf16 compute really happened.


def test_jit_equals_eager_and_traces_once(tiny):
  _, graphdef, params = tiny

  @jax.jit
  @chex.assert_max_traces(n=1)
  def forward(params, tokens, mask):
    return model.apply(graphdef, params, tokens, mask)[0]

  mask = jnp.ones((3, 10), bool)
  outputs = [forward(params, _tokens(seed=seed), mask) for seed in range(3)]
  chex.assert_trees_all_close(outputs[0], model.apply(graphdef, params, _tokens(seed=0), mask)[0], atol=1e-5)


def test_golden_logits(tiny):
  # Regression guard: initialisation and forward pass of the tiny preset from key 0.
  _, graphdef, params = tiny
  logits, _ = _apply(graphdef, params, _tokens(), jnp.ones((3, 10), bool))
  np.testing.assert_allclose(float(jnp.sum(jnp.abs(logits))), GOLDEN_ABS_SUM, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(logits[0, 0, :4]), GOLDEN_FIRST, rtol=1e-4, atol=1e-6)


def test_flops_per_token_counts_matmuls():
  cfg = model.preset('pythia-160m')
  _, params = model.abstract_params(cfg)
  embedding = cfg.vocab_size * cfg.width
  # Dense FLOPs are 2 per non-embedding weight (biases and norms are negligible) plus the attention.
  dense = 2 * (model.num_params(params) - embedding)
  attention = cfg.num_layers * 4 * 128 * cfg.width
  assert abs(model.flops_per_token(cfg, 128) - dense - attention) / model.flops_per_token(cfg, 128) < 1e-3


GOLDEN_ABS_SUM = 102.32228088378906
GOLDEN_FIRST = [-0.06096319109201431, -0.01981469802558422, 0.11053880304098129, -0.11917605996131897]


def test_last_only_gives_the_last_logits_and_the_full_cache(tiny):
  cfg, graphdef, params = tiny
  tokens = _tokens(length=9)
  mask = jnp.ones(tokens.shape, bool).at[1, :2].set(False)
  full, full_cache = _apply(graphdef, params, tokens, mask, model.init_cache(cfg, 3, 12))
  last, last_cache = jax.jit(functools.partial(model.apply, last_only=True), static_argnums=0)(
    graphdef, params, tokens, mask, model.init_cache(cfg, 3, 12)
  )
  chex.assert_shape(last, (3, 1, VOCAB))
  chex.assert_trees_all_close(last[:, 0], full[:, -1], atol=1e-6)
  chex.assert_trees_all_close(last_cache, full_cache, atol=1e-6)


def test_gelu_is_exact_erf_gelu_with_its_true_gradient():
  x = jnp.linspace(-8.0, 8.0, 1001)
  chex.assert_trees_all_close(model._gelu(x), jax.nn.gelu(x, approximate=False), atol=2e-6)
  grad = jax.vmap(jax.grad(model._gelu))(x)
  chex.assert_trees_all_close(
    grad, jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(x), atol=2e-6
  )
  jax.test_util.check_grads(model._gelu, (x[::50],), order=1, modes=['rev'], atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize('fraction', [0.25, 0.375, 1.0])
def test_rotary_tables_rotate_as_the_neox_formula(fraction):
  # Head width 16: a quarter (4 dims) and a whole head take the reversal path, 6 dims the concatenation.
  cfg = model.ModelConfig(vocab_size=8, num_layers=1, num_heads=2, width=32, ff_width=8, max_len=64)
  cfg = dataclasses.replace(cfg, rotary_fraction=fraction)
  x = np.asarray(jax.random.normal(jax.random.key(0), (2, 5, 2, 16)), np.float64)
  positions = np.array([[0, 1, 2, 3, 4], [0, 0, 7, 8, 40]])
  r, half = cfg.rotary_dims, cfg.rotary_dims // 2
  angles = positions[..., None, None] / cfg.rotary_base ** (np.arange(half) / half * 1.0)
  angles = np.concatenate([angles, angles], axis=-1)  # [B, T, 1, r]
  rot = x[..., :r]
  expected = np.concatenate(
    [
      rot * np.cos(angles) + np.concatenate([-rot[..., half:], rot[..., :half]], -1) * np.sin(angles),
      x[..., r:],
    ],
    axis=-1,
  )
  got = jax.jit(lambda x, p: model._rotate(x, model.rotary_tables(p, cfg), cfg))(
    x.astype(np.float32), positions
  )
  np.testing.assert_allclose(np.asarray(got), expected, atol=1e-5)
  chex.assert_trees_all_equal(got[..., r:], jnp.asarray(x[..., r:], jnp.float32))  # Pass-through, exactly.
