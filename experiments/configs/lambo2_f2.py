"""LaMBO-2 on f2, sized for a CPU: the paper's round structure (the LLOME binary's GA seed data, then
10 rounds of 2,000 proposals: 30,000 oracle calls in all, as LLOME's f2 runs) and model, with fewer
guided steps and epochs than the reference (see lambo2_f2_paper.py for its exact settings).

  python -m experiments.lambo2 --config=experiments/configs/lambo2_f2.py --workdir=runs/lambo2_f2

Departures, all in compute: 8 guided steps a round instead of 64 (with 16 of f2's 32 positions drawn
per step, 8 steps already let every position change several times), 4 epochs of training instead of
16, and starts thinned on Hamming instead of edit distance (0.2 s against 17 s a round on 2 cores;
for equal-length sequences edited by substitution, Hamming is the edit distance's upper bound); and
this package's acquisition (log EI under each member's Gaussian plus log p(feasible); the reference
drops the predicted variance and the classifier).
"""

from experiments.configs import lambo2_defaults


def get_config():
  config = lambo2_defaults.get_config()
  config.num_rounds = 10
  config.guide.num_steps = 8
  config.train.epochs = 4
  config.train.warmup_epochs = 1
  config.distance = 'hamming'
  return config
