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


def test_a_reference_of_another_family(eval_run, tiny_lm, tmp_path):
    """R̄ of a GPT-J policy against a GPT-2 reference over the same tokenizer: the reference pass runs
    GPT-2's own forward on GPT-J's sampled ids; a sampled id the reference has no row for is refused."""
    import jax
    import pandas as pd

    from rajax import config, tasks
    from rajax.evaluation import generation
    from rajax.models import gptj
    from rajax.rewards import PythonReward

    root = tiny_lm["root"]
    cfg = config.load_config("rtp", None, [
        "data.source=file", f"data.path={root / 'train.csv'}", f"data.test_path={root / 'test.csv'}",
        "data.label_column=label", "generation.prompt_tokens=4", "generation.max_new_tokens=5",
        "generation.min_length=0", "eval.batch_size=4", "eval.ppl_num_texts=2", "eval.test_size=6",
        "kl.init_coef=0.5", f"model.policy={root / 'gpt2'}", f"reward.model={root / 'bert'}"])
    tok, rcfg = tiny_lm["tok"], tiny_lm["cfg"]
    jcfg = gptj.GPTJConfig(vocab_size=rcfg.vocab_size + 4, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                           rotary_dim=4)
    jp = gptj.init(jcfg, jax.random.key(5))
    jp["lm_head"]["bias"] = jp["lm_head"]["bias"].at[rcfg.vocab_size:].set(-1e4)  # padding rows: no mass
    reward = PythonReward(lambda t: float(len(t)))
    data = tasks.load(cfg, tok, require=("test",))
    pol = {"ref": (rcfg, tiny_lm["params"]), "j": (jcfg, jp)}
    E.evaluate(cfg, pol, str(tmp_path), reward=reward, tokenizer=tok, task_data=data, key=jax.random.key(0),
               progress=False)
    df = pd.read_csv(tmp_path / "generations.csv", keep_default_na=False)
    kl = df["reward_j"] - df["R_bar_j"]
    assert np.abs(kl).max() > 1e-3  # two different models: the KL is not zero
    # Recompute the KL sums with the reference's own handle from the same sampled tokens.
    from rajax.evaluation.run import _subset

    test = _subset(data.test, 6)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    _, toks, rmask = generation.generate(jcfg, jp, tok, test, settings=cfg.generation.sample_settings(
        tok.eos_token_id, pad), batch_size=4, key=jax.random.fold_in(jax.random.key(0), 1), progress=False,
        return_tokens=True)
    ids, mask = generation.prompt_arrays(test, pad)
    want = generation.kl_sums(jcfg, jp, tiny_lm["params"], ids, mask, toks, rmask, batch_size=4, reference=rcfg)
    np.testing.assert_allclose(kl, 0.5 * want, rtol=1e-4, atol=1e-5)
    # A policy that samples a row beyond the reference's vocabulary: one line, not a silent clamp.
    jp["lm_head"]["bias"] = jp["lm_head"]["bias"].at[rcfg.vocab_size:].set(1e4)
    with pytest.raises(ValueError, match=r"policy 'j' sampled token id \d+, beyond the KL reference 'ref'"):
        E.evaluate(cfg, pol, str(tmp_path / "bad"), reward=reward, tokenizer=tok, task_data=data,
                   key=jax.random.key(0), progress=False)


def test_several_samples_per_prompt(eval_run, tiny_lm, tmp_path):
    """eval.samples_per_prompt=3: every prompt gets 3 rows in a row, each sampled on its own; the
    metrics average over all rows and the prompt-level counts stay per prompt."""
    import jax
    import pandas as pd

    from rajax import config, tasks
    from rajax.rewards import PythonReward

    root = tiny_lm["root"]
    cfg = config.load_config("rtp", None, [
        "data.source=file", f"data.path={root / 'train.csv'}", f"data.test_path={root / 'test.csv'}",
        "data.label_column=label", "generation.prompt_tokens=4", "generation.max_new_tokens=5",
        "generation.min_length=0", "eval.batch_size=4", "eval.ppl_num_texts=2", "eval.test_size=5",
        "eval.samples_per_prompt=3", "eval.tail_threshold=3", "eval.cvar_alphas=[0.2]",
        f"model.policy={root / 'gpt2'}", f"reward.model={root / 'bert'}"])
    reward = PythonReward(lambda t: float(len(t.split())))
    data = tasks.load(cfg, tiny_lm["tok"], require=("test",))
    m = E.evaluate(cfg, {"p": (tiny_lm["cfg"], tiny_lm["params"])}, str(tmp_path), reward=reward,
                   tokenizer=tiny_lm["tok"], task_data=data, key=jax.random.key(0), progress=False,
                   extra_scorers={"chars": lambda texts: np.array([len(t) for t in texts], float)})
    df = pd.read_csv(tmp_path / "generations.csv", keep_default_na=False)
    assert len(df) == 15 and list(df["sample"]) == [0, 1, 2] * 5
    prompts = df["prompt"].tolist()
    assert prompts == [q for q in prompts[::3] for _ in range(3)]
    assert df.groupby("prompt")["response_p"].nunique().max() > 1  # the repeats are sampled independently
    p = m["policies"]["p"]
    assert m["n_test"] == 5 and m["samples_per_prompt"] == 3
    assert p["reward"] == pytest.approx(df["reward_p"].mean())
    tail = df["prompt_score"] < 3
    assert m["n_tail"] == int(tail.sum()) // 3 and p["tail"] == pytest.approx(df.loc[tail, "reward_p"].mean())
    assert p["cvar"]["0.2"] == pytest.approx(np.sort(df["reward_p"])[:3].mean())
    assert p["extra_cvar"]["chars"]["0.2"] == pytest.approx(np.sort(df["chars_p"])[:3].mean())
    assert p["extra_tail"]["chars"] == pytest.approx(df.loc[tail, "chars_p"].mean())
