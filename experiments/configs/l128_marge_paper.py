"""LLOME-MargE on ehr_v32_l128_c4_k4_q4 as the paper runs it: l128_marge.py without its repair mutants
and spread seeds, so every label is one of the policy's generations and the seeds are the best pairs'
better members.

  python -m experiments.llome --config=experiments/configs/l128_marge_paper.py --workdir=runs/l128_marge_paper
"""

from experiments.configs import l128_marge


def get_config():
  return l128_marge.l128_config(paper=True)
