"""The evaluation's outputs: the paper's figures (Figs. 1-2), the metrics table and the written files.

* ``plot_histograms``: per-class reward histograms (prompt score and each policy) on one set of bins
  and shared axes, each prompt counted once;
* ``plot_quantiles``: the "reward vs quantile" curve (cumulative lower-tail mean), one line per policy,
  with a bootstrap band over prompts (``quantile_band``);
* ``metrics_table``: the Markdown table of ``metrics.md`` and the console;
* ``write``: ``generations.csv``, ``metrics.json``, ``metrics.md``, the figures (PNG, and PDF for a
  paper) and ``report.md``.

With ``k`` samples per prompt (``eval.samples_per_prompt``) the rows come prompt by prompt, ``k`` in a
row (``rajax.evaluation.run``): row ``i`` belongs to prompt ``i // k``.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections.abc import Mapping

import numpy as np

from rajax.evaluation.metrics import quantile_curve

FIGURES = ("hist", "quantile", "quantile_returns")
# What ``write`` writes: each figure as PNG (the report shows it) and PDF (vector, for a paper).
FILES = ("generations.csv", "metrics.json", "metrics.md", *(f"{f}.{e}" for f in FIGURES for e in ("png", "pdf")),
         "report.md")
BOOTSTRAP = 1000  # resamples of the test prompts behind each band
BAND = 0.95


def _pyplot():
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> None:
    """``path`` (PNG) and its vector twin (``.pdf``) from the same figure."""
    fig.savefig(path, dpi=150)
    fig.savefig(os.path.splitext(path)[0] + ".pdf")


def shared_bins(columns: Mapping[str, np.ndarray], bins: int = 30) -> np.ndarray:
    """One set of ``bins`` bin edges over every finite value of every column: classes and panels are
    then comparable bar for bar (each class drawn on its own range is not)."""
    vals = np.concatenate([np.asarray(v, np.float64).ravel() for v in columns.values()])
    vals = vals[np.isfinite(vals)]
    lo, hi = (float(vals.min()), float(vals.max())) if len(vals) else (0.0, 1.0)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def plot_histograms(path: str, columns: Mapping[str, np.ndarray], labels, *, class_names: Mapping | None = None,
                    bins: int = 30, samples_per_prompt: int = 1, prompt_columns=("prompt score",)):
    """One panel per column (prompt score, then each policy), one histogram per class
    (``class_names``: label -> legend name; the task's, e.g. IMDB's Negative/Positive).

    All panels and classes share the bins and both axes. The y axis counts prompts: a column in
    ``prompt_columns`` repeats each prompt's value ``samples_per_prompt`` times, so one of them is
    kept; a policy's ``k`` samples of a prompt weigh 1/k each, so every panel sums to the prompts.
    """
    plt = _pyplot()
    k = int(samples_per_prompt)
    edges = shared_bins(columns, bins)
    n = len(columns)
    fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 3.2), squeeze=False, sharex=True, sharey=True)
    lab = None if labels is None or not len(labels) else np.asarray(labels, float)
    have_labels = lab is not None and not np.all(np.isnan(lab))
    names = dict(class_names or {})
    classes = sorted({int(x) for x in lab[~np.isnan(lab)]}) if have_labels else [None]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, vals) in zip(axes[0], columns.items()):
        vals = np.asarray(vals, np.float64)
        once = name in prompt_columns and k > 1
        w = np.ones_like(vals) if once else np.full_like(vals, 1.0 / k)
        rows = np.arange(len(vals)) % k == 0 if once else np.ones(len(vals), bool)
        for j, c in enumerate(classes):
            sel = rows & np.isfinite(vals) & (True if c is None else lab == c)
            if sel.any():
                ax.hist(vals[sel], bins=edges, weights=w[sel], alpha=0.55 if have_labels else 0.8,
                        color=colours[j % len(colours)], label=None if c is None else names.get(c, f"label {c}"))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("reward" if name not in prompt_columns else "prompt score")
        ax.grid(alpha=0.25)
    if have_labels:
        axes[0][0].legend(fontsize=8)
    axes[0][0].set_ylabel("prompts" if k == 1 else f"prompts ({k} samples, 1/{k} each)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def quantile_band(prompt_scores, rewards, qs=tuple(range(1, 101)), *, samples_per_prompt: int = 1,
                  n_boot: int = BOOTSTRAP, level: float = BAND, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A percentile bootstrap band (``level``) around ``quantile_curve``: the test prompts are
    resampled with replacement, each with all its ``samples_per_prompt`` samples, since the prompts are
    the independent draws (its samples share the prompt, so resampling them would understate the
    spread). Written here rather than with ``scipy.stats.bootstrap``: the statistic is a whole curve
    over groups of rows, which scipy's resampling of single observations does not express."""
    s = np.asarray(prompt_scores, np.float64)
    r = np.asarray(rewards, np.float64)
    k = int(samples_per_prompt)
    if len(s) % k:
        raise ValueError(f"{len(s)} rows are not {k} samples for each prompt")
    n = len(s) // k
    rng = np.random.default_rng(seed)
    curves = np.empty((n_boot, len(qs)))
    for b in range(n_boot):
        rows = (rng.integers(0, n, n)[:, None] * k + np.arange(k)).ravel()
        curves[b] = quantile_curve(s[rows], r[rows], qs)
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():  # a q that selects no row is NaN in every resample: NaN band there
        warnings.simplefilter("ignore", RuntimeWarning)
        lo, hi = np.nanpercentile(curves, [tail, 100 - tail], axis=0)
    return lo, hi


def plot_quantiles(path: str, prompt_scores, rewards: Mapping[str, np.ndarray], *,
                   ylabel: str = "mean reward,\nlower quantile", samples_per_prompt: int = 1,
                   n_boot: int = BOOTSTRAP):
    """Reward vs prompt-score quantile: the cumulative lower-tail mean, one line per policy, and its
    95% bootstrap band over prompts (``quantile_band``)."""
    plt = _pyplot()
    qs = np.arange(1, 101)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, r in rewards.items():
        line, = ax.plot(qs, quantile_curve(prompt_scores, r, qs), label=name)
        if n_boot:
            lo, hi = quantile_band(prompt_scores, r, qs, samples_per_prompt=samples_per_prompt, n_boot=n_boot)
            ax.fill_between(qs, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("quantile of prompt score (%)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(title=f"{BAND:.0%} bootstrap band over prompts" if n_boot else None, fontsize=8, title_fontsize=8)
    fig.tight_layout()
    _save(fig, path)
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


def _csv_cell(v):
    """A table value as the csv module writes it: NaN and None empty (as pandas wrote them), NumPy
    scalars as Python numbers (float32 by its shortest repr, 0.1 and not 0.10000000149011612)."""
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return ""
    if isinstance(v, np.floating) and not isinstance(v, np.float64):
        return float(str(v))
    return v.item() if isinstance(v, np.generic) else v


def write_csv(path: str, table: Mapping) -> None:
    """Columns (name -> equally long sequence) as a CSV file with a header row.

    The csv module, not pandas: this was rajax's one use of pandas, which made it a required dependency
    for a loop. Every string is quoted: generations can hold "\r" and other line breaks that minimal
    quoting leaves bare, which would split rows on reading."""
    cols = list(table)
    n = len(table[cols[0]]) if cols else 0
    with open(path, "w", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
        w.writerow(cols)
        for i in range(n):
            w.writerow([_csv_cell(table[c][i]) for c in cols])


def write(out_dir: str, metrics: dict, table: dict, *, prompt_scores, rewards_by: Mapping, returns_by: Mapping,
          labels=None, class_names: Mapping | None = None, max_new_tokens: int, ppl_max_chars) -> None:
    """Every file of an evaluation directory: the generations, the metrics, the figures, the report."""
    write_csv(os.path.join(out_dir, "generations.csv"), table)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(_jsonable(metrics), f, indent=2)
    md = metrics_table(metrics)
    with open(os.path.join(out_dir, "metrics.md"), "w") as f:
        f.write(md + "\n")
    lab_arr = None
    if labels is not None:
        lab_arr = np.array([np.nan if v is None else float(v) for v in labels])
    k = int(metrics.get("samples_per_prompt", 1))
    plot_histograms(os.path.join(out_dir, "hist.png"), {"prompt score": prompt_scores, **rewards_by}, lab_arr,
                    class_names=class_names, samples_per_prompt=k)
    plot_quantiles(os.path.join(out_dir, "quantile.png"), prompt_scores, rewards_by, samples_per_prompt=k)
    plot_quantiles(os.path.join(out_dir, "quantile_returns.png"), prompt_scores, returns_by, samples_per_prompt=k,
                   ylabel="mean KL-penalised return R̄,\nlower quantile")
    cmp = "<=" if metrics["tail_inclusive"] else "<"
    samples = "one sampled continuation" if k == 1 else f"{k} sampled continuations"
    band = (f"Shaded: {BAND:.0%} percentile bootstrap band, {BOOTSTRAP} resamples of the test prompts (each with "
            f"its {k} samples)." if k > 1 else f"Shaded: {BAND:.0%} percentile bootstrap band, {BOOTSTRAP} "
            "resamples of the test prompts.")
    report = [
        f"# Evaluation: {metrics['task']}",
        "",
        f"{metrics['n_test']} test prompts, {samples} per prompt and policy "
        f"(max {max_new_tokens} new tokens). Tail = prompts with prompt "
        f"score {cmp} {metrics['tail_threshold']:g} ({metrics['n_tail']} prompts). CVaR@a = mean of the lowest "
        f"ceil(a*N) rewards. Perplexity = mean per-text perplexity on {metrics['n_ppl_texts']} texts "
        f"(BOS prepended, first {ppl_max_chars} characters).",
        "",
        f"Prompt score: mean {_fmt(metrics['prompt_score']['mean'])}, tail {_fmt(metrics['prompt_score']['tail'])}.",
        "",
        md,
        "",
        "## Reward distributions per class",
        "",
        "![histograms](hist.png)",
        "",
        "One set of bins and shared axes for every panel; the y axis counts prompts"
        + (f" (a prompt's {k} samples weigh 1/{k} each)." if k > 1 else "."),
        "",
        "## Reward vs prompt-score quantile (cumulative lower-tail mean)",
        "",
        "![quantile](quantile.png)",
        "",
        band,
        "",
        f"## KL-penalised return R̄ vs prompt-score quantile (β = {metrics['kl_beta']:g}, "
        f"reference: {metrics['kl_reference']})",
        "",
        "![quantile of returns](quantile_returns.png)",
        "",
        "Generations: `generations.csv`. Each figure is also a vector PDF beside its PNG.",
        "",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(report))
