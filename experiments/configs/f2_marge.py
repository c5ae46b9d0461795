"""LLOME-MargE on the paper's f2 instance (Ehrlich v=32, L=32, c=4, k=4, q=4; holo seed 50494) with the
paper's round structure: GA seed data (1,000 particles x 10 generations = 10,000 oracle calls), then
10 rounds of 2,000 labels (1 SFT, 9 MargE), 200 seeds x 10 iterations per round. The policy is a small
GPT-NeoX trained from scratch (the paper fine-tunes Pythia-2.8B), so it gets its own learning rates and
many SFT epochs in round 1 to learn to copy. Decoding is narrower than the reference's (greedy + 4
samples at each of 4 temperatures, 0.6-1.2, instead of 10 at each of 6, 0.6-1.6): a model this small
makes near-random edits above temperature 1.2, and 34,000 generations a round still leave 17x more
candidates than labels, at 3.6x less decoding (a run took 728 s alone on 2 CPU cores, README.md).

  python -m experiments.llome --config=experiments/configs/f2_marge.py --workdir=runs/f2_marge

Not in the paper (RESULTS.md, "Ablations"), the levers that issue 17's diagnosis of the f2 plateaus
points at:
- half of each round's labels go to repair mutants of the round's seeds (`outer.mutant_fraction=0.5`,
  `outer.mutant_kind='repair'`; outer_loop.repair_mutants), labelled in 20 generations of 50, each
  drawn from the best of the last (`outer.mutant_generations=20`; 8 generations of 125 until the
  seventh session);
- the round's seeds are spread farthest-first (Hamming) over the labelled sequences tied at the best
  value (`outer.seed_pool=4`; outer_loop.LoopConfig.seed_pool), so a plateau's minority arrangements
  are edited too, not only its dominant one;
- a fifth of each mutant generation's slots are segment duplications (`outer.duplication_fraction=0.2`;
  outer_loop.duplications, since the eighth session): a piece of a parent copied over another place of
  it, which moves the three elements of a motif that another overlaps in one step
  (`experiments.diagnose --openings` measures it).
`--config.outer.duplication_fraction=0` gives the seventh session's config. Add
`--config.outer.mutant_generations=8` to it for the sixth session's, or
`--config.outer.mutant_generations=1 --config.outer.seed_pool=1` for the repair-mutant config of the
earlier ablation rows. f2_marge_paper.py is this config without any of them: the paper's LLOME,
every label the policy's and the seeds the best pairs' better members.

f2_sft.py and f2_dpo.py change only the schedule (and DPO's learning rate and beta); f2_sft_paper.py
and f2_dpo_paper.py drop the levers as f2_marge_paper.py does.
"""

from experiments.configs import llome_defaults


def f2_config(schedule: str, *, paper: bool = False):
  """The f2 config of a schedule; `paper=True` labels only the policy's generations, seeded as the paper."""
  config = llome_defaults.get_config()
  config.test_function.name = 'f2'
  config.outer.schedule = schedule
  config.outer.num_rounds = 10
  config.outer.num_labels = 2000
  # A 0.4M-parameter policy: a round (122,000 generations) takes minutes on 2 CPU cores.
  config.model.preset = 'small'
  config.model.width = 128
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.ff_width = 512
  config.inner.temperatures = (0.6, 0.8, 1.0, 1.2)
  config.inner.samples_per_temperature = 4
  config.inner.chunk_rows = 1700  # 200 seeds x 17 settings in two equal chunks (no padded rows).
  config.train.first_round_epochs = 24
  config.train.epochs = 2
  config.train.sft.learning_rate = 1e-3
  config.train.pref.learning_rate = 3e-4
  if not paper:
    config.outer.mutant_fraction = 0.5
    config.outer.mutant_kind = 'repair'
    config.outer.mutant_generations = 20
    config.outer.seed_pool = 4
    config.outer.duplication_fraction = 0.2
  return config


def get_config():
  return f2_config('marge')
