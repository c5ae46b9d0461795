r"""Policy speed: llome_jax train step and sampling against Hugging Face GPTNeoXForCausalLM, same run.

  python benchmarks/lm_speed.py [--hf_python=.venv-hf/bin/python] [--preset=small]

Same architecture and size on both sides (ModelConfig fields are passed to benchmarks/hf_side.py), fp32.
Train: one AdamW step (gradient clipped at 1) on next-token cross-entropy over B x T tokens. Sampling:
256 prompts of 35 tokens, 32 new tokens each, top-k 50 at temperature 1, with per-token log-probs.
Also measured in this run: the machine's fp32 matmul throughput (best of torch and XLA on large square
matmuls), against which the train step's model FLOPs are reported. Goals on a 2-core CPU: train step
>= torch and >= 70% of matmul throughput; sampling >= 3x torch.

On Linux, run it as `GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/lm_speed.py` to time both
sides with glibc's large blocks on transparent huge pages (README, "Speed and memory"); the second line
printed says which setting a run had.
"""

import argparse
import dataclasses
import functools
import json
import os
import pathlib
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from llome_jax import codec, model, sampling, train

REPO = pathlib.Path(__file__).resolve().parents[1]


def host_memory() -> str:
  """How large host buffers are backed. XLA:CPU allocates each execution's temporaries afresh, and
  whether glibc asks for transparent huge pages for them moves the train step by ~20% (README)."""
  try:
    text = pathlib.Path('/sys/kernel/mm/transparent_hugepage/enabled').read_text()
    mode = text[text.index('[') + 1 : text.index(']')]
  except (OSError, ValueError):
    mode = 'unknown'
  return f'transparent huge pages: {mode}; GLIBC_TUNABLES={os.environ.get("GLIBC_TUNABLES", "(unset)")}'


def best_seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # Compile and warm up.
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def time_train(cfg: model.ModelConfig, batch_size: int, seq_len: int, repeats: int) -> float:
  graphdef, params = model.init(cfg, jax.random.key(0))
  optimizer = train.make_optimizer(train.OptimConfig(learning_rate=1e-4))
  state = train.init_state(params, optimizer)
  tokens = jax.random.randint(jax.random.key(1), (batch_size, seq_len + 1), 1, cfg.vocab_size)
  # T tokens in, next-token loss at every position: the forward work of HF's `labels=input_ids` on T.
  pairs = codec.PairBatch(
    inputs_BxT=tokens[:, :-1],
    targets_BxT=tokens[:, 1:],
    loss_mask_BxT=jnp.ones((batch_size, seq_len), jnp.float32),
    input_mask_BxT=jnp.ones((batch_size, seq_len), bool),
  )
  batch = train.Batch(pairs=pairs, where_B=jnp.ones(batch_size, bool))
  step = jax.jit(
    functools.partial(
      train.train_step, graphdef=graphdef, optimizer=optimizer, objective=train.ObjectiveConfig()
    ),
    donate_argnums=0,
  )
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], batch, jax.random.key(0))
    return metrics['loss']

  return best_seconds(run, repeats)


def time_sample(cfg, num_prompts: int, prompt_len: int, new_tokens: int, top_k: int, repeats: int) -> float:
  graphdef, params = model.init(cfg, jax.random.key(0))
  prompts = jax.random.randint(jax.random.key(2), (num_prompts, prompt_len), 1, cfg.vocab_size)
  mask = jnp.ones(prompts.shape, bool)
  # An EOS id outside the vocabulary: every row generates all its tokens, as min_new_tokens does in HF.
  scfg = sampling.SampleConfig(new_tokens, eos_id=cfg.vocab_size, pad_id=0, top_k=top_k)
  sample = jax.jit(lambda key, p: sampling.sample(key, graphdef, p, prompts, mask, 1.0, cfg=scfg).mean_logp())
  keys = iter(jax.random.split(jax.random.key(3), repeats + 1))
  return best_seconds(lambda: sample(next(keys), params), repeats)


def sampling_flops(cfg: model.ModelConfig, num_prompts: int, prompt_len: int, new_tokens: int) -> int:
  """Model FLOPs of batched decoding: the prompts' forward pass (logits of the last position only),
  then one token per row per step attending over the tokens so far."""
  vocab = 2 * cfg.width * cfg.vocab_size
  prefill = prompt_len * (model.flops_per_token(cfg, prompt_len) - vocab) + vocab
  decode = sum(model.flops_per_token(cfg, prompt_len + i + 1) for i in range(new_tokens))
  return num_prompts * (prefill + decode)


def time_matmul(sizes) -> float:
  best = 0.0
  dot = jax.jit(jnp.dot)
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    best = max(best, 2 * n**3 / best_seconds(lambda a=a, b=b: dot(a, b), 3) / 1e9)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--hf_python', default=str(REPO / '.venv-hf' / 'bin' / 'python'))
  parser.add_argument('--preset', default='small')
  parser.add_argument('--vocab_size', type=int, default=37, help='CompactCodec over 32 states')
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--seq_len', type=int, default=68)
  parser.add_argument('--num_prompts', type=int, default=256)
  parser.add_argument('--prompt_len', type=int, default=35)
  parser.add_argument('--max_new_tokens', type=int, default=32)
  parser.add_argument('--top_k', type=int, default=50)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--skip_hf', action='store_true', help='time llome_jax only')
  args = parser.parse_args()

  cfg = model.preset(args.preset, vocab_size=args.vocab_size)
  flops_per_token = model.flops_per_token(cfg, args.seq_len)
  print(
    f'{args.preset}: {model.num_params(model.abstract_params(cfg)[1]):,} params, {jax.devices()[0].platform}'
  )
  print(host_memory())

  hf = None
  if not args.skip_hf:
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / 'hf.json'
      fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ('init_std', 'dtype')}
      command = [args.hf_python, str(REPO / 'benchmarks' / 'hf_side.py'), '--out', str(out)]
      command += ['--config_json', json.dumps(fields), '--flops_per_token', str(flops_per_token)]
      for name in ('batch_size', 'seq_len', 'num_prompts', 'prompt_len', 'max_new_tokens', 'top_k'):
        command += [f'--{name}', str(getattr(args, name))]
      subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
      hf = json.loads(out.read_text())

  train_s = time_train(cfg, args.batch_size, args.seq_len, args.repeats)
  sample_s = time_sample(
    cfg, args.num_prompts, args.prompt_len, args.max_new_tokens, args.top_k, args.repeats
  )
  jax_matmul = time_matmul((2048, 4096))

  train_tokens = args.batch_size * args.seq_len
  train_gflops = 3 * flops_per_token * train_tokens / train_s / 1e9
  new_tokens = args.num_prompts * args.max_new_tokens
  peak = max(jax_matmul, hf['matmul']['best_gflops_per_s'] if hf else 0.0)
  print(
    f'fp32 matmul peak: {peak:.1f} GFLOP/s (XLA {jax_matmul:.1f}'
    + (f', torch {hf["matmul"]["best_gflops_per_s"]:.1f})' if hf else ')')
  )
  print(f'train step ({args.batch_size} x {args.seq_len} tokens):')
  print(
    f'  llome_jax {train_s * 1e3:8.1f} ms  {train_tokens / train_s:10,.0f} tok/s  {train_gflops:6.1f} GFLOP/s'
    f'  = {train_gflops / peak:.0%} of peak'
  )
  if hf:
    t = hf['train']
    print(
      f'  torch     {t["seconds_per_step"] * 1e3:8.1f} ms  {t["tokens_per_s"]:10,.0f} tok/s  '
      f'{t["gflops_per_s"]:6.1f} GFLOP/s  = {t["gflops_per_s"] / peak:.0%} of peak'
    )
    print(f'  ratio llome_jax / torch: {t["seconds_per_step"] / train_s:.2f}x')
  sample_gflop = sampling_flops(cfg, args.num_prompts, args.prompt_len, args.max_new_tokens) / 1e9
  print(f'sampling ({args.num_prompts} prompts x {args.max_new_tokens} new tokens, top-k {args.top_k}):')
  print(
    f'  llome_jax {sample_s:8.3f} s   {new_tokens / sample_s:10,.0f} new tok/s  '
    f'{sample_gflop / sample_s:6.1f} GFLOP/s  = {sample_gflop / sample_s / peak:.0%} of peak'
  )
  if hf:
    s = hf['sample']
    print(
      f'  torch     {s["seconds"]:8.3f} s   {s["new_tokens_per_s"]:10,.0f} new tok/s  '
      f'{sample_gflop / s["seconds"]:6.1f} GFLOP/s  = {sample_gflop / s["seconds"] / peak:.0%} of peak'
    )
    print(f'  ratio llome_jax / torch: {s["seconds"] / sample_s:.2f}x')
    # The model FLOPs at the matmul peak bound any implementation's time from below.
    bound = s['seconds'] / (sample_gflop / peak)
    print(f'  bound: {sample_gflop:.1f} GFLOP at 100% of peak would be {bound:.2f}x torch')


if __name__ == '__main__':
  np.set_printoptions(precision=4)
  main()
