"""RLHF vs RA-RLHF over seeds, arms and ablations: the plan, the statistics, the tables and figures
of ``bin/study`` (docs/study.md has the protocol these implement).

* ``plan`` lists the runs: RLHF and RA-RLHF at each α, per seed, under the main settings and under
  each ablation (``ABLATIONS``), each one a ``bin/train`` command line;
* ``row`` turns one policy's evaluation metrics into a flat row of numbers;
* ``interval`` (mean with a 95% t-interval over seeds) and ``paired`` (per-seed differences with a
  percentile-bootstrap 95% interval and the decision it implies) are the statistics;
* ``arm_table`` / ``paired_table`` write the Markdown, ``plot_metrics`` / ``plot_mechanism`` the
  figures; ``mechanism`` averages the per-iteration curves of ``metrics.jsonl`` over seeds.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.stats

from rajax.config import SEED_LIMIT
from rajax.core.errors import InvalidInput


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One factor changed against the main settings: ``flags`` go to ``bin/train``; ``both`` runs it
    for RLHF too (else RLHF is unaffected and the main RLHF runs are its baseline)."""

    flags: tuple[str, ...]
    both: bool
    about: str


ABLATIONS = {
    "kl_kept_mean": Ablation(("--set", "ppo.kl_stat=kept_mean"), False,
                             "the paper's Eq. 12 KL (mean over kept episodes) instead of the code's diluted mean"),
    "env_score": Ablation(("--set", "ppo.risk_stat=env_score"), False,
                          "rank episodes by the reward model's score instead of the λ-return"),
    "rollout_dropout": Ablation(("--set", "generation.rollout_dropout=true"), True,
                                "sample rollouts with dropout, as the original code"),
    "small_batch": Ablation(("--batch-size", "32", "--iterations", "64", "--risk-n", "2", "--risk-rho", "0.8"), True,
                            "batch 32, 64 iterations, n 2, ρ 0.8 (the offline task's settings before v1.1)"),
}
MAIN = "main"

# Metrics of a row where lower is better (every other one: higher is better).
LOWER_IS_BETTER = ("perplexity",)
# The t quantile and the bootstrap come from scipy.stats (a dependency of jax, declared by rajax too)
# rather than a hand-copied t-table and a hand-written resampling loop: exact for every df, and the
# bootstrap is the library's maintained percentile method.
BOOTSTRAP_RESAMPLES = 10_000
MECHANISM_KEYS = ("risk/kept_tail_frac", "risk/tail_frac", "env/tail_reward_mean", "env/reward_mean",
                  "risk/alpha_prime", "objective/kl", "objective/kl_coef")


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of the study: ``setting`` (``main`` or an ablation), ``arm`` (``rlhf`` or
    ``ra<α>``), its seed and the ``bin/train`` flags that make it."""

    setting: str
    arm: str
    alpha: float
    seed: int
    flags: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.arm}-s{self.seed}"


def arm_name(alpha: float) -> str:
    return "rlhf" if alpha >= 1.0 else f"ra{alpha:g}"


def plan(seeds: Sequence[int], alphas: Sequence[float], ablations: Sequence[str] = ()) -> list[Run]:
    """Every run, seed-major within each (setting, arm) block: main arms first, then the ablations
    (RA-RLHF at the first α, and RLHF where the factor changes it)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise InvalidInput(f"--seeds must be distinct and at least one, got {list(seeds)}")
    if any(not 0 <= s <= SEED_LIMIT for s in seeds):
        raise InvalidInput(f"--seeds must be integers in [0, {SEED_LIMIT}], got {next(s for s in seeds if not 0 <= s <= SEED_LIMIT)}")
    if not alphas or any(not 0.0 < a < 1.0 for a in alphas):
        raise InvalidInput(f"--alphas must be RA-RLHF risk levels in (0, 1) (RLHF always runs), got {list(alphas)}")
    unknown = [a for a in ablations if a not in ABLATIONS]
    if unknown:
        raise InvalidInput(f"unknown ablation {unknown[0]!r}; choose from {', '.join(ABLATIONS)}")
    runs = []
    for alpha in (1.0, *alphas):
        runs += [Run(MAIN, arm_name(alpha), alpha, s, ("--alpha", f"{alpha:g}")) for s in seeds]
    for name in ablations:
        ab = ABLATIONS[name]
        for alpha in ((1.0, alphas[0]) if ab.both else (alphas[0],)):
            runs += [Run(name, arm_name(alpha), alpha, s, ("--alpha", f"{alpha:g}", *ab.flags)) for s in seeds]
    return runs


def comparisons(alphas: Sequence[float], ablations: Sequence[str] = ()) -> list[tuple[str, tuple, tuple]]:
    """``(label, (setting, arm), (setting, baseline arm))``: RA-RLHF − RLHF under each setting."""
    out = [(f"α={a:g} − RLHF", (MAIN, arm_name(a)), (MAIN, "rlhf")) for a in alphas]
    for name in ablations:
        base = (name, "rlhf") if ABLATIONS[name].both else (MAIN, "rlhf")
        out.append((f"{name}: α={alphas[0]:g} − RLHF", (name, arm_name(alphas[0])), base))
    return out


# ------------------------------------------------------------------------------------------------
# Rows and statistics
# ------------------------------------------------------------------------------------------------
def row(m: Mapping) -> dict:
    """One policy's evaluation metrics (``metrics.json`` ``policies[name]``) as a flat row."""
    r = {"reward": m["reward"], "tail": m["tail"]}
    r.update({f"CVaR@{a}": v for a, v in m["cvar"].items()})
    if "return" in m:
        r["R̄"] = m["return"]
    r["perplexity"] = m["perplexity"]
    for name, v in m.get("extra", {}).items():
        r[name] = v
        if name in m.get("extra_tail", {}):
            r[f"{name} tail"] = m["extra_tail"][name]
        r.update({f"{name} CVaR@{a}": c for a, c in m.get("extra_cvar", {}).get(name, {}).items()})
    return {k: (float("nan") if v is None else float(v)) for k, v in r.items()}


def t975(df: int) -> float:
    """The two-sided 95% Student-t quantile t_{0.975, df}."""
    return float(scipy.stats.t.ppf(0.975, df))


def interval(values: Sequence[float]) -> dict:
    """Mean over seeds with its 95% t-interval (``lo``/``hi`` NaN for a single seed)."""
    x = np.asarray(values, np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"n": len(x), "mean": mean, "lo": float("nan"), "hi": float("nan"), "sd": float("nan")}
    sd = float(x.std(ddof=1))
    half = t975(len(x) - 1) * sd / math.sqrt(len(x))
    return {"n": len(x), "mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd}


def decide(lo: float, hi: float, metric: str) -> str:
    """"improves", "hurts" or "no detectable difference", from a 95% interval of RA-RLHF − RLHF."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0.0 <= hi:
        return "no detectable difference"
    higher = lo > 0.0
    return "hurts" if higher == (metric in LOWER_IS_BETTER) else "improves"


def paired(a: Sequence[float], b: Sequence[float], metric: str, *, seed: int = 0) -> dict:
    """Per-seed differences ``a_s − b_s``: their mean, a percentile-bootstrap 95% interval of the mean
    (``BOOTSTRAP_RESAMPLES`` resamples of the seeds), and the decision that interval implies."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if d.ndim != 1 or len(d) == 0:
        raise InvalidInput("paired() needs two equally long, non-empty per-seed lists")
    if len(d) == 1 or not np.all(np.isfinite(d)):
        lo = hi = float("nan")
    else:
        ci = scipy.stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=0.95,
                                   method="percentile", rng=np.random.default_rng(seed)).confidence_interval
        lo, hi = float(ci.low), float(ci.high)
    return {"n": len(d), "mean": float(d.mean()), "lo": lo, "hi": hi, "diffs": d.tolist(),
            "decision": decide(lo, hi, metric)}


# ------------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3f}"


def _cell(iv: Mapping) -> str:
    if not math.isfinite(iv["lo"]):
        return _num(iv["mean"])
    return f"{_num(iv['mean'])} [{_num(iv['lo'])}, {_num(iv['hi'])}]"


def arm_table(arms: Mapping[str, Mapping[str, Mapping]], metrics: Sequence[str]) -> str:
    """Rows = metrics, columns = arms; each cell "mean [95% interval]" over seeds."""
    names = list(arms)
    n = {a: next(iter(arms[a].values()))["n"] for a in names}
    lines = ["| metric | " + " | ".join(f"{a} (n={n[a]})" for a in names) + " |",
             "|---|" + "---|" * len(names)]
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(_cell(arms[a][m]) if m in arms[a] else "" for a in names) + " |")
    return "\n".join(lines)


_MARK = {"improves": "▲", "hurts": "▼", "no detectable difference": "·"}


def paired_table(diffs: Mapping[str, Mapping[str, Mapping]], metrics: Sequence[str]) -> str:
    """Rows = metrics, columns = comparisons; each cell "mean [bootstrap 95%] mark" where ▲ is
    "improves", ▼ "hurts" and · "no detectable difference"."""
    names = list(diffs)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in metrics:
        cells = []
        for c in names:
            p = diffs[c].get(m)
            cells.append("" if p is None else f"{_cell(p)} {_MARK[p['decision']]}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Mechanism curves
# ------------------------------------------------------------------------------------------------
def read_curves(run_dir) -> dict[str, np.ndarray]:
    """``MECHANISM_KEYS`` per iteration from a run's ``metrics.jsonl`` (NaN where a key is absent)."""
    recs = [json.loads(x) for x in (pathlib.Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    recs.sort(key=lambda r: r["iteration"])
    return {k: np.array([r.get(k, np.nan) if r.get(k) is not None else np.nan for r in recs], np.float64)
            for k in MECHANISM_KEYS}


def mechanism(curves_by_seed: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    """Per key: the mean over seeds per iteration and its 95% t-band (NaN-aware: a seed without a
    value at an iteration is left out there)."""
    out = {}
    for k in MECHANISM_KEYS:
        length = min(len(c[k]) for c in curves_by_seed)
        x = np.stack([np.asarray(c[k][:length]) for c in curves_by_seed])  # [seeds, iterations]
        n = np.isfinite(x).sum(0)
        with warnings.catch_warnings():  # an all-NaN column (no seed has a value there) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, 0)
            sd = np.nanstd(x, 0, ddof=1)
        half = np.array([t975(int(c) - 1) if c > 1 else np.nan for c in n]) * sd / np.sqrt(np.maximum(n, 1))
        out[k] = {"mean": mean.tolist(), "lo": (mean - half).tolist(), "hi": (mean + half).tolist()}
    return out


def window_mean(curves_by_seed: Sequence[Mapping[str, np.ndarray]], key: str, start: int) -> dict:
    """Each seed's mean of ``key`` over iterations >= ``start``, summarised by ``interval``."""
    per_seed = [float(np.nanmean(c[key][start:])) for c in curves_by_seed if np.isfinite(c[key][start:]).any()]
    return {**interval(per_seed), "per_seed": per_seed} if per_seed else {}


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib  # heavy: imported only when a figure is drawn

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_metrics(path, per_arm: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> None:
    """One panel per metric: every seed as a dot and the mean with its 95% interval, per arm."""
    plt = _plt()
    cols = 3
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.3 * rows), squeeze=False)
    names = list(per_arm)
    for ax, m in zip(axes.flat, metrics):
        for i, a in enumerate(names):
            vals = np.asarray(per_arm[a].get(m, []), np.float64)
            if not len(vals):
                continue
            iv = interval(vals)
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.12, 0.12, len(vals)), vals, s=9, alpha=0.45)
            err = None if not math.isfinite(iv["lo"]) else [[iv["mean"] - iv["lo"]], [iv["hi"] - iv["mean"]]]
            ax.errorbar([i], [iv["mean"]], yerr=err, fmt="o", color="black", capsize=4, ms=4)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mechanism(path, curves: Mapping[str, Mapping[str, Mapping[str, list]]], *, n: int | None = None,
                   end: int | None = None) -> None:
    """Per-iteration curves averaged over seeds (95% bands): the kept episodes' tail share (RLHF's
    line is the batch's own tail share), the batch's tail reward, its mean reward and α′."""
    plt = _plt()
    panels = [("risk/kept_tail_frac", "tail share of the kept episodes"),
              ("env/tail_reward_mean", "training batch: tail reward"),
              ("env/reward_mean", "training batch: mean reward"), ("risk/alpha_prime", "α′ (episodes kept)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for arm, c in curves.items():
            mean = np.asarray(c[key]["mean"])
            x = np.arange(len(mean))
            (line,) = ax.plot(x, mean, label=arm, lw=1.3)
            ax.fill_between(x, np.asarray(c[key]["lo"]), np.asarray(c[key]["hi"]), color=line.get_color(), alpha=0.18)
        if key == "risk/kept_tail_frac" and curves:
            base = np.asarray(next(iter(curves.values()))["risk/tail_frac"]["mean"])
            ax.plot(np.arange(len(base)), base, color="gray", ls=":", lw=1, label="batch tail share")
        for v in (n, end):
            if v is not None:
                ax.axvline(v, color="gray", lw=0.7, ls="--")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
