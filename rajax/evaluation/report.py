"""The evaluation's outputs: the paper's figures (Figs. 1-2), the metrics table and the written files.

* ``plot_histograms``: per-class reward histograms (prompt score and each policy, 30 bins per class);
* ``plot_quantiles``: the "reward vs quantile" curve (cumulative lower-tail mean), one line per policy;
* ``metrics_table``: the Markdown table of ``metrics.md`` and the console;
* ``write``: ``generations.csv``, ``metrics.json``, ``metrics.md``, the figures and ``report.md``.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping

import numpy as np

from rajax.evaluation.metrics import quantile_curve

FILES = ("generations.csv", "metrics.json", "metrics.md", "hist.png", "quantile.png", "quantile_returns.png",
         "report.md")  # what ``write`` writes


def plot_histograms(path: str, columns: Mapping[str, np.ndarray], labels, *, class_names: Mapping | None = None,
                    bins: int = 30):
    """One panel per column (prompt score, then each policy), one 30-bin histogram per class
    (``class_names``: label -> legend name; the task's, e.g. IMDB's Negative/Positive)."""
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    k = len(columns)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.4), squeeze=False)
    have_labels = labels is not None and len(labels) and not np.all(np.isnan(np.asarray(labels, float)))
    for ax, (name, vals) in zip(axes[0], columns.items()):
        vals = np.asarray(vals, np.float64)
        if have_labels:
            lab = np.asarray(labels, float)
            names = dict(class_names or {})
            for v in sorted({int(x) for x in lab[~np.isnan(lab)]}):
                cname = names.get(v, f"label {v}")
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
    import matplotlib  # heavy: imported only when a figure is drawn

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
    plot_histograms(os.path.join(out_dir, "hist.png"), {"prompt score": prompt_scores, **rewards_by}, lab_arr,
                    class_names=class_names)
    plot_quantiles(os.path.join(out_dir, "quantile.png"), prompt_scores, rewards_by)
    plot_quantiles(os.path.join(out_dir, "quantile_returns.png"), prompt_scores, returns_by,
                   ylabel="mean KL-penalised return R̄ over the lower quantile")
    cmp = "<=" if metrics["tail_inclusive"] else "<"
    report = [
        f"# Evaluation: {metrics['task']}",
        "",
        f"{metrics['n_test']} test prompts, one sampled continuation per prompt and policy "
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
        "## Reward vs prompt-score quantile (cumulative lower-tail mean)",
        "",
        "![quantile](quantile.png)",
        "",
        f"## KL-penalised return R̄ vs prompt-score quantile (β = {metrics['kl_beta']:g}, "
        f"reference: {metrics['kl_reference']})",
        "",
        "![quantile of returns](quantile_returns.png)",
        "",
        "Generations: `generations.csv`.",
        "",
    ]
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write("\n".join(report))
