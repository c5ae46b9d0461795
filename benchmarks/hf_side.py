"""Hugging Face side of the policy benchmarks: times GPTNeoXForCausalLM training and sampling in torch.

Runs under the reference venv's python (see make_hf_venv.sh). Model flags are our ModelConfig fields;
`--config_json` gives them all at once. Writes seconds, tokens/s and GFLOP/s as JSON to `--out`.
"""

import argparse
import json
import os
import time

import torch
import transformers

_MODEL_DEFAULTS = dict(  # model.preset('small', vocab_size=37): CompactCodec over 32 states.
  vocab_size=37,
  num_layers=4,
  num_heads=4,
  width=256,
  ff_width=1024,
  max_len=256,
  rotary_fraction=0.25,
  rotary_base=10000.0,
  layer_norm_eps=1e-5,
)


def build_model(args) -> transformers.GPTNeoXForCausalLM:
  config = transformers.GPTNeoXConfig(
    vocab_size=args.vocab_size,
    hidden_size=args.width,
    num_hidden_layers=args.num_layers,
    num_attention_heads=args.num_heads,
    intermediate_size=args.ff_width,
    max_position_embeddings=args.max_len,
    rotary_pct=args.rotary_fraction,
    rotary_emb_base=args.rotary_base,
    layer_norm_eps=args.layer_norm_eps,
    use_parallel_residual=True,
    hidden_act='gelu',  # exact erf GELU, as llome_jax.model
    tie_word_embeddings=False,
    attention_dropout=0.0,
    hidden_dropout=0.0,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=0,
  )
  config._attn_implementation = args.attn_implementation
  torch.manual_seed(args.seed)
  return transformers.GPTNeoXForCausalLM(config).float()


def best_seconds(fn, *, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def time_train(model, args) -> dict:
  """One AdamW step on causal-LM cross-entropy over all B x T tokens, grad norm clipped to 1."""
  model.train()
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
  generator = torch.Generator().manual_seed(args.seed)
  tokens_BxT = torch.randint(1, args.vocab_size, (args.batch_size, args.seq_len), generator=generator)

  def step():
    loss = model(input_ids=tokens_BxT, labels=tokens_BxT).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  seconds = best_seconds(step, warmup=args.warmup, repeats=args.train_repeats)
  # HF shifts labels, so T - 1 tokens per row are predicted; FLOPs count the T tokens run through.
  tokens = args.batch_size * args.seq_len
  flops = 3 * args.flops_per_token * tokens
  return dict(seconds_per_step=seconds, tokens_per_s=tokens / seconds, gflops_per_s=flops / seconds / 1e9)


def time_sample(model, args) -> dict:
  """`generate` with top-k sampling and per-token scores, plus the chosen tokens' log-probs."""
  model.eval()
  generator = torch.Generator().manual_seed(args.seed + 1)
  prompts_BxP = torch.randint(1, args.vocab_size, (args.num_prompts, args.prompt_len), generator=generator)
  mask_BxP = torch.ones_like(prompts_BxP)
  result = {}

  @torch.inference_mode()
  def sample():
    out = model.generate(
      input_ids=prompts_BxP,
      attention_mask=mask_BxP,
      max_new_tokens=args.max_new_tokens,
      min_new_tokens=args.max_new_tokens,
      do_sample=True,
      top_k=args.top_k,
      temperature=1.0,
      use_cache=True,
      return_dict_in_generate=True,
      output_scores=True,
      pad_token_id=0,
    )
    logp_BxG = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    result['mean_logp'] = float(logp_BxG.mean())
    result['new_tokens'] = out.sequences.shape[1] - args.prompt_len

  seconds = best_seconds(sample, warmup=args.warmup, repeats=args.sample_repeats)
  assert result['new_tokens'] == args.max_new_tokens, result
  new_tokens = args.num_prompts * args.max_new_tokens
  return dict(seconds=seconds, new_tokens_per_s=new_tokens / seconds, mean_logp=result['mean_logp'])


def time_matmul(sizes: list[int]) -> dict:
  """Best fp32 GFLOP/s of square matmuls as torch sees this machine (2 n^3 FLOPs each)."""
  gflops = {}
  for n in sizes:
    a, b = torch.randn(n, n), torch.randn(n, n)
    seconds = best_seconds(lambda a=a, b=b: a @ b, warmup=1, repeats=3)
    gflops[str(n)] = 2 * n**3 / seconds / 1e9
  return dict(gflops_per_s=gflops, best_gflops_per_s=max(gflops.values()))


def flops_per_token(args) -> int:
  """Forward FLOPs per token, as llome_jax.model.flops_per_token (matmuls, attention scores, mixing)."""
  d, f, v = args.width, args.ff_width, args.vocab_size
  per_layer = 2 * (3 * d * d + d * d + 2 * d * f) + 2 * 2 * args.seq_len * d
  return args.num_layers * per_layer + 2 * d * v


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--config_json', help='JSON object of ModelConfig fields; explicit flags override it')
  for name, default in _MODEL_DEFAULTS.items():
    parser.add_argument(f'--{name}', type=type(default), default=default)
  parser.add_argument('--out', required=True)
  parser.add_argument('--attn_implementation', default='sdpa', choices=['sdpa', 'eager'])
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--seq_len', type=int, default=68)
  parser.add_argument('--num_prompts', type=int, default=256)
  parser.add_argument('--prompt_len', type=int, default=35)
  parser.add_argument('--max_new_tokens', type=int, default=32)
  parser.add_argument('--top_k', type=int, default=50)
  parser.add_argument('--flops_per_token', type=int, help='forward FLOPs per token; default: our formula')
  parser.add_argument('--matmul_sizes', default='2048,4096')
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--train_repeats', type=int, default=3)
  parser.add_argument('--sample_repeats', type=int, default=2)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--skip', default='', help='comma-separated parts to skip: train, sample, matmul')
  known, _ = parser.parse_known_args()
  if known.config_json:
    fields = json.loads(known.config_json)
    unknown = set(fields) - set(_MODEL_DEFAULTS) - {'init_std', 'dtype'}
    if unknown:
      parser.error(f'--config_json has fields hf_side.py does not know: {sorted(unknown)}')
    if fields.get('dtype', 'float32') != 'float32':
      parser.error('hf_side.py times float32 only.')
    parser.set_defaults(**{k: v for k, v in fields.items() if k in _MODEL_DEFAULTS})
  args = parser.parse_args()
  if args.flops_per_token is None:
    args.flops_per_token = flops_per_token(args)
  return args


def main() -> None:
  args = parse_args()
  torch.set_num_threads(args.threads)
  skip = set(filter(None, args.skip.split(',')))
  model = build_model(args)
  results = dict(
    torch_version=torch.__version__,
    transformers_version=transformers.__version__,
    threads=torch.get_num_threads(),
    attn_implementation=args.attn_implementation,
    model={name: getattr(args, name) for name in _MODEL_DEFAULTS},
    num_params=sum(p.numel() for p in model.parameters()),
    flops_per_token=args.flops_per_token,
    train=dict(batch_size=args.batch_size, seq_len=args.seq_len),
    sample=dict(num_prompts=args.num_prompts, prompt_len=args.prompt_len, max_new_tokens=args.max_new_tokens),
  )
  if 'train' not in skip:
    results['train'].update(time_train(model, args))
  if 'sample' not in skip:
    results['sample'].update(time_sample(model, args))
  if 'matmul' not in skip:
    results['matmul'] = time_matmul([int(n) for n in args.matmul_sizes.split(',')])
  with open(args.out, 'w') as f:
    json.dump(results, f, indent=2)
  print(json.dumps(results, indent=2))


if __name__ == '__main__':
  main()
