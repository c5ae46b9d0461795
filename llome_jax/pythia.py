"""Hugging Face GPT-NeoX / Pythia checkpoints into `model.ModelConfig` and our params, from NumPy only.

Reads a config.json dict and a state dict of NumPy arrays (however they were loaded: safetensors'
numpy API, torch outside this package); no torch or transformers dependency here.
"""

import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from llome_jax import model

# GPTNeoXConfig's defaults, which HF applies to fields a config.json leaves out.
_HF_DEFAULTS = dict(
  vocab_size=50432,
  hidden_size=6144,
  num_hidden_layers=44,
  num_attention_heads=64,
  intermediate_size=24576,
  max_position_embeddings=2048,
  layer_norm_eps=1e-5,
  rotary_pct=0.25,
  rotary_emb_base=10000.0,
  hidden_act='gelu',
  use_parallel_residual=True,
  tie_word_embeddings=False,
  attention_bias=True,
)

# Buffers that old checkpoints carry next to the parameters: the causal mask and rotary frequencies.
_BUFFERS = re.compile(
  r'(gpt_neox\.)?(layers\.\d+\.attention\.(bias|masked_bias|rotary_emb\.inv_freq)|rotary_emb\.inv_freq)'
)

# Our module names inside a layer -> HF's (attention and MLP are submodules there).
_LAYER_MODULES = {
  'input_layernorm': 'input_layernorm',
  'post_attention_layernorm': 'post_attention_layernorm',
  'query_key_value': 'attention.query_key_value',
  'dense': 'attention.dense',
  'dense_h_to_4h': 'mlp.dense_h_to_4h',
  'dense_4h_to_h': 'mlp.dense_4h_to_h',
}
_LEAVES = {'kernel': 'weight', 'scale': 'weight', 'embedding': 'weight', 'bias': 'bias'}
# The output projection is `embed_out` in Pythia's checkpoints and `lm_head` in current transformers.
_OUTPUT_NAMES = ('embed_out.weight', 'lm_head.weight')


def config_from_hf(hf_config: Mapping[str, Any], **overrides) -> model.ModelConfig:
  """The ModelConfig of a GPT-NeoX config.json; fails on features our model does not have.

  Args:
    hf_config: the parsed config.json (Pythia's `rotary_pct` / `rotary_emb_base`, or newer
      transformers' `rope_parameters`); missing fields take GPTNeoXConfig's defaults, as in HF.
    **overrides: ModelConfig fields to set besides (e.g. `dtype`).

  Returns:
    The matching ModelConfig.
  """
  c = {**_HF_DEFAULTS, **hf_config}
  if c.get('model_type', 'gpt_neox') != 'gpt_neox':
    raise ValueError(f"Expected a GPT-NeoX config (model_type 'gpt_neox'), got {c['model_type']!r}.")
  rope = c.get('rope_parameters') or c.get('rope_scaling') or {}
  if rope.get('rope_type', rope.get('type', 'default')) != 'default':
    raise ValueError(f'Only plain rotary embeddings are supported, got rope parameters {rope}.')
  unsupported = {
    'hidden_act': (c['hidden_act'], 'gelu'),  # exact erf GELU; gelu_new and friends are approximations
    'use_parallel_residual': (c['use_parallel_residual'], True),
    'tie_word_embeddings': (c['tie_word_embeddings'], False),
    'attention_bias': (c['attention_bias'], True),
  }
  for name, (value, supported) in unsupported.items():
    if value != supported:
      raise ValueError(f'GPT-NeoX config has {name}={value!r}; llome_jax.model supports only {supported!r}.')
  if c.get('head_dim') not in (None, c['hidden_size'] // c['num_attention_heads']):
    raise ValueError(f'head_dim={c["head_dim"]} differs from hidden_size / num_attention_heads.')
  return model.ModelConfig(
    vocab_size=int(c['vocab_size']),
    num_layers=int(c['num_hidden_layers']),
    num_heads=int(c['num_attention_heads']),
    width=int(c['hidden_size']),
    ff_width=int(c['intermediate_size']),
    max_len=int(c['max_position_embeddings']),
    rotary_fraction=float(rope.get('partial_rotary_factor', c['rotary_pct'])),
    rotary_base=float(rope.get('rope_theta', c['rotary_emb_base'])),
    layer_norm_eps=float(c['layer_norm_eps']),
    init_std=float(c.get('initializer_range', 0.02)),
    **overrides,
  )


def _hf_name(path: tuple) -> str:
  """HF's state-dict name (without the `gpt_neox.` prefix) of our parameter at `path`."""
  *modules, leaf = path
  if modules[0] == 'layers':
    _, index, module = modules
    return f'layers.{index}.{_LAYER_MODULES[module]}.{_LEAVES[leaf]}'
  (module,) = modules
  return f'{module}.{_LEAVES[leaf]}'


def params_from_hf(state_dict: Mapping[str, np.ndarray], cfg: model.ModelConfig) -> model.Params:
  """Our params (the tree of `model.abstract_params(cfg)`, float32 NumPy leaves) from HF's state dict.

  Accepts `GPTNeoXForCausalLM` names (`gpt_neox.layers.0.attention.query_key_value.weight`, ...), the
  output projection as `embed_out.weight` or `lm_head.weight`, and skips the causal-mask and rotary
  buffers old checkpoints hold. HF's fused query_key_value orders its outputs (head, q/k/v, head width),
  as `model.Block` reads them, so Linear weights are only transposed from [out, in] to [in, out].

  Args:
    state_dict: HF name -> array (any float dtype; float16 checkpoints are widened to float32).
    cfg: the architecture, e.g. from `config_from_hf`.

  Returns:
    A nested dict of float32 NumPy arrays; `jax.device_put` it with the sharding rules.

  Raises:
    ValueError: naming the missing, unexpected or wrongly shaped keys.
  """
  names = {re.sub(r'^gpt_neox\.', '', name): name for name in state_dict}
  outputs = [name for name in _OUTPUT_NAMES if name in names]
  if len(outputs) > 1:
    raise ValueError(f'State dict holds both {_OUTPUT_NAMES}; expected one output projection.')
  missing, used = [], set(outputs)

  def convert(path, abstract):
    key = _hf_name(tuple(k.key for k in path))
    if key == 'embed_out.weight' and outputs:
      key = outputs[0]
    if key not in names:
      missing.append(f'gpt_neox.{key}' if key not in _OUTPUT_NAMES else ' or '.join(_OUTPUT_NAMES))
      return None
    used.add(key)
    value = np.asarray(state_dict[names[key]], dtype=np.float32)
    value = value.T if path[-1].key == 'kernel' else value
    if value.shape != abstract.shape:
      hf_shape = abstract.shape[::-1] if path[-1].key == 'kernel' else abstract.shape
      raise ValueError(
        f'{names[key]} has shape {np.shape(state_dict[names[key]])}; the config needs {hf_shape}.'
      )
    return value

  _, abstract_params = model.abstract_params(cfg)
  params = jax.tree_util.tree_map_with_path(convert, abstract_params)
  unexpected = sorted(names[k] for k in set(names) - used if not _BUFFERS.fullmatch(names[k]))
  if missing or unexpected:
    raise ValueError(f'State dict does not match the config: missing {missing}, unexpected {unexpected}.')
  return params
