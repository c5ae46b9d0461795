"""LaMBO-2 on f2 exactly as the LLOME paper's comparison ran it (bbo-bench `reproduce_llome_lambo_results`
through cortex): 12 rounds of 2,000 proposals, 64 guided steps of 16 mutations and 2 feature updates of
size 0.05 with Adam betas (0.09, 0.0999), the acquisition cortex's log fat-plus improvement of the value
members' means without the feasibility classifier, 16 epochs of training a round.

  python -m experiments.lambo2 --config=experiments/configs/lambo2_f2_paper.py --workdir=runs/lambo2_f2_paper

Slow on a CPU: 8x lambo2_f2.py's guided steps (about 4.9 s each for 2,000 sequences on 2 cores,
benchmarks/lambo2_speed.py) and 4x its epochs, so several minutes a round (estimated, not run here);
use an accelerator. lambo2_f2.py is the version sized for a CPU.
"""

from experiments.configs import lambo2_defaults


def get_config():
  config = lambo2_defaults.get_config()
  config.guide.b1 = 0.09
  config.guide.b2 = 0.0999
  config.guide.acquisition = 'reference'
  config.guide.use_feasibility = False
  return config
