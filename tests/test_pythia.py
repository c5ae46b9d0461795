"""Tests for pythia: HF GPT-NeoX weights give HF's logits and greedy decoding in llome_jax.model.

The reference is tests/data/neox_tiny_reference.npz, written by benchmarks/export_neox_reference.py.
"""

import json
import pathlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llome_jax import model, pythia

REFERENCE = pathlib.Path(__file__).parent / 'data' / 'neox_tiny_reference.npz'

# Pythia-70m's config.json as published (EleutherAI/pythia-70m, transformers 4.24).
PYTHIA_70M_CONFIG = {
  'architectures': ['GPTNeoXForCausalLM'],
  'bos_token_id': 0,
  'eos_token_id': 0,
  'hidden_act': 'gelu',
  'hidden_size': 512,
  'initializer_range': 0.02,
  'intermediate_size': 2048,
  'layer_norm_eps': 1e-05,
  'max_position_embeddings': 2048,
  'model_type': 'gpt_neox',
  'num_attention_heads': 8,
  'num_hidden_layers': 6,
  'rotary_emb_base': 10000,
  'rotary_pct': 0.25,
  'tie_word_embeddings': False,
  'torch_dtype': 'float16',
  'transformers_version': '4.24.0',
  'use_cache': True,
  'use_parallel_residual': True,
  'vocab_size': 50304,
}


@pytest.fixture(scope='module')
def reference():
  with np.load(REFERENCE) as data:
    arrays = {name: data[name] for name in data.files}
  state_dict = {str(name): arrays.pop(name) for name in arrays.pop('state_dict_keys')}
  return state_dict, json.loads(str(arrays.pop('hf_config_json'))), arrays


@pytest.fixture(scope='module')
def imported(reference):
  state_dict, hf_config, _ = reference
  cfg = pythia.config_from_hf(hf_config)
  graphdef, _ = model.abstract_params(cfg)
  return cfg, graphdef, pythia.params_from_hf(state_dict, cfg)


def test_config_from_hf_matches_the_pythia_preset():
  assert pythia.config_from_hf(PYTHIA_70M_CONFIG) == model.preset('pythia-70m')


def test_config_from_hf_reads_rope_parameters():
  newer = {k: v for k, v in PYTHIA_70M_CONFIG.items() if k not in ('rotary_pct', 'rotary_emb_base')}
  newer['rope_parameters'] = {'rope_type': 'default', 'rope_theta': 500.0, 'partial_rotary_factor': 0.5}
  cfg = pythia.config_from_hf(newer, dtype='bfloat16')
  assert (cfg.rotary_base, cfg.rotary_fraction, cfg.dtype) == (500.0, 0.5, 'bfloat16')


@pytest.mark.parametrize(
  'change, message',
  [
    ({'hidden_act': 'gelu_new'}, 'hidden_act'),
    ({'use_parallel_residual': False}, 'use_parallel_residual'),
    ({'tie_word_embeddings': True}, 'tie_word_embeddings'),
    ({'attention_bias': False}, 'attention_bias'),
    ({'rope_scaling': {'type': 'linear', 'factor': 2.0}}, 'rotary'),
    ({'model_type': 'llama'}, 'gpt_neox'),
  ],
)
def test_config_from_hf_rejects_what_our_model_lacks(change, message):
  with pytest.raises(ValueError, match=message):
    pythia.config_from_hf({**PYTHIA_70M_CONFIG, **change})


def test_params_from_hf_gives_the_model_tree(imported):
  cfg, _, params = imported
  _, abstract = model.abstract_params(cfg)
  chex.assert_trees_all_equal_structs(params, abstract)
  chex.assert_trees_all_equal_shapes_and_dtypes(params, abstract)


def test_logits_match_hf(reference, imported):
  _, _, data = reference
  _, graphdef, params = imported
  logits_BxTxV, _ = model.apply(graphdef, params, data['tokens_BxT'], data['mask_BxT'])
  real = data['mask_BxT']
  assert real.sum() < real.size  # one row is left-padded
  np.testing.assert_array_equal(np.maximum(np.cumsum(real, axis=1) - 1, 0), data['positions_BxT'])
  chex.assert_trees_all_close(
    np.asarray(logits_BxTxV)[real], data['logits_BxTxV'][real], atol=1e-5, rtol=1e-5
  )


def test_kv_cache_greedy_decoding_matches_hf(reference, imported):
  _, _, data = reference
  cfg, graphdef, params = imported
  prompts_BxP, mask_BxP = data['prompts_BxP'], data['prompt_mask_BxP']
  (batch, prompt_len), num_new = prompts_BxP.shape, data['greedy_BxG'].shape[1]
  apply = jax.jit(model.apply, static_argnums=0)
  cache = model.init_cache(cfg, batch, prompt_len + num_new)
  logits_BxTxV, cache = apply(graphdef, params, prompts_BxP, mask_BxP, cache)
  tokens, step_logits = [], []
  for _ in range(num_new):
    step_logits.append(logits_BxTxV[:, -1])
    token_B = jnp.argmax(logits_BxTxV[:, -1], axis=-1)
    tokens.append(token_B)
    logits_BxTxV, cache = apply(graphdef, params, token_B[:, None], jnp.ones((batch, 1), bool), cache)
  np.testing.assert_array_equal(np.stack(tokens, axis=1), data['greedy_BxG'])
  chex.assert_trees_all_close(
    jnp.stack(step_logits, axis=1), data['greedy_logits_BxGxV'], atol=1e-5, rtol=1e-5
  )


def test_params_from_hf_accepts_pythia_names_and_buffers(reference, imported):
  state_dict, _, _ = reference
  cfg, _, params = imported
  pythia_style = {k: v.astype(np.float16) for k, v in state_dict.items() if k != 'lm_head.weight'}
  pythia_style['embed_out.weight'] = state_dict['lm_head.weight'].astype(np.float16)
  pythia_style['gpt_neox.layers.0.attention.bias'] = np.tril(np.ones((1, 1, 8, 8), bool))
  pythia_style['gpt_neox.layers.0.attention.masked_bias'] = np.float32(-1e9)
  pythia_style['gpt_neox.layers.1.attention.rotary_emb.inv_freq'] = np.ones(2, np.float32)
  converted = pythia.params_from_hf(pythia_style, cfg)
  chex.assert_trees_all_equal_shapes_and_dtypes(converted, params)
  chex.assert_trees_all_close(converted, params, atol=1e-2)  # float16 rounding


def test_params_from_hf_names_the_bad_key(reference, imported):
  state_dict, _, _ = reference
  cfg = imported[0]
  qkv = 'gpt_neox.layers.1.attention.query_key_value.weight'
  with pytest.raises(ValueError, match=re.escape(f"missing ['{qkv}'], unexpected []")):
    pythia.params_from_hf({k: v for k, v in state_dict.items() if k != qkv}, cfg)
  with pytest.raises(ValueError, match=r"unexpected \['gpt_neox.layers.2.mlp.dense_h_to_4h.bias'\]"):
    pythia.params_from_hf({**state_dict, 'gpt_neox.layers.2.mlp.dense_h_to_4h.bias': np.zeros(128)}, cfg)
  with pytest.raises(ValueError, match=re.escape(f'{qkv} has shape (32, 96)')):
    pythia.params_from_hf({**state_dict, qkv: state_dict[qkv].T}, cfg)
  with pytest.raises(ValueError, match='both'):
    pythia.params_from_hf({**state_dict, 'embed_out.weight': state_dict['lm_head.weight']}, cfg)
  with pytest.raises(ValueError, match='missing'):
    pythia.params_from_hf(state_dict, model.preset('tiny', vocab_size=37, num_layers=3))
