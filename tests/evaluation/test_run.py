"""rajax.evaluation.run.evaluate as a library call: in-memory policies, a Python reward, extra scorers."""
import numpy as np
import pytest

from rajax import evaluation as E


def test_evaluate_api_with_python_reward_extra_scorer_and_param_tuples(eval_run, tiny_lm, tmp_path):
    # eval_run: also writes the CSVs and the BERT dir this test reads
    """evaluate() with in-memory policies, a word-count reward (so prompt scores spread) and an extra scorer."""
    import jax

    from rajax import config, tasks
    from rajax.rewards import PythonReward

    root = tiny_lm["root"]
    cfg = config.load_config("rtp", None, [
        "data.source=file", f"data.path={root / 'train.csv'}", f"data.test_path={root / 'test.csv'}",
        "data.label_column=label", "generation.prompt_tokens=4", "generation.max_new_tokens=5",
        "generation.min_length=0", "eval.batch_size=4", "eval.ppl_num_texts=3", "eval.tail_threshold=0",
        f"model.policy={root / 'gpt2'}", f"reward.model={root / 'bert'}"])
    bad = ("hate", "awful", "stupid", "terrible", "ugly")
    reward = PythonReward(lambda t: 1.0 - 2.0 * sum(t.count(w) for w in bad))
    data = tasks.load(cfg, tiny_lm["tok"], require=("test",))
    pol = {"p": (tiny_lm["cfg"], tiny_lm["params"])}
    m = E.evaluate(cfg, pol, str(tmp_path), reward=reward, tokenizer=tiny_lm["tok"], task_data=data,
                   extra_scorers={"length": lambda texts: np.array([len(t) for t in texts], float)},
                   key=jax.random.key(0), progress=False)
    import pandas as pd

    df = pd.read_csv(tmp_path / "generations.csv", keep_default_na=False)
    # prompts are 4 tokens of the test texts; the toxic ones start with words that the reward punishes
    assert m["n_tail"] == int((df["prompt_score"] < 0).sum()) >= 1
    assert m["policies"]["p"]["tail"] == pytest.approx(df.loc[df["prompt_score"] < 0, "reward_p"].mean())
    full = (df["prompt"] + df["response_p"]).map(len)
    np.testing.assert_allclose(df["length_p"], full)
    assert m["policies"]["p"]["extra"]["length"] == pytest.approx(full.mean())
    # same key, same generations and metrics
    m2 = E.evaluate(cfg, pol, str(tmp_path / "again"), reward=reward, tokenizer=tiny_lm["tok"], task_data=data,
                    key=jax.random.key(0), progress=False)
    assert m2["policies"]["p"]["reward"] == m["policies"]["p"]["reward"]
    with pytest.raises(ValueError):
        E.evaluate(cfg, {}, str(tmp_path), reward=reward, tokenizer=tiny_lm["tok"], task_data=data)
