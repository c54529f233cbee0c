"""The ``synthetic`` task plug-in: the offline world's prompts, its assets and its ground-truth score.

The preset (``rajax/configs/synthetic.yaml``) names the models and the data as the placeholder
``synthetic``; :func:`resolve` replaces each with a path of the cached assets (``build.prepare``),
building them on first use. This file and the preset are the only places that know the name.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from rajax.core.errors import MissingInput
from rajax.tasks.base import RawSplits, Task
from rajax.tasks.synthetic.build import prepare, read_jsonl
from rajax.tasks.synthetic.world import ground_truth_score

PLACEHOLDER = "synthetic"


def resolve(cfg, *, cache_dir=None, small: bool = False, progress: bool = True):
    """``cfg`` with every ``synthetic`` placeholder replaced by a path from :func:`prepare`.

    Fills ``model.policy``, ``model.ref_policy``, ``model.tokenizer`` and ``reward.model`` where they
    say ``synthetic``, and ``data.path`` when ``data.source`` is ``synthetic`` and the path is empty
    or ``synthetic``. Builds the assets on first use (about a minute on a CPU), then reads the cache.
    A config without placeholders is returned unchanged. ``cache_dir``/``small`` go to :func:`prepare`.
    """
    m, r, d = cfg.model, cfg.reward, cfg.data
    want_data = d.source == PLACEHOLDER and d.path in (None, "", PLACEHOLDER)
    if not (want_data or PLACEHOLDER in (m.policy, m.ref_policy, m.tokenizer, r.model)):
        return cfg
    a = prepare(cache_dir, small=small, progress=progress)
    pick = lambda v, path: path if v == PLACEHOLDER else v  # noqa: E731
    return dataclasses.replace(
        cfg,
        model=dataclasses.replace(m, policy=pick(m.policy, a.policy), ref_policy=pick(m.ref_policy, a.policy),
                                  tokenizer=pick(m.tokenizer, a.tokenizer)),
        reward=dataclasses.replace(r, model=pick(r.model, a.reward_model)),
        data=dataclasses.replace(d, path=a.data if want_data else d.path))


class SyntheticTask(Task):
    """The offline world (docs/synthetic.md): train/test prompts, SFT and perplexity texts from the
    prepared ``data`` directory, and the generator's ground-truth score beside the reward."""

    name = PLACEHOLDER
    offline = True
    placeholder = PLACEHOLDER
    # Means of the 72 runs of docs/study.md on the 2-core development machine (preset: 96 x 64).
    study_seconds = {"main": 19.4, "small_batch": 10.5}

    def resolve(self, cfg, *, progress: bool = True):
        return resolve(cfg, progress=progress)

    def raw(self, cfg) -> RawSplits:
        """Reads ``data.path`` (a prepared ``data`` directory; :func:`prepare`'s when empty).

        The test split alternates hostile and non-hostile documents, so any head of it (``eval.test_size``)
        stays balanced. Perplexity texts are the non-hostile test documents (the paper's choice of
        non-toxic test texts, docs/paper.md §4.2); SFT texts are the policy's pretraining corpus.
        """
        path = cfg.data.path
        if path in (None, "", PLACEHOLDER):
            path = prepare(progress=True).data
        d = pathlib.Path(path).expanduser()
        for name in ("train.jsonl", "test.jsonl", "sft.jsonl"):
            if not (d / name).is_file():
                raise MissingInput(f"data.path {str(path)!r} is not a synthetic data directory (no {name}); "
                                        "leave data.path empty to use the prepared cache")
        train_rows, test_rows = read_jsonl(d / "train.jsonl"), read_jsonl(d / "test.jsonl")
        split = lambda rows: ([r["text"] for r in rows], np.array([r["label"] for r in rows], np.int32))  # noqa: E731
        train, test = split(train_rows), split(test_rows)
        ppl = [r["text"] for r in test_rows if r["label"] == 0]
        sft = [r["text"] for r in read_jsonl(d / "sft.jsonl")]
        info = dict(source=str(d), train_hostile=int(train[1].sum()), test_hostile=int(test[1].sum()))
        return RawSplits(train, test, True, sft, ppl, info)

    def extra_scorers(self, cfg):
        # The world's own scoring rule, beside the learned reward: reward hacking shows as a gap.
        return {"ground_truth": ground_truth_score}


TASK = SyntheticTask()
