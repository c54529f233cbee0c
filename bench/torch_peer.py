"""The PyTorch peer: one RLHF PPO iteration on GPT-2 in PyTorch + transformers, phase by phase.

It follows the compute pattern of TRL 0.7's ``PPOTrainer.step`` (the stack the paper's code, a TRL 0.7
fork, runs on), so that the comparison with rajax can be rerun from this repository alone:

1. ``generate_chunked``: ``model.generate`` (ancestral sampling, top_k 0, top_p 1) in chunks of
   ``--chunk`` prompts (TRL 0.7's default 4); ``generate_full_batch``: the same, all prompts at once;
2. ``reward_model``: a BERT-base classifier (toxic-bert's shape, 6 labels) on the batch in chunks of
   16 (the pipeline's batch), ``min(P + N, 128)`` random token ids per text (no tokenization);
3. ``forward_passes``: policy logits + values and reference logits over the whole sequences, the
   response log-probs in float32;
4. ``advantages``: KL-penalised rewards (beta 0.2), GAE (gamma 1, lambda 0.95), whitening;
5. ``ppo_update``: 4 PPO epochs of one full-batch minibatch (forward, backward, Adam step).

``iteration_trl07_pattern`` sums 1 (chunked) to 5; ``iteration_torch_best`` uses the full-batch
generation instead. The chunked generation (32 sequential ``generate`` calls at batch 128) runs in the
first ``--chunked-iters`` timed iterations only (default 1; the warm-up runs one chunk, to warm that
shape), since on a GPU it costs more than everything else together. Random weights (timings do not
depend on weight values); the first iteration is a warm-up. One JSON line per iteration, then a
summary line with the medians and the precision (also written to
``$BENCH_JSON_DIR/torch_peer_<task>.json`` when that is set).

Precision: ``--dtype float32`` (default) or ``bfloat16``, which runs every forward pass under
``torch.autocast(bfloat16)`` with float32 master weights and float32 Adam state, as rajax's bfloat16
does. ``--tf32`` lets float32 matmuls use TF32 on NVIDIA GPUs, which is what XLA does by default for
rajax's float32 runs (torch's default is full FP32), so that the float32 pair is like for like.

    python bench/torch_peer.py --task rtp --batch 8 --iters 2 --device cpu    # the CPU comparison
    python bench/torch_peer.py --task imdb --iters 3 --device cuda --dtype bfloat16   # GPU, bf16
    python bench/torch_peer.py --task imdb --iters 3 --device cuda --tf32             # GPU, f32 (TF32)
    python bench/torch_peer.py --model tiny --task rtp --batch 16 --device cpu  # 2x64 GPT-2 smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from transformers import BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

TASKS = {"imdb": (64, 48), "jigsaw": (8, 32), "rtp": (32, 32)}
# "tiny" is bench/iteration.py's TINY_GPT2 (and its BERT TINY_BERT below), for smoke runs.
MODELS = {"gpt2": {}, "tiny": dict(vocab_size=512, n_positions=128, n_embd=64, n_layer=2, n_head=2),
          "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
          "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25)}
BETA, GAMMA, LAM, EPOCHS, CLIP, CLIP_V, VF_COEF = 0.2, 1.0, 0.95, 4, 0.2, 0.2, 0.1


class PolicyWithValue(nn.Module):
    """TRL's AutoModelForCausalLMWithValueHead: the LM plus a linear value head on the last hidden state."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.lm = GPT2LMHeadModel(cfg)
        self.v = nn.Linear(cfg.n_embd, 1)

    def forward(self, ids, attn):
        out = self.lm(input_ids=ids, attention_mask=attn, output_hidden_states=True)
        return out.logits, self.v(out.hidden_states[-1]).squeeze(-1)


def logprobs_of(logits_BxTxV, ids_BxT):
    """TRL's logprobs_from_logits on the shifted sequence: log-softmax in float32, then gather."""
    lp = torch.log_softmax(logits_BxTxV[:, :-1].float(), -1)
    return torch.gather(lp, 2, ids_BxT[:, 1:, None]).squeeze(-1)


def gae(rewards_BxN, values_BxN, n):
    """TRL 0.7 compute_advantages: reverse GAE loop, returns = adv + values, whitened advantages."""
    last, rev = 0.0, []
    for s in reversed(range(n)):
        nv = values_BxN[:, s + 1] if s < n - 1 else 0.0
        last = rewards_BxN[:, s] + GAMMA * nv - values_BxN[:, s] + GAMMA * LAM * last
        rev.append(last)
    adv = torch.stack(rev[::-1], 1)
    returns = adv + values_BxN
    return (adv - adv.mean()) / (adv.std() + 1e-8), returns


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", default="imdb", choices=list(TASKS))
    ap.add_argument("--model", default="gpt2", choices=list(MODELS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=4, help="TRL 0.7's generate() sub-batch")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="bfloat16: torch.autocast, float32 master weights and Adam (as rajax)")
    ap.add_argument("--tf32", action="store_true", help="float32 matmuls in TF32 (XLA's default on NVIDIA)")
    ap.add_argument("--chunked-iters", type=int, default=1,
                    help="timed iterations that also run TRL 0.7's chunked generation")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    t_setup = time.perf_counter()
    p_len, n_new = TASKS[a.task]
    b, dev = a.batch, a.device
    cuda = dev.startswith("cuda")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def amp():
        """bfloat16 compute for what runs inside; the weights and Adam stay float32."""
        if a.dtype == "bfloat16":
            return torch.autocast(device_type="cuda" if cuda else "cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    torch.manual_seed(0)
    cfg = GPT2Config(**MODELS[a.model], eos_token_id=MODELS[a.model].get("vocab_size", 50257) - 1)
    policy = PolicyWithValue(cfg).to(dev)
    ref = copy.deepcopy(policy.lm).to(dev).eval()
    bert_kw = {} if a.model != "tiny" else dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=128,
                                                  max_position_embeddings=512)
    rm = BertForSequenceClassification(BertConfig(num_labels=6, **bert_kw)).to(dev).eval()
    opt = torch.optim.Adam(policy.parameters(), lr=1.41e-5)
    gen_kw = dict(do_sample=True, top_k=0, top_p=1.0, min_length=-1, max_new_tokens=n_new,
                  pad_token_id=cfg.eos_token_id)
    rm_len, rm_vocab = min(p_len + n_new, 128), rm.config.vocab_size
    rows = []
    precision = {"compute": a.dtype + (" (torch.autocast)" if a.dtype == "bfloat16" else ""),
                 "params": "float32", "adam": "float32",
                 "f32_matmul": "tf32" if cuda and torch.backends.cuda.matmul.allow_tf32 else "float32"}
    sync()
    print(json.dumps({"progress": "setup", "setup_s": round(time.perf_counter() - t_setup, 2), "device": dev,
                      "precision": precision}), flush=True)
    for it in range(a.iters + 1):
        t = {}
        q = torch.randint(0, cfg.vocab_size - 1, (b, p_len), device=dev)
        attn_q = torch.ones_like(q)
        sync()
        chunked = it == 0 or it <= a.chunked_iters
        t0 = time.perf_counter()
        with torch.no_grad(), amp():
            outs = []
            for i in range(0, b if it else a.chunk, a.chunk) if chunked else ():
                o = policy.lm.generate(input_ids=q[i:i + a.chunk], attention_mask=attn_q[i:i + a.chunk], **gen_kw)
                outs.append(nn.functional.pad(o, (0, p_len + n_new - o.shape[1]), value=cfg.eos_token_id))
        sync()
        if chunked and it:
            t["generate_chunked"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad(), amp():
            seq = policy.lm.generate(input_ids=q, attention_mask=attn_q, **gen_kw)
            seq = nn.functional.pad(seq, (0, p_len + n_new - seq.shape[1]), value=cfg.eos_token_id)
        sync()
        t["generate_full_batch"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad(), amp():
            rm_ids = torch.randint(min(1000, rm_vocab // 2), min(30000, rm_vocab), (b, rm_len), device=dev)
            scores = torch.cat([rm(input_ids=rm_ids[i:i + 16]).logits[:, 0] for i in range(0, b, 16)]).float()
        sync()
        t["reward_model"] = time.perf_counter() - t0
        attn = torch.ones_like(seq)
        t0 = time.perf_counter()
        with torch.no_grad(), amp():
            logits, values = policy(seq, attn)
            old_lp = logprobs_of(logits, seq)[:, p_len - 1:]
            values = values[:, p_len - 1:-1].float()
            ref_lp = logprobs_of(ref(input_ids=seq, attention_mask=attn).logits, seq)[:, p_len - 1:]
        sync()
        t["forward_passes"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        with torch.no_grad():
            rewards = -BETA * (old_lp - ref_lp)
            rewards[:, -1] += scores
            adv, rets = gae(rewards, values, n_new)
        sync()
        t["advantages"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(EPOCHS):  # mini_batch = batch: one Adam step per epoch
            with amp():
                logits, v = policy(seq, attn)
            lp = logprobs_of(logits, seq)[:, p_len - 1:]
            v = v[:, p_len - 1:-1].float()
            ratio = torch.exp(lp - old_lp)
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - CLIP, 1 + CLIP)).mean()
            vclip = v.clamp(values - CLIP_V, values + CLIP_V)
            vf = 0.5 * torch.max((v - rets) ** 2, (vclip - rets) ** 2).mean()
            opt.zero_grad()
            (pg + VF_COEF * vf).backward()
            opt.step()
        sync()
        t["ppo_update"] = time.perf_counter() - t0
        t["iteration_torch_best"] = sum(v for k, v in t.items() if k != "generate_chunked")
        if "generate_chunked" in t:
            t["iteration_trl07_pattern"] = t["iteration_torch_best"] - t["generate_full_batch"] + t["generate_chunked"]
        print(json.dumps({"iter": it, "warmup": it == 0, **{k: round(v, 4) for k, v in t.items()}}), flush=True)
        if it > 0:
            rows.append(t)
    res = {"peer": "torch", "task": a.task, "model": a.model, "batch": b, "prompt": p_len, "new_tokens": n_new,
           "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
           "threads": torch.get_num_threads(), "precision": precision,
           # Each key's median over the iterations that ran it (the chunked generation: --chunked-iters).
           "median_s": {k: round(statistics.median(r[k] for r in rows if k in r), 5)
                        for k in dict.fromkeys(k for r in rows for k in r)},
           "iters": [{k: round(v, 4) for k, v in r.items()} for r in rows],
           "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}
    print(json.dumps(res), flush=True)
    if os.environ.get("BENCH_JSON_DIR"):
        with open(os.path.join(os.environ["BENCH_JSON_DIR"], f"torch_peer_{a.task}.json"), "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
