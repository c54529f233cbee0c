"""rajax.tasks.synthetic.task: placeholders resolved to the cached assets, and the task's data."""
import os

import pytest

from rajax.tasks.synthetic import build, task


def test_resolve_and_load_task_data(synthetic_assets):
    from rajax import config, tasks

    a, _ = synthetic_assets
    cfg = config.load_config("synthetic")
    config.validate(cfg, num_devices=8)
    assert cfg.model.policy == cfg.reward.model == "synthetic" and cfg.data.source == "synthetic"
    r = task.resolve(cfg, cache_dir=a.root, small=True, progress=False)
    assert (r.model.policy, r.model.ref_policy, r.model.tokenizer, r.reward.model, r.data.path) == (
        a.policy, None, a.tokenizer, a.reward_model, a.data)
    r2 = task.resolve(config.load_config(cfg, overrides=["model.ref_policy=synthetic"]), cache_dir=a.root,
                     small=True, progress=False)
    assert r2.model.ref_policy == a.policy
    assert r.ppo == cfg.ppo and r.generation == cfg.generation
    assert task.resolve(r) is r  # nothing left to fill
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.tokenizer)
    r = config.load_config(r, overrides=["eval.test_size=10", "eval.ppl_num_texts=5", "eval.ppl_max_chars=20"])
    td = tasks.load(r, tok)  # the registry dispatches to the synthetic task
    P = r.generation.prompt_tokens
    assert isinstance(td, tasks.TaskData) and len(td.train) == build.SIZES["small"]["n_train"]
    assert all(len(i) == P for i in td.train.ids)  # every document is longer than the prompt
    assert td.train.texts[0] == tok.decode(td.train.ids[0])
    assert len(td.test) == 10 and td.test.labels.sum() == 5
    assert len(td.ppl_texts) == 5 and all(len(t) <= 20 for t in td.ppl_texts)
    nonhostile = [x["text"][:20] for x in build.read_jsonl(os.path.join(a.data, "test.jsonl")) if x["label"] == 0]
    assert td.ppl_texts == nonhostile[:5]  # the paper's choice: non-toxic test texts
    assert len(td.sft_texts) == build.SIZES["small"]["n_lm"]
    bad = config.load_config(r, overrides=[f"data.path={a.root}"])
    with pytest.raises(FileNotFoundError, match="not a synthetic data directory"):
        task.TASK.load(bad, tok)
