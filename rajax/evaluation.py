"""Evaluation as in the paper (spec §4): rewards on test prompts, tail, CVaR, perplexity, figures.

Protocol (§4.1): every policy continues every test prompt **once** (ancestral sampling with the
training generation settings, the minimum length as in TRL, quirk #12); responses are decoded
**with** special tokens (quirk #13) and scored by the reward model on ``prompt + response``. The
prompt score is the reward model on the decoded prompt alone. Reported per policy:

* ``reward``: the mean reward over the test prompts;
* ``tail``: the mean reward over the prompts whose prompt score is below ``eval.tail_threshold``
  (``<`` by default, ``<=`` with ``eval.tail_inclusive``; the paper: IMDB -2.5, Jigsaw <= 5, RTP < 5);
* ``cvar@a``: the mean of the lowest ``ceil(a*N)`` rewards (see ``cvar``);
* ``perplexity``: the mean per-text perplexity of dataset text (§4.2; ``perplexities``).

Figures (Figs. 1-2): per-class reward histograms (prompt score and each policy, 30 bins per class)
and the "reward vs quantile" curve, the cumulative lower-tail mean over prompts sorted by prompt
score (``quantile_curve``).

Pure metrics are NumPy functions; the model parts are jitted JAX.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rajax import sampling, tasks
from rajax.models import gpt2

# ----------------------------------------------------------------------------------------------
# Pure metrics
# ----------------------------------------------------------------------------------------------


def tail_mean(rewards, prompt_scores, threshold: float, inclusive: bool = False) -> float:
    """Mean reward over rows with ``prompt_score < threshold`` (``<=`` if ``inclusive``); NaN if none.

    The paper's "Tail (r)" (§4.1): IMDB prompt score <= -2.5, Jigsaw <= 5, RTP < 5.
    """
    r = np.asarray(rewards, np.float64)
    s = np.asarray(prompt_scores, np.float64)
    if r.shape != s.shape:
        raise ValueError(f"rewards {r.shape} and prompt_scores {s.shape} must have the same shape")
    sel = s <= threshold if inclusive else s < threshold
    return float(r[sel].mean()) if sel.any() else float("nan")


def cvar_count(n: int, alpha: float) -> int:
    """How many of ``n`` values CVaR_alpha averages: ``ceil(alpha * n)``, at least 1.

    ``alpha * n`` is rounded to 9 decimals first so that float noise (0.1 * 30 = 3.0000000000000004)
    does not add a row.
    """
    return max(1, math.ceil(round(alpha * n, 9)))


def cvar(x, alpha: float) -> float:
    """Lower-tail CVaR: the mean of the lowest ``ceil(alpha * N)`` values of ``x``.

    Convention: the empirical lower tail with a whole number of rows, rounding the tail size up
    (the same rounding as the paper's risk level alpha' = ceil(alpha B), §1.3); alpha = 1 is the mean.
    """
    v = np.sort(np.asarray(x, np.float64).ravel())
    if v.size == 0:
        raise ValueError("cvar of an empty array")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"cvar alpha must be in (0, 1], got {alpha}")
    return float(v[: cvar_count(v.size, alpha)].mean())


def quantile_curve(prompt_scores, rewards, qs: Sequence[int] = tuple(range(1, 101))) -> np.ndarray:
    """The paper's "reward vs quantile" curve (§4.1): the cumulative lower-tail mean.

    Sort rows by prompt score (ascending, stable), then for each q (in %) average ``rewards`` over
    the first ``int(q / 100 * N)`` rows (the plotting scripts' own float expression, kept for
    fidelity). A q that selects no row gives NaN.
    """
    s = np.asarray(prompt_scores, np.float64)
    r = np.asarray(rewards, np.float64)
    if r.shape != s.shape or r.ndim != 1:
        raise ValueError(f"prompt_scores {s.shape} and rewards {r.shape} must be 1-D and the same shape")
    n = len(s)
    csum = np.concatenate([[0.0], np.cumsum(r[np.argsort(s, kind="stable")])])
    out = np.full(len(qs), np.nan)
    for i, q in enumerate(qs):
        k = int(q / 100 * n)
        if k > 0:
            out[i] = csum[k] / k
    return out


# ----------------------------------------------------------------------------------------------
# Perplexity (§4.2: HF `evaluate`'s perplexity measurement)
# ----------------------------------------------------------------------------------------------


def _nll_sums(cfg: gpt2.GPT2Config, params, ids_BxT, mask_BxT):
    """Per-row sum of next-token NLL over real targets, and their count."""
    logits = gpt2.apply(cfg, params, ids_BxT, mask_BxT).logits
    logp = gpt2.logprobs_of(logits[:, :-1], ids_BxT[:, 1:])
    w = mask_BxT[:, 1:].astype(jnp.float32)
    return -(logp * w).sum(-1), w.sum(-1)


_nll_sums_jit = jax.jit(_nll_sums, static_argnums=0)

PPL_MAX_BATCH = 32


def _bucket(n: int, quantum: int = 16) -> int:
    """Padded length: next power of two up to 64, then multiples of 64 (few distinct shapes)."""
    if n <= quantum:
        return quantum
    if n <= 64:
        return 1 << (n - 1).bit_length()
    return -(-n // 64) * 64


def encode_for_perplexity(tokenizer, texts: Sequence[str], *, max_chars: int | None = None,
                          bos_id: int | None = None, max_len: int | None = None) -> list[list[int]]:
    """The measurement's encoding: ``text[:max_chars]``, no special tokens, no truncation, BOS first.

    BOS is the tokenizer's BOS (GPT-2: ``<|endoftext|>`` = the EOS id 50256). ``max_len`` (the
    model's context) cuts longer sequences instead of failing; the paper's texts never reach it.
    """
    if bos_id is None:
        bos_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_id is None:
        raise ValueError("the tokenizer has no BOS/EOS token to prepend for perplexity")
    texts = [t[:max_chars] if max_chars else t for t in texts]
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    seqs = [[int(bos_id)] + list(e) for e in enc]
    if max_len is not None:
        seqs = [s[:max_len] for s in seqs]
    return seqs


def perplexities(cfg: gpt2.GPT2Config, params, tokenizer, texts: Sequence[str], *, batch_size: int = 16,
                 max_chars: int | None = None) -> np.ndarray:
    """Per-text perplexity, ``exp(mean NLL of the text's tokens)`` with the first token predicted
    from BOS (spec §4.2). The paper reports the arithmetic mean of these values.

    Texts are sorted by length and right-padded into length buckets, with a fixed batch size, so
    only a few shapes compile. A text with no tokens gets NaN.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    seqs = encode_for_perplexity(tokenizer, texts, max_chars=max_chars, max_len=cfg.n_positions)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else seqs[0][0] if seqs else 0
    out = np.full(len(seqs), np.nan)
    order = np.argsort([len(s) for s in seqs], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = min(_bucket(max(len(seqs[i]) for i in rows)), cfg.n_positions)
        ids = np.full((batch_size, width), pad, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for j, i in enumerate(rows):
            ids[j, : len(seqs[i])] = seqs[i]
            mask[j, : len(seqs[i])] = 1
        nll, cnt = jax.device_get(_nll_sums_jit(cfg, params, jnp.asarray(ids), jnp.asarray(mask)))
        nll, cnt = np.asarray(nll[: len(rows)], np.float64), np.asarray(cnt[: len(rows)])
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = np.where(cnt > 0, np.exp(nll / np.maximum(cnt, 1)), np.nan)
    return out


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _get(obj, name, default=None):
    return obj.get(name, default) if isinstance(obj, Mapping) else getattr(obj, name, default)


def prompt_arrays(prompt_set, pad_id: int):
    """(ids [N,P], mask [N,P]) left-padded from a PromptSet (arrays, or a list of id lists)."""
    ids = _get(prompt_set, "ids")
    mask = _get(prompt_set, "mask")
    if mask is None:
        mask = _get(prompt_set, "attention_mask")
    if mask is not None and not isinstance(ids, list):
        return np.asarray(ids, np.int32), np.asarray(mask, np.int32)
    rows = [list(map(int, r)) for r in ids]
    return tasks.left_pad(rows, max([len(r) for r in rows] + [1]), pad_id)


def _gen_field(gen_cfg, name, default):
    v = _get(gen_cfg, name, default)
    return default if v is None else v


def min_new_tokens(prompt_mask, gen_cfg) -> np.ndarray:
    """Per-row minimum number of new tokens from ``generation.min_length`` and its mode (quirk #12)."""
    min_length = int(_gen_field(gen_cfg, "min_length", 0))
    mode = _gen_field(gen_cfg, "min_length_mode", "trl")
    if mode == "trl":
        return np.asarray(sampling.min_new_tokens_like_trl(prompt_mask, min_length))
    if mode == "new_tokens":
        return np.full((len(prompt_mask),), min_length, np.int32)
    raise ValueError(f"generation.min_length_mode must be 'trl' or 'new_tokens', got {mode!r}")


def generate(cfg: gpt2.GPT2Config, params, tokenizer, prompt_set, *, gen_cfg, batch_size: int,
             key: jax.Array, progress: bool = False, desc: str = "generate", clean_up: bool = False,
             return_tokens: bool = False):
    """One sampled continuation per prompt, decoded WITH special tokens (EOS kept, quirk #13).

    Returns the response strings, or with ``return_tokens`` ``(strings, tokens [N, max_new],
    response mask [N, max_new])``.

    Prompts are processed in file order in batches of ``batch_size`` (the last one is padded with
    copies so every call has the same shape); the minimum length is computed over the whole set
    in TRL's groups of 4 (quirk #12) before batching, so it does not depend on ``batch_size``.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, mask = prompt_arrays(prompt_set, pad)
    n = len(ids)
    if n == 0:
        return []
    max_new = int(_gen_field(gen_cfg, "max_new_tokens", 32))
    if ids.shape[1] + max_new > cfg.n_positions:
        raise ValueError(f"prompt width {ids.shape[1]} + max_new_tokens {max_new} exceeds the model's "
                         f"context of {cfg.n_positions}")
    mins = min_new_tokens(mask, gen_cfg)
    temp = float(_gen_field(gen_cfg, "temperature", 1.0))
    kw = dict(max_new_tokens=max_new, eos_id=int(eos), pad_id=int(pad),
              top_k=int(_gen_field(gen_cfg, "top_k", 0)), top_p=float(_gen_field(gen_cfg, "top_p", 1.0)))
    bs = max(1, min(batch_size, n))
    responses: list[str] = []
    tok_rows, mask_rows = [], []
    rng = range(0, n, bs)
    if progress:
        from tqdm.auto import tqdm

        rng = tqdm(rng, desc=desc, unit="batch", dynamic_ncols=True)
    for b, start in enumerate(rng):
        rows = np.arange(start, min(start + bs, n))
        take = np.concatenate([rows, np.full(bs - len(rows), rows[-1])])
        s = sampling.sample(cfg, params, jnp.asarray(ids[take]), jnp.asarray(mask[take]),
                            jax.random.fold_in(key, b), jnp.asarray(mins[take]), temp, **kw)
        toks, m = jax.device_get((s.tokens, s.mask))
        # Decoded exactly as in training (rajax.train.decode_responses), so rewards are comparable.
        responses += tasks.decode_all(tokenizer, [toks[j][m[j] > 0] for j in range(len(rows))], clean_up=clean_up)
        tok_rows.append(toks[:len(rows)])
        mask_rows.append(m[:len(rows)])
    if return_tokens:
        return responses, np.concatenate(tok_rows), np.concatenate(mask_rows)
    return responses


@functools.partial(jax.jit, static_argnames=("cfg",))
def _kl_sums(cfg, params, ref_params, ids, mask, toks, rmask):
    from rajax import ppo

    seq = jnp.concatenate([ids, toks], axis=1)
    attn = jnp.concatenate([mask, rmask], axis=1)
    logp, _, ref_logp = ppo.forward_pair(cfg, params, ref_params, seq, attn, prompt_width=ids.shape[1])
    return ((logp - ref_logp) * rmask).sum(-1)


def kl_sums(cfg, params, ref_params, prompt_ids, prompt_mask, tokens, response_mask, *, batch_size: int):
    """Σ_t (log π − log π_ref) over each response's tokens (the KL part of R̄, spec §4.1)."""
    n = len(tokens)
    bs = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, bs):
        rows = np.arange(start, min(start + bs, n))
        take = np.concatenate([rows, np.full(bs - len(rows), rows[-1])])  # one shape, one compile
        out.append(np.asarray(_kl_sums(cfg, params, ref_params, prompt_ids[take], prompt_mask[take],
                                       tokens[take], response_mask[take]))[:len(rows)])
    return np.concatenate(out).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# Figures and report
# ----------------------------------------------------------------------------------------------


def _class_names(task: str, labels) -> dict:
    vals = sorted({int(v) for v in labels})
    if task == "imdb":
        names = {0: "Negative", 1: "Positive"}
    else:
        names = {0: "Non toxic", 1: "Toxic"}
    return {v: names.get(v, f"label {v}") for v in vals}


def plot_histograms(path: str, columns: Mapping[str, np.ndarray], labels, *, task: str = "", bins: int = 30):
    """One panel per column (prompt score, then each policy), one 30-bin histogram per class."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(columns)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), squeeze=False)
    have_labels = labels is not None and len(labels) and not np.all(np.isnan(np.asarray(labels, float)))
    for ax, (name, vals) in zip(axes[0], columns.items()):
        vals = np.asarray(vals, np.float64)
        if have_labels:
            lab = np.asarray(labels, float)
            for v, cname in _class_names(task, lab[~np.isnan(lab)]).items():
                sel = lab == v
                if sel.any():
                    ax.hist(vals[sel], bins=bins, alpha=0.6, label=cname)
            ax.legend(fontsize=8)
        else:
            ax.hist(vals, bins=bins, alpha=0.8)
        ax.set_title(name)
        ax.set_xlabel("reward")
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quantiles(path: str, prompt_scores, rewards: Mapping[str, np.ndarray], *,
                   ylabel: str = "mean reward over the lower quantile"):
    """Reward vs prompt-score quantile: the cumulative lower-tail mean, one line per policy."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    qs = np.arange(1, 101)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in rewards.items():
        ax.plot(qs, quantile_curve(prompt_scores, r, qs), label=name)
    ax.set_xlabel("quantile of prompt score (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def metrics_table(metrics: dict) -> str:
    """Markdown table: one row per policy (reward, tail, CVaRs, perplexity, extra scorers)."""
    pols = metrics["policies"]
    alphas = metrics["cvar_alphas"]
    extras = sorted({k for m in pols.values() for k in m.get("extra", {})})
    head = ["policy", "reward", "tail", *[f"CVaR@{a:g}" for a in alphas], "R̄", "perplexity", *extras]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, m in pols.items():
        row = [name, _fmt(m["reward"]), _fmt(m["tail"]), *[_fmt(m["cvar"][f"{a:g}"]) for a in alphas],
               _fmt(m.get("return")), _fmt(m["perplexity"]), *[_fmt(m.get("extra", {}).get(e)) for e in extras]]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The full evaluation
# ----------------------------------------------------------------------------------------------


def _load_policy(spec, name: str, dtype: str | None = None):
    if isinstance(spec, (str, os.PathLike)):
        from rajax.models import hf

        return hf.load(str(spec), dtype=dtype or "float32", what=f"--policy {name}")
    if isinstance(spec, tuple) and len(spec) == 2:
        mcfg, params = spec
        return (mcfg.replace(dtype=dtype) if dtype else mcfg), params
    raise ValueError(f"policy {name}: expected a path/hub id or a (GPT2Config, params) tuple, "
                     f"got {type(spec).__name__}")


def _subset(prompt_set, n: int | None):
    """The first ``n`` prompts (``eval.test_size``) of a PromptSet that is longer than that."""
    if n is None or len(_prompt_texts(prompt_set)) <= n:
        return prompt_set
    if hasattr(prompt_set, "select"):
        return prompt_set.select(range(n))
    if isinstance(prompt_set, Mapping):
        return {k: (v[:n] if v is not None and not isinstance(v, (str, int, float)) else v)
                for k, v in prompt_set.items()}
    raise ValueError(f"cannot take the first {n} rows of a {type(prompt_set).__name__}")


def _prompt_texts(prompt_set) -> list[str]:
    for name in ("texts", "prompts"):
        v = _get(prompt_set, name)
        if v is not None:
            return list(v)
    raise ValueError("the prompt set has no decoded prompt strings (field 'texts')")


def _jsonable(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def build_reward(rc):
    """The reward of a config's ``reward`` section (the kind's label and sign unless overridden)."""
    from rajax.train import build_reward as _build

    return _build(rc)


def evaluate(cfg, policies: Mapping[str, Any], out_dir: str, *, reward=None, tokenizer=None, task_data=None,
             extra_scorers: Mapping[str, Callable[[list[str]], np.ndarray]] | None = None,
             key: jax.Array | None = None, progress: bool = True, ref: str | None = None) -> dict:
    """Evaluate ``policies`` (name -> path/hub id or ``(GPT2Config, params)``) on the task's test set.

    ``cfg`` is a ``rajax.config.Config`` (its ``generation``, ``eval``, ``reward``, ``model``, ``data``
    sections are used). ``reward`` (an object with ``score_texts`` and ``__call__(prompts,
    responses)``), ``tokenizer`` and ``task_data`` are built from ``cfg`` when not given.
    ``extra_scorers`` map a name to a function of the ``prompt + response`` texts.
    ``ref`` names the policy that is the KL reference of R̄ (default: the first one, e.g. the SFT /
    starting policy): R̄ = reward − β·Σ_t (log π − log π_ref) with β = ``kl.init_coef`` (0.2, spec §4.1).
    Writes ``generations.csv``, ``metrics.json``, ``metrics.md``, ``hist.png``, ``quantile.png`` and
    ``report.md`` into ``out_dir`` and returns the metrics dict.
    """
    import pandas as pd

    if not policies:
        raise ValueError("no policy to evaluate: give at least one NAME=PATH")
    bad = [n for n in policies if not n or any(c in n for c in ",/ \t")]
    if bad:
        raise ValueError(f"policy names must be non-empty without ',', '/' or spaces: {bad}")
    if cfg.data.source == "synthetic" or "synthetic" in (cfg.model.policy, cfg.model.tokenizer, cfg.reward.model):
        from rajax import synthetic

        cfg = synthetic.resolve(cfg, progress=progress)
        # "synthetic" as a policy path means the task's prepared (pretrained) policy.
        policies = {k: (cfg.model.policy if v == "synthetic" else v) for k, v in policies.items()}
    ev = cfg.eval
    if tokenizer is None:
        from rajax.tokenizer import load_tokenizer

        first_name, first = next(iter(policies.items()))
        if cfg.model.tokenizer:
            tok_src, what = cfg.model.tokenizer, "--tokenizer"
        elif isinstance(first, (str, os.PathLike)):
            tok_src, what = str(first), f"--policy {first_name} (its tokenizer; or pass --tokenizer)"
        else:
            tok_src, what = cfg.model.policy, "model.policy (its tokenizer; or pass --tokenizer)"
        tokenizer = load_tokenizer(tok_src, padding_side="left", what=what)
    if task_data is None:
        from rajax import tasks

        task_data = tasks.load_task_data(cfg, tokenizer, require=("test",))
    if task_data.test is None:
        raise ValueError(f"task {cfg.task!r} has no test prompts; pass --test-path FILE")
    if reward is None:
        reward = build_reward(cfg.reward)
    key = jax.random.key(cfg.train.seed) if key is None else key
    extra_scorers = dict(extra_scorers or {})
    os.makedirs(out_dir, exist_ok=True)

    test = _subset(task_data.test, ev.test_size)
    prompts = _prompt_texts(test)
    n = len(prompts)
    if n == 0:
        raise ValueError("the test set is empty")
    labels = _get(test, "labels")
    t0 = time.time()
    prompt_scores = np.asarray(reward.score_texts(prompts), np.float64)
    table = {"prompt": prompts, "prompt_score": prompt_scores}
    if labels is not None:
        table["label"] = list(labels)
    # load_task_data already cut these to eval.ppl_num_texts / ppl_max_chars; cut again for
    # task data built elsewhere.
    ppl_texts = list(task_data.ppl_texts or [])[: ev.ppl_num_texts]

    ref = next(iter(policies)) if ref is None else ref
    if ref not in policies:
        raise ValueError(f"the KL reference {ref!r} is not one of the evaluated policies {list(policies)}")
    ref_cfg, ref_params = _load_policy(policies[ref], ref, cfg.model.dtype)
    ref_params = jax.tree.map(jnp.asarray, ref_params)
    beta = float(cfg.kl.init_coef)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    prompt_ids, prompt_mask = prompt_arrays(test, pad)
    per_policy: dict[str, dict] = {}
    rewards_by: dict[str, np.ndarray] = {}
    returns_by: dict[str, np.ndarray] = {}
    for i, (name, spec) in enumerate(policies.items()):
        mcfg, params = (ref_cfg, ref_params) if name == ref else _load_policy(spec, name, cfg.model.dtype)
        params = jax.tree.map(jnp.asarray, params)
        resp, toks, rmask = generate(
            mcfg, params, tokenizer, test, gen_cfg=cfg.generation, batch_size=ev.batch_size,
            key=jax.random.fold_in(key, i), progress=progress, desc=f"generate {name}",
            clean_up=bool(getattr(cfg.reward, "clean_up_spaces", False)), return_tokens=True)
        r = np.asarray(reward(prompts, resp), np.float64)
        rewards_by[name] = r
        table[f"response_{name}"] = resp
        table[f"reward_{name}"] = r
        r_bar = r - beta * kl_sums(mcfg, params, ref_params, prompt_ids, prompt_mask, toks, rmask,
                                   batch_size=ev.batch_size)
        returns_by[name] = r_bar
        table[f"R_bar_{name}"] = r_bar
        m = {
            "reward": float(r.mean()),
            "return": float(r_bar.mean()),
            "tail": tail_mean(r, prompt_scores, ev.tail_threshold, ev.tail_inclusive),
            "cvar": {f"{a:g}": cvar(r, a) for a in ev.cvar_alphas},
            "perplexity": float("nan"),
            "extra": {},
        }
        if ppl_texts:
            # Full-vocabulary logits of [batch, ~256 tokens] cost ~50 MB per row for GPT-2, so the
            # perplexity batch is capped (the paper used 8-16; the batch size does not change the values).
            ppl = perplexities(mcfg, params, tokenizer, ppl_texts, batch_size=min(ev.batch_size, PPL_MAX_BATCH),
                               max_chars=ev.ppl_max_chars)
            m["perplexity"] = float(np.nanmean(ppl)) if np.isfinite(ppl).any() else float("nan")
        full = [p + q for p, q in zip(prompts, resp)]
        for ename, fn in extra_scorers.items():
            v = np.asarray(fn(full), np.float64)
            table[f"{ename}_{name}"] = v
            m["extra"][ename] = float(np.mean(v))
        per_policy[name] = m

    tail_sel = prompt_scores <= ev.tail_threshold if ev.tail_inclusive else prompt_scores < ev.tail_threshold
    metrics = {
        "task": cfg.task,
        "n_test": n,
        "n_tail": int(tail_sel.sum()),
        "tail_threshold": ev.tail_threshold,
        "tail_inclusive": bool(ev.tail_inclusive),
        "cvar_alphas": [float(a) for a in ev.cvar_alphas],
        "n_ppl_texts": len(ppl_texts),
        "kl_reference": ref,
        "kl_beta": beta,
        "prompt_score": {"mean": float(prompt_scores.mean()),
                         "tail": float(prompt_scores[tail_sel].mean()) if tail_sel.any() else float("nan")},
        "policies": per_policy,
        "seconds": round(time.time() - t0, 1),
    }

    import csv

    # Quote every string: generations can hold "\r" and other line breaks that minimal quoting
    # leaves bare (pandas only quotes the line terminator "\n"), which would split rows on reading.
    pd.DataFrame(table).to_csv(os.path.join(out_dir, "generations.csv"), index=False,
                               quoting=csv.QUOTE_NONNUMERIC)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(_jsonable(metrics), f, indent=2)
    md = metrics_table(metrics)
    with open(os.path.join(out_dir, "metrics.md"), "w") as f:
        f.write(md + "\n")
    hist_cols = {"prompt score": prompt_scores, **rewards_by}
    lab_arr = None
    if labels is not None:
        lab_arr = np.array([np.nan if v is None else float(v) for v in labels])
    plot_histograms(os.path.join(out_dir, "hist.png"), hist_cols, lab_arr, task=cfg.task)
    plot_quantiles(os.path.join(out_dir, "quantile.png"), prompt_scores, rewards_by)
    plot_quantiles(os.path.join(out_dir, "quantile_returns.png"), prompt_scores, returns_by,
                   ylabel="mean KL-penalised return R̄ over the lower quantile")
    cmp = "<=" if ev.tail_inclusive else "<"
    report = [
        f"# Evaluation: {cfg.task}",
        "",
        f"{n} test prompts, one sampled continuation per prompt and policy "
        f"(max {_gen_field(cfg.generation, 'max_new_tokens', 32)} new tokens). Tail = prompts with prompt "
        f"score {cmp} {ev.tail_threshold:g} ({metrics['n_tail']} prompts). CVaR@a = mean of the lowest "
        f"ceil(a*N) rewards. Perplexity = mean per-text perplexity on {len(ppl_texts)} texts "
        f"(BOS prepended, first {ev.ppl_max_chars} characters).",
        "",
        f"Prompt score: mean {_fmt(metrics['prompt_score']['mean'])}, tail {_fmt(metrics['prompt_score']['tail'])}.",
        "",
        md,
        "",
        "## Reward distributions per class",
        "",
        "![histograms](hist.png)",
        "",
        "## Reward vs prompt-score quantile (cumulative lower-tail mean)",
        "",
        "![quantile](quantile.png)",
        "",
        f"## KL-penalised return R̄ vs prompt-score quantile (β = {beta:g}, reference: {ref})",
        "",
        "![quantile of returns](quantile_returns.png)",
        "",
        "Generations: `generations.csv`.",
        "",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(report))
    return metrics


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def parse_policy(spec: str) -> tuple[str, str]:
    """``NAME=PATH`` (or a bare PATH, named after its last path component)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
    else:
        path = spec
        name = os.path.basename(os.path.normpath(spec)) or spec
    name, path = name.strip(), path.strip()
    if not name or not path:
        raise ValueError(f"--policy expects NAME=PATH, got {spec!r}")
    return name, path


def _parser():
    p = argparse.ArgumentParser(prog="bin/evaluate", description="Evaluate policies as in the paper: "
                                "rewards, tail, CVaR, perplexity, figures and a report.")
    p.add_argument("--task", required=True, help="imdb | jigsaw | rtp | synthetic, or a config YAML")
    p.add_argument("--policy", action="append", required=True, metavar="NAME=PATH",
                   help="a policy to evaluate (repeatable), e.g. --policy sft=runs/sft --policy ra=runs/ra/final")
    p.add_argument("--reward-model", default=None, help="reward classifier dir or hub id (sets reward.model)")
    p.add_argument("--data", default=None, help="local data file/dir (sets data.path)")
    p.add_argument("--test-path", default=None, help="local test file (sets data.test_path)")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir or hub id (sets model.tokenizer)")
    p.add_argument("--test-size", type=int, default=None, help="use the first N test prompts (sets eval.test_size)")
    p.add_argument("--out", default=None, help="output dir (default: runs/eval-<task>)")
    p.add_argument("--config", default=None, help="a user YAML applied over the task preset")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: train.seed)")
    p.add_argument("--ref", default=None, metavar="NAME",
                   help="the policy that is the KL reference of R̄ (default: the first --policy)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        from rajax import config as rconfig

        ovr = []
        for flag, k in (("reward_model", "reward.model"), ("data", "data.path"), ("test_path", "data.test_path"),
                        ("tokenizer", "model.tokenizer"), ("test_size", "eval.test_size")):
            v = getattr(args, flag)
            if v is not None:
                ovr.append(f"{k}={v}")
        ovr += list(args.set)
        cfg = rconfig.load_config(args.task, args.config, ovr)
        policies = dict(parse_policy(s) for s in args.policy)
        if len(policies) != len(args.policy):
            raise ValueError("two --policy entries have the same NAME")
        extra = None
        if cfg.data.source == "synthetic":
            from rajax import synthetic

            # The synthetic world's own scoring rule, beside the learned reward (reward hacking check).
            extra = {"ground_truth": synthetic.ground_truth_score}
        out = args.out or f"runs/eval-{cfg.task}"
        key = None if args.seed is None else jax.random.key(args.seed)
        m = evaluate(cfg, policies, out, key=key, extra_scorers=extra, progress=not args.no_progress,
                     ref=args.ref)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(metrics_table(m))
    print(f"wrote {out}/report.md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
