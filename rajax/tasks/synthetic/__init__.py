"""The embedded offline task ``synthetic``: a seeded toy "toxicity" world that needs no download.

``bin/train --task synthetic`` runs the whole RA-RLHF pipeline on it (SFT'd policy -> PPO with the
CVaR mask -> evaluation) in minutes on a CPU. ``world`` generates the texts and scores any text,
``build`` prepares and caches the tokenizer, policy and reward model, ``task`` is the plug-in.
See docs/synthetic.md.
"""
from rajax.tasks.synthetic.build import Assets, build_report, default_cache_dir, prepare
from rajax.tasks.synthetic.task import PLACEHOLDER, TASK, SyntheticTask, resolve
from rajax.tasks.synthetic.world import Corpus, generate, ground_truth_score, word_counts

__all__ = ["Assets", "Corpus", "PLACEHOLDER", "SyntheticTask", "TASK", "build_report", "default_cache_dir",
           "generate", "ground_truth_score", "prepare", "resolve", "word_counts"]
