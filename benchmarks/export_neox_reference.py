"""Writes tests/data/neox_tiny_reference.npz: a tiny random GPTNeoXForCausalLM, its logits and greedy ids.

Runs under the reference venv's python (see make_hf_venv.sh); tests/test_pythia.py checks that
llome_jax.pythia imports the weights and that llome_jax.model reproduces HF's logits and decoding.
"""

import argparse
import json
import pathlib

import numpy as np
import torch
import transformers

REPO = pathlib.Path(__file__).resolve().parents[1]
HF_CONFIG = dict(  # the fields of a Pythia config.json, at toy size
  model_type='gpt_neox',
  vocab_size=37,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=128,
  max_position_embeddings=128,
  rotary_pct=0.25,  # 4 rotary dims of head width 16
  rotary_emb_base=10000,
  layer_norm_eps=1e-5,
  use_parallel_residual=True,
  hidden_act='gelu',
  tie_word_embeddings=False,
)
PAD_ID = 0


def build_model() -> transformers.GPTNeoXForCausalLM:
  """Random weights far from HF's init (non-zero biases, LayerNorm scales off 1), so a slip shows.

  Unit-scale embeddings and large query/key weights make attention sharp, so greedy decoding depends on
  the whole prompt (with everything at 0.2 it falls into repeating one token).
  """
  config = transformers.GPTNeoXConfig(
    **{k: v for k, v in HF_CONFIG.items() if k != 'model_type'},
    attention_dropout=0.0,
    hidden_dropout=0.0,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=PAD_ID,
  )
  config._attn_implementation = 'eager'
  model = transformers.GPTNeoXForCausalLM(config).float().eval()
  torch.manual_seed(0)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'layernorm' in name or 'layer_norm' in name:
        param.copy_((1.0 if name.endswith('weight') else 0.0) + 0.1 * torch.randn_like(param))
      else:
        std = 1.0 if 'embed_in' in name else 0.5 if 'query_key_value' in name else 0.2
        param.copy_(std * torch.randn_like(param))
  return model


def left_padded_batch(generator: torch.Generator, batch: int, length: int, pad: int):
  """Random tokens [batch, length] whose last row is left-padded by `pad` positions."""
  tokens_BxT = torch.randint(1, HF_CONFIG['vocab_size'], (batch, length), generator=generator)
  mask_BxT = torch.ones_like(tokens_BxT)
  mask_BxT[-1, :pad] = 0
  tokens_BxT[-1, :pad] = PAD_ID
  return tokens_BxT, mask_BxT


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--out', default=str(REPO / 'tests' / 'data' / 'neox_tiny_reference.npz'))
  args = parser.parse_args()

  model = build_model()
  generator = torch.Generator().manual_seed(1)
  tokens_BxT, mask_BxT = left_padded_batch(generator, batch=3, length=12, pad=3)
  # As HF's generate derives them: real tokens count from 0, pads get 0.
  positions_BxT = (mask_BxT.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    logits_BxTxV = model(input_ids=tokens_BxT, attention_mask=mask_BxT, position_ids=positions_BxT).logits
    model.config._attn_implementation = 'sdpa'
    sdpa_BxTxV = model(input_ids=tokens_BxT, attention_mask=mask_BxT, position_ids=positions_BxT).logits
    model.config._attn_implementation = 'eager'
  real = mask_BxT.bool()
  print('eager vs sdpa max |diff| on real tokens:', float((logits_BxTxV - sdpa_BxTxV)[real].abs().max()))

  prompts_BxP, prompt_mask_BxP = left_padded_batch(generator, batch=3, length=7, pad=3)
  with torch.no_grad():
    out = model.generate(
      input_ids=prompts_BxP,
      attention_mask=prompt_mask_BxP,
      max_new_tokens=6,
      do_sample=False,
      use_cache=True,
      return_dict_in_generate=True,
      output_scores=True,
      pad_token_id=PAD_ID,
    )
  generated_BxG = out.sequences[:, prompts_BxP.shape[1] :]
  greedy_logits_BxGxV = torch.stack(out.scores, 1)  # raw logits: greedy search applies no processor
  top2_BxGx2 = greedy_logits_BxGxV.topk(2, dim=-1).values
  print(
    'smallest greedy margin (top-1 minus top-2 logit):',
    float((top2_BxGx2[..., 0] - top2_BxGx2[..., 1]).min()),
  )

  arrays = {name: value.detach().numpy().astype(np.float32) for name, value in model.state_dict().items()}
  np.savez_compressed(
    args.out,
    **arrays,
    hf_config_json=np.array(json.dumps(HF_CONFIG)),
    state_dict_keys=np.array(sorted(arrays)),
    transformers_version=np.array(transformers.__version__),
    tokens_BxT=tokens_BxT.numpy().astype(np.int32),
    mask_BxT=mask_BxT.numpy().astype(bool),
    positions_BxT=positions_BxT.numpy().astype(np.int32),
    logits_BxTxV=logits_BxTxV.numpy().astype(np.float32),
    prompts_BxP=prompts_BxP.numpy().astype(np.int32),
    prompt_mask_BxP=prompt_mask_BxP.numpy().astype(bool),
    greedy_BxG=generated_BxG.numpy().astype(np.int32),
    greedy_logits_BxGxV=greedy_logits_BxGxV.numpy().astype(np.float32),
  )
  print(f'wrote {args.out} ({pathlib.Path(args.out).stat().st_size / 1024:.0f} KiB)')


if __name__ == '__main__':
  main()
