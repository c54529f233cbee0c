"""The whole evaluation of docs/paper.md §4: every policy on the task's test prompts, then the files.

Every policy continues every test prompt once (the training sampler and settings, quirk #12's
minimum length); responses are scored by the reward model on ``prompt + response``, and the prompt
score is the reward model on the prompt alone. Per policy: mean reward, tail, CVaR at each
``eval.cvar_alphas``, the KL-penalised return R̄, perplexity, and the task's extra scores.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rajax import rewards, tasks
from rajax.core import parallel
from rajax.core.errors import InvalidInput, NonFinite
from rajax.evaluation import report
from rajax.evaluation.generation import _get, generate, kl_sums, prompt_arrays
from rajax.evaluation.metrics import cvar, tail_mean
from rajax.evaluation.perplexity import PPL_MAX_BATCH, perplexities
from rajax.io import export, hf
from rajax.io.tokenizer import check_fits, load_tokenizer


def _load_policy(spec, name: str, dtype: str | None = None):
    if isinstance(spec, (str, os.PathLike)) and export.is_checkpoint(spec):
        # A damaged newest step falls back to the newest readable one, as --resume does, and says so.
        mcfg, params = export.policy_from_checkpoint(spec, what=f"--policy {name}",
                                                     log=lambda m: print(f"note: {m}", file=sys.stderr, flush=True))
        mcfg = mcfg.replace(dtype=dtype) if dtype else mcfg
    elif isinstance(spec, (str, os.PathLike)):
        mcfg, params = hf.load(str(spec), dtype=dtype or "float32", what=f"--policy {name}")
    elif isinstance(spec, tuple) and len(spec) == 2:
        mcfg, params = spec
        mcfg = mcfg.replace(dtype=dtype) if dtype else mcfg
    else:
        raise InvalidInput(f"policy {name}: expected a path/hub id or a (model config, params) tuple, "
                           f"got {type(spec).__name__}")
    if not bool(parallel.all_finite(params)):
        where = f" ({spec})" if isinstance(spec, (str, os.PathLike)) else ""
        raise NonFinite(f"policy {name!r}{where} has non-finite parameters; nothing to evaluate")
    return mcfg, params


def _subset(prompt_set, n: int | None):
    """The first ``n`` prompts (``eval.test_size``) of a PromptSet that is longer than that."""
    if n is None or len(_prompt_texts(prompt_set)) <= n:
        return prompt_set
    if hasattr(prompt_set, "select"):
        return prompt_set.select(range(n))
    if isinstance(prompt_set, Mapping):
        return {k: (v[:n] if v is not None and not isinstance(v, (str, int, float)) else v)
                for k, v in prompt_set.items()}
    raise InvalidInput(f"cannot take the first {n} rows of a {type(prompt_set).__name__}")


def _repeat(prompt_set, k: int):
    """Each prompt ``k`` times in a row (``eval.samples_per_prompt``): rows i*k .. i*k+k-1 are prompt i."""
    if k == 1:
        return prompt_set
    n = len(_prompt_texts(prompt_set))
    idx = np.repeat(np.arange(n), k)
    if hasattr(prompt_set, "select"):
        return prompt_set.select(idx)
    if isinstance(prompt_set, Mapping):
        return {key: ([v[i] for i in idx] if isinstance(v, list) else np.asarray(v)[idx])
                if v is not None and not isinstance(v, (str, int, float)) else v for key, v in prompt_set.items()}
    raise InvalidInput(f"cannot repeat the rows of a {type(prompt_set).__name__}")


def _prompt_texts(prompt_set) -> list[str]:
    for name in ("texts", "prompts"):
        v = _get(prompt_set, name)
        if v is not None:
            return list(v)
    raise InvalidInput("the prompt set has no decoded prompt strings (field 'texts')")


def check_finite(metrics: dict, *, where=None) -> None:
    """``NonFinite`` naming the first reported metric that is not a finite number, and its policy.

    JSON written by ``report.write`` holds ``null`` where a value was NaN; both count as non-finite.
    """
    for name, m in metrics["policies"].items():
        flat = {"reward": m["reward"], "return": m.get("return"), "tail": m["tail"],
                **{f"cvar@{a}": v for a, v in m["cvar"].items()}, "perplexity": m["perplexity"],
                **dict(m.get("extra", {}))}
        for metric, v in flat.items():
            if v is None or not np.isfinite(v):
                hint = ""
                if metric == "tail" and metrics.get("n_tail") == 0:
                    hint = (f": no test prompt has a prompt score {'<=' if metrics['tail_inclusive'] else '<'} "
                            f"{metrics['tail_threshold']:g} (eval.tail_threshold)")
                elif metric == "perplexity":
                    hint = ": the policy assigns some perplexity text zero probability (or there are none)"
                at = f" (the files are in {where})" if where is not None else ""
                raise NonFinite(f"the {metric} of policy {name!r} is {v if v is not None else 'nan'}{hint}{at}")


def evaluate(cfg, policies: Mapping[str, Any], out_dir: str, *, reward=None, tokenizer=None, task_data=None,
             extra_scorers: Mapping[str, Callable[[list[str]], np.ndarray]] | None = None,
             key: jax.Array | None = None, progress: bool = True, ref: str | None = None,
             check_finite: bool = True) -> dict:
    """Evaluate ``policies`` (name -> path/hub id or ``(model config, params)``) on the task's test set.

    ``cfg`` is a ``rajax.config.Config`` (its ``generation``, ``eval``, ``reward``, ``model``, ``data``
    sections are used). ``reward`` (an object with ``score_texts`` and ``__call__(prompts,
    responses)``), ``tokenizer`` and ``task_data`` are built from ``cfg`` when not given.
    ``extra_scorers`` map a name to a function of the ``prompt + response`` texts (default: the
    task's, e.g. the offline world's ground truth). A policy given as the config's own (unresolved)
    ``model.policy`` value means the task's starting policy.
    ``ref`` names the policy that is the KL reference of R̄ (default: the first one, e.g. the SFT /
    starting policy): R̄ = reward − β·Σ_t (log π − log π_ref) with β = ``kl.init_coef`` (0.2, §4.1).
    Writes ``generations.csv``, ``metrics.json``, ``metrics.md``, ``hist.png``, ``quantile.png`` (each figure also as PDF),
    ``quantile_returns.png`` and ``report.md`` into ``out_dir`` and returns the metrics dict. With
    ``check_finite`` a non-finite metric then raises ``NonFinite`` (the files stay for inspection).
    """
    if not policies:
        raise InvalidInput("no policy to evaluate: give at least one NAME=PATH")
    bad = [n for n in policies if not n or any(c in n for c in ",/ \t")]
    if bad:
        raise InvalidInput(f"policy names must be non-empty without ',', '/' or spaces: {bad}")
    given_policy = cfg.model.policy
    cfg, task = tasks.prepare(cfg, require=("test",), progress=progress, check_hub=False)
    policies = {k: (cfg.model.policy if isinstance(v, str) and v == given_policy else v) for k, v in policies.items()}
    ev = cfg.eval
    if tokenizer is None:
        first_name, first = next(iter(policies.items()))
        if cfg.model.tokenizer:
            tok_src, what = cfg.model.tokenizer, "--tokenizer"
        elif isinstance(first, (str, os.PathLike)):
            tok_src = export.tokenizer_source(first) if export.is_checkpoint(first) else str(first)
            what = f"--policy {first_name}"
        else:
            tok_src, what = cfg.model.policy, "model.policy (its tokenizer; or pass --tokenizer)"
        tokenizer = load_tokenizer(tok_src, padding_side="left", what=what)
    else:
        tok_src, what = "(given)", "tokenizer"
    # Refuse before any work: the reference policy must load, be finite and fit the tokenizer.
    ref = next(iter(policies)) if ref is None else ref
    if ref not in policies:
        raise InvalidInput(f"the KL reference {ref!r} is not one of the evaluated policies {list(policies)}")
    ref_cfg, ref_params = _load_policy(policies[ref], ref, cfg.model.dtype)
    ref_params = jax.tree.map(jnp.asarray, ref_params)
    ref_name = policies[ref] if isinstance(policies[ref], (str, os.PathLike)) else f"({ref})"
    check_fits(tokenizer, ref_cfg.vocab_size, tokenizer_name=tok_src, model_name=ref_name, tokenizer_flag=what,
               model_flag=f"policy {ref!r}")
    if not ev.ppl_num_texts and ev.ppl_num_texts is not None:
        raise InvalidInput("eval.ppl_num_texts=0 leaves no perplexity texts; set it to at least 1 (or null for all)")
    if task_data is None:
        task_data = task.load(cfg, tokenizer, require=("test",))
    if task_data.test is None:
        raise InvalidInput(f"task {cfg.task!r} has no test prompts; pass --test-path FILE")
    if reward is None:
        reward = rewards.from_config(cfg.reward)
    key = jax.random.key(cfg.train.seed) if key is None else key
    extra_scorers = dict(task.extra_scorers(cfg) if extra_scorers is None else extra_scorers)
    os.makedirs(out_dir, exist_ok=True)

    test = _subset(task_data.test, ev.test_size)
    prompts = _prompt_texts(test)
    n = len(prompts)
    if n == 0:
        raise InvalidInput("the test set is empty")
    labels = _get(test, "labels")
    t0 = time.time()
    prompt_scores = np.asarray(reward.score_texts(prompts), np.float64)
    tail_sel = prompt_scores <= ev.tail_threshold if ev.tail_inclusive else prompt_scores < ev.tail_threshold
    k = ev.samples_per_prompt
    if k > 1:  # every prompt k times in a row; each row samples its own continuation
        test, prompts = _repeat(test, k), [p for p in prompts for _ in range(k)]
        prompt_scores = np.repeat(prompt_scores, k)
        labels = None if labels is None else np.repeat(np.asarray(labels), k)
    table = {"prompt": prompts, "prompt_score": prompt_scores}
    if k > 1:
        table["sample"] = np.tile(np.arange(k), n)
    if labels is not None:
        table["label"] = list(labels)
    # The task loader already cut these to eval.ppl_num_texts / ppl_max_chars; cut again for
    # task data built elsewhere.
    ppl_texts = list(task_data.ppl_texts or [])[: ev.ppl_num_texts]

    beta = float(cfg.kl.init_coef)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InvalidInput("the tokenizer has no EOS token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    settings = cfg.generation.sample_settings(eos, pad)
    prompt_ids, prompt_mask = prompt_arrays(test, pad)
    per_policy: dict[str, dict] = {}
    rewards_by: dict[str, np.ndarray] = {}
    returns_by: dict[str, np.ndarray] = {}
    for i, (name, spec) in enumerate(policies.items()):
        mcfg, params = (ref_cfg, ref_params) if name == ref else _load_policy(spec, name, cfg.model.dtype)
        check_fits(tokenizer, mcfg.vocab_size, tokenizer_name=tok_src, model_name=str(spec)
                   if isinstance(spec, (str, os.PathLike)) else f"({name})", tokenizer_flag=what,
                   model_flag=f"policy {name!r}")
        params = jax.tree.map(jnp.asarray, params)
        resp, toks, rmask = generate(
            mcfg, params, tokenizer, test, settings=settings, batch_size=ev.batch_size,
            key=jax.random.fold_in(key, i), progress=progress, desc=f"generate {name}",
            clean_up=bool(getattr(cfg.reward, "clean_up_spaces", False)), return_tokens=True)
        r = np.asarray(reward(prompts, resp), np.float64)
        rewards_by[name] = r
        table[f"response_{name}"] = resp
        table[f"reward_{name}"] = r
        if int(toks[rmask > 0].max(initial=0)) >= ref_cfg.vocab_size:  # e.g. GPT-J's 50,400 rows over GPT-2's
            raise InvalidInput(f"policy {name!r} sampled token id {int(toks[rmask > 0].max())}, beyond the KL "
                               f"reference {ref!r}'s {ref_cfg.vocab_size} rows; evaluate with a reference of "
                               "the same vocabulary (--ref NAME)")
        r_bar = r - beta * kl_sums(mcfg, params, ref_params, prompt_ids, prompt_mask, toks, rmask,
                                   batch_size=ev.batch_size, reference=None if mcfg == ref_cfg else ref_cfg)
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
            # The batch size does not change the values (the paper used 8-16); it is capped for memory.
            ppl = perplexities(mcfg, params, tokenizer, ppl_texts, batch_size=min(ev.batch_size, PPL_MAX_BATCH),
                               max_chars=ev.ppl_max_chars)
            m["perplexity"] = float(np.nanmean(ppl)) if np.isfinite(ppl).any() else float("nan")
        full = [p + q for p, q in zip(prompts, resp)]
        for ename, fn in extra_scorers.items():
            v = np.asarray(fn(full), np.float64)
            table[f"{ename}_{name}"] = v
            m["extra"][ename] = float(np.mean(v))
            m.setdefault("extra_tail", {})[ename] = tail_mean(v, prompt_scores, ev.tail_threshold, ev.tail_inclusive)
            m.setdefault("extra_cvar", {})[ename] = {f"{a:g}": cvar(v, a) for a in ev.cvar_alphas}
        per_policy[name] = m

    metrics = {
        "task": cfg.task,
        "n_test": n,
        "samples_per_prompt": k,
        "n_tail": int(tail_sel.sum()),
        "tail_threshold": ev.tail_threshold,
        "tail_inclusive": bool(ev.tail_inclusive),
        "cvar_alphas": [float(a) for a in ev.cvar_alphas],
        "n_ppl_texts": len(ppl_texts),
        "kl_reference": ref,
        "kl_beta": beta,
        "prompt_score": {"mean": float(prompt_scores[::k].mean()),
                         "tail": float(prompt_scores[::k][tail_sel].mean()) if tail_sel.any() else float("nan")},
        "policies": per_policy,
        "seconds": round(time.time() - t0, 1),
    }
    report.write(out_dir, metrics, table, prompt_scores=prompt_scores, rewards_by=rewards_by,
                 returns_by=returns_by, labels=labels, class_names=task.class_names,
                 max_new_tokens=cfg.generation.max_new_tokens, ppl_max_chars=ev.ppl_max_chars)
    if check_finite:
        _check_finite(metrics, where=out_dir)
    return metrics


_check_finite = check_finite
