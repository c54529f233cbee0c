"""Evaluation: pure metrics vs hand-computed values, perplexity vs a transformers computation of the
same protocol (spec §4.2), generation, and bin/evaluate end to end on tiny random models."""
import json
import math
import os

import numpy as np
import pytest

from rajax import evaluation as E

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
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(SENTENCES, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
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
        max_position_embeddings=128, num_labels=3, id2label=dict(enumerate(labels)),
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
