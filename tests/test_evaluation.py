"""Evaluation: pure metrics vs hand-computed values, perplexity vs a transformers computation of the
same protocol (spec §4.2), generation, and bin/evaluate end to end on tiny random models."""
import json
import math
import os

import numpy as np
import pytest

from rajax import evaluation as E
from tiny import bpe_tokenizer

# ------------------------------------------------------------------------------------------ metrics

# A fixed table of 10 prompts: prompt scores and one policy's rewards.
SCORES = np.array([3.0, -1.0, 7.0, 5.0, 0.5, 6.0, -4.0, 5.0, 2.0, 8.0])
REWARDS = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])


def test_tail_mean_strict_and_inclusive():
    # prompt score < 5: rows 0,1,4,6,8 -> rewards 1,2,5,7,9
    assert E.tail_mean(REWARDS, SCORES, 5.0) == pytest.approx(24 / 5)
    # <= 5 also takes rows 3 and 7 (score exactly 5) -> + 4, 8
    assert E.tail_mean(REWARDS, SCORES, 5.0, inclusive=True) == pytest.approx(36 / 7)
    assert math.isnan(E.tail_mean(REWARDS, SCORES, -10.0))
    with pytest.raises(ValueError):
        E.tail_mean(REWARDS, SCORES[:3], 0.0)


def test_cvar_convention():
    x = np.array([5.0, -2.0, 3.0, 9.0, 0.0, 1.0, 7.0, -6.0, 4.0, 2.0])  # sorted: -6 -2 0 1 2 3 4 5 7 9
    assert E.cvar(x, 0.1) == pytest.approx(-6.0)  # ceil(1.0) = 1
    assert E.cvar(x, 0.2) == pytest.approx(-4.0)  # 2 rows
    assert E.cvar(x, 0.25) == pytest.approx(-8 / 3)  # ceil(2.5) = 3 rows: -6, -2, 0
    assert E.cvar(x, 0.05) == pytest.approx(-6.0)  # at least one row
    assert E.cvar(x, 1.0) == pytest.approx(x.mean())
    # float noise must not add a row: 0.1 * 30 = 3.0000000000000004 -> 3 rows, not 4
    assert E.cvar_count(30, 0.1) == 3
    assert E.cvar(np.arange(30.0), 0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        E.cvar(x, 0.0)


def test_quantile_curve_cumulative_lower_tail():
    # sorted by prompt score (stable): rows 6(-4),1(-1),4(.5),8(2),0(3),3(5),7(5),5(6),2(7),9(8)
    # -> rewards 7, 2, 5, 9, 1, 4, 8, 6, 3, 10
    c = E.quantile_curve(SCORES, REWARDS, qs=[5, 10, 20, 30, 50, 70, 100])
    assert math.isnan(c[0])  # int(0.05 * 10) = 0 rows
    np.testing.assert_allclose(c[1:], [7.0, 4.5, 14 / 3, 24 / 5, 36 / 7, 55 / 10])
    full = E.quantile_curve(SCORES, REWARDS)
    assert full.shape == (100,)
    assert full[-1] == pytest.approx(REWARDS.mean())
    # the plotting scripts' int(q / 100 * N): 29/100*100 = 28.999999999999996 -> 28 rows
    r = np.arange(100.0)
    assert E.quantile_curve(r, r, qs=[29])[0] == pytest.approx(np.arange(28.0).mean())


# ------------------------------------------------------------------------------ tiny model fixtures

SENTENCES = [
    "the cat sat on the mat and looked at the dog.",
    "a quiet town had a small park near the river.",
    "you are a terrible person and i hate this stupid place!",
    "we cooked dinner for our friends on a warm summer night.",
    "this film was wonderful, the story and the music were great.",
    "what an awful, boring and ugly movie, a total waste of time.",
] * 3


def make_gpt2_tokenizer(d):
    tok = bpe_tokenizer(SENTENCES)
    tok.save_pretrained(d)
    return tok


def make_gpt2(d, tok, seed=0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    eos = tok.eos_token_id
    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                   bos_token_id=eos, eos_token_id=eos))
    m.save_pretrained(d)
    tok.save_pretrained(d)
    return m


def make_bert_classifier(d):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = sorted({w.strip(".,!") for s in SENTENCES for w in s.split()} | {"<", "|", ">", "endoftext"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *"abcdefghijklmnopqrstuvwxyz.,!?'<>|"]
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "vocab.txt"), "w") as f:
        f.write("\n".join(dict.fromkeys(vocab)) + "\n")
    btok = BertTokenizerFast(vocab_file=os.path.join(d, "vocab.txt"))
    torch.manual_seed(1)
    labels = ["toxic", "severe_toxic", "obscene"]
    m = BertForSequenceClassification(BertConfig(
        vocab_size=len(btok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=128, num_labels=3, initializer_range=0.2, id2label=dict(enumerate(labels)),
        label2id={k: i for i, k in enumerate(labels)}, problem_type="multi_label_classification"))
    m.save_pretrained(d)
    btok.save_pretrained(d)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_eval")
    tok = make_gpt2_tokenizer(str(root / "tok"))
    tm = make_gpt2(str(root / "gpt2"), tok)
    from rajax.models import hf
    from rajax.tokenizer import load_tokenizer

    cfg, params = hf.load(str(root / "gpt2"))
    return dict(root=root, torch_model=tm, tok=load_tokenizer(str(root / "gpt2")), cfg=cfg, params=params)


# ---------------------------------------------------------------------------------------- perplexity


def _torch_ppl(model, tok, text):
    """The measurement's protocol with transformers: BOS + tokens, exp(mean NLL), one text at a time."""
    import torch

    ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1].double()
    nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="mean")
    return float(torch.exp(nll))


def test_perplexity_matches_transformers(tiny):
    texts = [s * (1 + i % 3) for i, s in enumerate(SENTENCES[:6])] + ["hi", "the cat"]
    got = E.perplexities(tiny["cfg"], tiny["params"], tiny["tok"], texts, batch_size=4, max_chars=120)
    model = tiny["torch_model"].eval()
    want = np.array([_torch_ppl(model, tiny["tok"], t[:120]) for t in texts])
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.all(got > 1.0)
    # BOS is prepended: a one-token text still has one prediction (from BOS)
    seqs = E.encode_for_perplexity(tiny["tok"], ["hi"], max_chars=None)
    assert seqs[0][0] == tiny["tok"].eos_token_id and len(seqs[0]) >= 2
    # an empty text has nothing to predict
    assert np.isnan(E.perplexities(tiny["cfg"], tiny["params"], tiny["tok"], [""], batch_size=4))[0]


# ---------------------------------------------------------------------------------------- generation


def test_generate_decodes_with_special_tokens(tiny):
    import jax

    tok = tiny["tok"]
    texts = ["the cat sat", "a quiet town had a small", "we", "this film was wonderful"]
    enc = [tok(t, add_special_tokens=False)["input_ids"][:4] for t in texts]
    ps = {"ids": enc, "prompts": [tok.decode(e) for e in enc]}
    gen = {"max_new_tokens": 6, "min_length": 0, "min_length_mode": "new_tokens", "top_k": 0, "top_p": 1.0,
           "temperature": 1.0}
    a = E.generate(tiny["cfg"], tiny["params"], tok, ps, gen_cfg=gen, batch_size=3, key=jax.random.key(0))
    b = E.generate(tiny["cfg"], tiny["params"], tok, ps, gen_cfg=gen, batch_size=3, key=jax.random.key(0))
    assert a == b and len(a) == 4 and all(isinstance(r, str) for r in a)
    # greedy on a high-EOS model is hard to force; instead check that EOS survives decoding
    eos_txt = tok.decode([tok.eos_token_id], skip_special_tokens=False)
    assert eos_txt == "<|endoftext|>"
    # min_new_tokens in TRL mode: max(0, min_length - longest prompt of each group of 4)
    _, mask = E.prompt_arrays(ps, tok.pad_token_id)
    mins = E.min_new_tokens(mask, {"min_length": 5, "min_length_mode": "trl"})
    assert list(mins) == [5 - int(mask.sum(1).max())] * 4
    with pytest.raises(ValueError):
        E.min_new_tokens(mask, {"min_length": 5, "min_length_mode": "bogus"})


# ------------------------------------------------------------------------------ bin/evaluate e2e

TEST_ROWS = [
    ("you are a terrible person and i hate this place", 1),
    ("the cat sat on the mat and looked at the dog", 0),
    ("what an awful boring and ugly movie", 1),
    ("we cooked dinner for our friends on a warm night", 0),
    ("this stupid film was a total waste of time", 1),
    ("a quiet town had a small park near the river", 0),
    ("i hate this awful stupid story", 1),
    ("the music and the story were great", 0),
    ("you are an ugly terrible cook", 1),
    ("our family visited the lake last summer", 0),
]


def _write_csv(path, rows):
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


@pytest.fixture(scope="module")
def eval_run(tiny):
    """bin/evaluate (in-process main) on two tiny random policies, a tiny BERT reward and a CSV."""
    import contextlib
    import io

    from rajax import evaluation

    root = tiny["root"]
    make_gpt2(str(root / "gpt2b"), tiny["tok"], seed=1)
    make_bert_classifier(str(root / "bert"))
    _write_csv(root / "train.csv", TEST_ROWS)
    _write_csv(root / "test.csv", TEST_ROWS)
    out = root / "eval"
    argv = ["--task", "jigsaw", "--policy", f"a={root / 'gpt2'}", "--policy", f"b={root / 'gpt2b'}",
            "--reward-model", str(root / "bert"), "--data", str(root / "train.csv"),
            "--test-path", str(root / "test.csv"), "--test-size", "9", "--out", str(out), "--seed", "3",
            "--no-progress",
            "--set", "data.source=file", "--set", "data.label_column=label",
            "--set", "generation.prompt_tokens=4", "--set", "generation.max_new_tokens=5",
            "--set", "generation.min_length=6", "--set", "eval.batch_size=4", "--set", "eval.ppl_num_texts=5",
            "--set", "eval.ppl_max_chars=30", "--set", "eval.cvar_alphas=[0.2,0.5]"]
    so, se = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(so), contextlib.redirect_stderr(se):
        rc = evaluation.main(argv)
    assert rc == 0, se.getvalue()
    return out, so.getvalue()


def test_bin_evaluate_writes_csv_metrics_figures_report(eval_run, tiny):
    import pandas as pd
    from matplotlib.image import imread

    out, stdout = eval_run
    df = pd.read_csv(out / "generations.csv", keep_default_na=False)
    assert len(df) == 9
    assert df["response_a"].map(lambda r: isinstance(r, str)).all()
    for c in ("prompt", "prompt_score", "label", "response_a", "reward_a", "response_b", "reward_b"):
        assert c in df.columns
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_test"] == 9 and set(m["policies"]) == {"a", "b"}
    for name in ("a", "b"):
        r = df[f"reward_{name}"].to_numpy()
        pm = m["policies"][name]
        # metrics.json agrees with the CSV through the pure metric functions
        assert pm["reward"] == pytest.approx(r.mean(), rel=1e-6)
        tail = E.tail_mean(r, df["prompt_score"].to_numpy(), 5.0, False)
        assert (pm["tail"] is None and math.isnan(tail)) or pm["tail"] == pytest.approx(tail, rel=1e-6)
        assert pm["cvar"]["0.2"] == pytest.approx(np.sort(r)[:2].mean(), rel=1e-6)
        assert pm["cvar"]["0.5"] == pytest.approx(np.sort(r)[:5].mean(), rel=1e-6)
        assert pm["perplexity"] > 1.0
    # the perplexity texts of a file task are its test texts, cut to 30 characters
    texts = [t for t, _ in TEST_ROWS][:5]
    want = E.perplexities(tiny["cfg"], tiny["params"], tiny["tok"], texts, batch_size=4, max_chars=30).mean()
    assert m["policies"]["a"]["perplexity"] == pytest.approx(want, rel=1e-5)
    # rewards are on prompt + response, prompt scores on the prompt alone: they differ
    assert not np.allclose(df["reward_a"], df["prompt_score"])
    for fig in ("hist.png", "quantile.png"):
        img = imread(out / fig)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    # R̄ = reward - 0.2 * KL to the reference (the first policy, a): for a itself it is the reward.
    np.testing.assert_allclose(df["R_bar_a"], df["reward_a"], atol=1e-9)
    assert not np.allclose(df["R_bar_b"], df["reward_b"])
    for name in ("a", "b"):
        assert m["policies"][name]["return"] == pytest.approx(df[f"R_bar_{name}"].mean(), rel=1e-6)
    assert m["kl_reference"] == "a" and m["kl_beta"] == pytest.approx(0.2)
    img = imread(out / "quantile_returns.png")
    assert img.ndim == 3 and img.std() > 0
    rep = (out / "report.md").read_text()
    assert "hist.png" in rep and "quantile.png" in rep and "| a |" in rep and "| b |" in rep
    assert "quantile_returns.png" in rep
    assert "| a |" in (out / "metrics.md").read_text() and "| a |" in stdout


def test_bin_evaluate_one_line_errors(tmp_path, capsys):
    from rajax import evaluation

    rc = evaluation.main(["--task", "jigsaw", "--policy", f"x={tmp_path / 'nope'}", "--out", str(tmp_path / "o"),
                          "--reward-model", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert evaluation.main(["--task", "nosuchtask", "--policy", "x=y"]) == 2
    assert "unknown task" in capsys.readouterr().err
    with pytest.raises(ValueError):
        E.parse_policy("=path")
    assert E.parse_policy("runs/sft/") == ("sft", "runs/sft/")


def test_evaluate_api_with_python_reward_extra_scorer_and_param_tuples(eval_run, tiny, tmp_path):
    # eval_run: also writes the CSVs and the BERT dir this test reads
    """evaluate() with in-memory policies, a word-count reward (so prompt scores spread) and an extra scorer."""
    import jax

    from rajax import config, tasks
    from rajax.rewards import PythonReward

    root = tiny["root"]
    cfg = config.load_config("rtp", None, [
        "data.source=file", f"data.path={root / 'train.csv'}", f"data.test_path={root / 'test.csv'}",
        "data.label_column=label", "generation.prompt_tokens=4", "generation.max_new_tokens=5",
        "generation.min_length=0", "eval.batch_size=4", "eval.ppl_num_texts=3", "eval.tail_threshold=0",
        f"model.policy={root / 'gpt2'}", f"reward.model={root / 'bert'}"])
    bad = ("hate", "awful", "stupid", "terrible", "ugly")
    reward = PythonReward(lambda t: 1.0 - 2.0 * sum(t.count(w) for w in bad))
    data = tasks.load_task_data(cfg, tiny["tok"], require=("test",))
    pol = {"p": (tiny["cfg"], tiny["params"])}
    m = E.evaluate(cfg, pol, str(tmp_path), reward=reward, tokenizer=tiny["tok"], task_data=data,
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
    m2 = E.evaluate(cfg, pol, str(tmp_path / "again"), reward=reward, tokenizer=tiny["tok"], task_data=data,
                    key=jax.random.key(0), progress=False)
    assert m2["policies"]["p"]["reward"] == m["policies"]["p"]["reward"]
    with pytest.raises(ValueError):
        E.evaluate(cfg, {}, str(tmp_path), reward=reward, tokenizer=tiny["tok"], task_data=data)


def test_perplexity_encoding_with_the_real_gpt2_tokenizer(shared_data):
    """Uses ../shared/data/gpt2-tokenizer (GPT-2's real vocabulary): BOS = <|endoftext|> = 50256 first."""
    from rajax.tokenizer import load_tokenizer

    tok = load_tokenizer(str(shared_data / "gpt2-tokenizer"))
    assert E.encode_for_perplexity(tok, ["Hello world, bye"], max_chars=11) == [[50256, 15496, 995]]


def test_kl_sums_match_transformers(eval_run, tiny):
    """Σ_t (log π_b − log π_a) over ragged responses after left-padded prompts, against torch per row."""
    import torch
    from transformers import GPT2LMHeadModel

    from rajax.models import hf

    root = tiny["root"]
    cfg_b, params_b = hf.load(str(root / "gpt2b"))
    tm_a, tm_b = tiny["torch_model"], GPT2LMHeadModel.from_pretrained(root / "gpt2b")
    rng = np.random.default_rng(0)
    B, P, N, V = 5, 4, 6, tiny["cfg"].vocab_size
    ids = rng.integers(0, V - 1, (B, P)).astype(np.int32)
    pmask = np.ones((B, P), np.int32)
    pmask[1, :2] = 0
    pmask[3, :3] = 0
    toks = rng.integers(0, V - 1, (B, N)).astype(np.int32)
    lens = np.array([6, 3, 1, 5, 6])
    rmask = (np.arange(N)[None] < lens[:, None]).astype(np.int32)
    got = E.kl_sums(cfg_b, params_b, tiny["params"], ids, pmask, toks, rmask, batch_size=2)
    for j in range(B):
        seq = np.concatenate([ids[j][pmask[j] > 0], toks[j][: lens[j]]])
        x = torch.tensor(seq[None].astype(np.int64))
        with torch.no_grad():
            la = torch.log_softmax(tm_a(x).logits[0].double(), -1)
            lb = torch.log_softmax(tm_b(x).logits[0].double(), -1)
        p = int(pmask[j].sum())
        want = sum(float(lb[p - 1 + t, seq[p + t]] - la[p - 1 + t, seq[p + t]]) for t in range(lens[j]))
        assert got[j] == pytest.approx(want, abs=1e-4)
