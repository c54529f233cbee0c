"""Benchmark: score 128 prompt+response texts with a BERT reward model (tokenization included).

Mimics one RA-RLHF iteration's reward call (docs/paper.md §3: B=128, texts of up to 8-64 prompt tokens plus
32-48 response tokens, i.e. at most 112 GPT-2 tokens). A random ``BertForSequenceClassification`` is
built with transformers, saved to a temporary directory together with a WordPiece tokenizer trained
on the generated text, and loaded back through ``rajax.rewards.load_reward_model`` exactly as a real
checkpoint would be.

    python bench/reward.py --size tiny          # 2-layer toy, seconds on a CPU
    python bench/reward.py --size base          # BERT-base (toxic-bert's shape: 768/12/12/3072, 6 labels)

Prints one JSON object: compile time, median wall time per 128-text call, the tokenization share of
it, and texts/s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

SIZES = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, vocab=2000),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 vocab=30522),
}
LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
_SYLL = ("ba be bi bo bu da de di do ka ke ki ko la le li lo ma me mi mo na ne ni no pa pe po ra re ri "
         "ro sa se si so ta te ti to va ve vi wa we wi ya yo za zo th sh ch st tr pr gr").split()
_COMMON = ("the of and to a in is it you that he was for on are with as i his they be at one have this "
           "from or had by not but what all were we when your can said there use an each which she do how "
           "their if will up other about out many then them these so some her would make like him into "
           "time has look two more write go see number no way could people my than first water been call "
           "who oil its now find long down day did get come made may part movie film great bad").split()


def make_texts(n: int, seed: int, max_tokens: int, gpt2_tok=None) -> tuple[list[str], list[str]]:
    """English-ish prompt/response pairs: Zipf-weighted common words plus random pseudo-words."""
    rng = np.random.default_rng(seed)
    rare = ["".join(rng.choice(_SYLL, rng.integers(2, 5))) for _ in range(3000)]
    vocab = _COMMON + rare
    w = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05
    w /= w.sum()
    prompts, responses = [], []
    for _ in range(n):
        words = list(rng.choice(vocab, int(rng.integers(20, 90)), p=w))
        for j in range(len(words)):
            if rng.random() < 0.08:
                words[j] += rng.choice([".", ",", "!", "?"])
        text = " ".join(words).capitalize()
        if gpt2_tok is not None:  # cut at exactly max_tokens GPT-2 tokens, like a 64+48 rollout
            text = gpt2_tok.decode(gpt2_tok.encode(text)[:max_tokens])
        else:  # ~1.33 GPT-2 tokens per English word
            text = " ".join(text.split()[: int(max_tokens / 1.33)])
        cut = max(1, len(text) // 3)
        prompts.append(text[:cut])
        responses.append(text[cut:] + ("<|endoftext|>" if rng.random() < 0.2 else ""))
    return prompts, responses


def build_checkpoint(d: str, size: str, corpus: list[str]) -> None:
    import torch
    import transformers
    from tokenizers import BertWordPieceTokenizer

    s = dict(SIZES[size])
    vocab = s.pop("vocab")
    wp = BertWordPieceTokenizer(lowercase=True)
    # The generated corpus is small; a few thousand pieces cover it. The model keeps its full vocab.
    wp.train_from_iterator(corpus, vocab_size=min(vocab, 8000), show_progress=False)
    os.makedirs(d, exist_ok=True)
    wp.save_model(d)  # vocab.txt
    tok = transformers.BertTokenizerFast.from_pretrained(d, model_max_length=512)
    tok.save_pretrained(d)
    vocab = max(len(tok), vocab)
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=vocab, max_position_embeddings=512, **s,
                                  id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    transformers.BertForSequenceClassification(cfg).save_pretrained(d)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--n", type=int, default=128, help="texts per call (one PPO batch)")
    ap.add_argument("--max-tokens", type=int, default=112, help="GPT-2 tokens per text (prompt + response)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per compiled chunk (default: all)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--gpt2-tokenizer", default=os.environ.get("RAJAX_GPT2_TOKENIZER"),
                    help="GPT-2 tokenizer dir used to cut texts at --max-tokens (default $RAJAX_GPT2_TOKENIZER; "
                         "a word count when absent)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    if a.n < 1 or a.repeats < 1:
        ap.error("--n and --repeats must be positive")

    import jax

    from rajax import rewards

    gpt2 = None
    if a.gpt2_tokenizer and os.path.isdir(a.gpt2_tokenizer):
        from transformers import AutoTokenizer

        gpt2 = AutoTokenizer.from_pretrained(a.gpt2_tokenizer)
    prompts, responses = make_texts(a.n * (a.repeats + 1), 0, a.max_tokens, gpt2)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        build_checkpoint(d, a.size, [p + r for p, r in zip(prompts, responses)])
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rm = rewards.load_reward_model(d, label="toxic", sign=-1, dtype=a.dtype, batch_size=a.batch_size)
        load_s = time.perf_counter() - t0
    calls = [(prompts[i * a.n:(i + 1) * a.n], responses[i * a.n:(i + 1) * a.n]) for i in range(a.repeats + 1)]
    t0 = time.perf_counter()
    rm(*calls[0])  # compiles every bucket this batch needs
    first_s = time.perf_counter() - t0
    totals, toks, widths = [], [], set()
    for p, r in calls[1:]:
        texts = [x + y for x, y in zip(p, r)]
        t0 = time.perf_counter()
        enc = rm.encode(texts)  # tokenization + padding alone
        toks.append(time.perf_counter() - t0)
        widths.update(e[0].shape for e in enc)
        t0 = time.perf_counter()
        out = rm(p, r)  # the full call: tokenize, pad, run, fetch
        totals.append(time.perf_counter() - t0)
        assert out.shape == (a.n,) and np.isfinite(out).all()
    total, tok = statistics.median(totals), statistics.median(toks)
    lens = [len(x) for x in rm.tokenizer([p + r for p, r in zip(*calls[1])])["input_ids"]]
    res = {
        "bench": "reward", "size": a.size, "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(), "dtype": a.dtype, "n_texts": a.n, "repeats": a.repeats,
        "gpt2_token_cut": gpt2 is not None, "bert_tokens_mean": float(np.mean(lens)),
        "bert_tokens_max": int(max(lens)), "shapes": sorted(widths), "compile_and_first_call_s": round(first_s, 3),
        "build_s": round(build_s, 2), "load_s": round(load_s, 2),
        "total_s": round(total, 4), "tokenize_s": round(tok, 4), "tokenize_share": round(tok / total, 3),
        "texts_per_s": round(a.n / total, 1),
        "params": int(sum(x.size for x in jax.tree.leaves(rm.params))),
    }
    line = json.dumps(res)
    print(line)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    return res


if __name__ == "__main__":
    sys.exit(main() and 0)
