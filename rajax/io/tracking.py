"""Run outputs that are not checkpoints: metrics.jsonl, TensorBoard events, sample CSVs, curve plots."""
from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import secrets

from rajax.core.errors import InvalidInput


class MetricsWriter:
    """Appends one JSON line per iteration to ``metrics.jsonl`` and mirrors the scalars to TensorBoard
    and/or Weights & Biases (``report_to``), under the same tags.

    On resume the JSONL is truncated to the iterations before the resumed one, so the file always
    describes exactly one trajectory. W&B follows its own environment (``WANDB_MODE=offline``,
    ``WANDB_PROJECT``, ...); the run's config is logged as the W&B run config. ``run_id`` (from
    ``new_run_id``, kept with the run) makes a resumed run continue its W&B run; without it W&B draws
    a fresh id and nothing is resumed.
    """

    def __init__(self, out_dir: pathlib.Path, *, start_iteration: int = 0, tensorboard: bool = True,
                 wandb: bool = False, config: dict | None = None, run_name: str | None = None,
                 run_id: str | None = None):
        self.path = pathlib.Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a kill mid-write
                if rec.get("iteration", -1) < start_iteration:
                    kept.append(line)
        self.path.write_text("".join(k + "\n" for k in kept))
        self._f = self.path.open("a")
        self._tb = None
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:  # images without tensorboardX (e.g. the GPU image): same event files
                from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(pathlib.Path(out_dir) / "tb"), purge_step=start_iteration)
        self._wandb = None
        if wandb:
            self._wandb = _import_wandb().init(project=os.environ.get("WANDB_PROJECT", "rajax"), dir=str(out_dir),
                                         name=run_name, config=config, id=run_id,
                                         resume=None if run_id is None else "allow")

    def write(self, iteration: int, scalars: dict[str, float]) -> None:
        rec = {"iteration": iteration, **{k: _num(v) for k, v in scalars.items()}}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()
        finite = {k: v for k, v in rec.items() if k != "iteration" and v is not None}
        if self._tb is not None:
            for k, v in finite.items():
                self._tb.add_scalar(k, v, iteration)
        if self._wandb is not None:
            self._wandb.log(finite, step=iteration)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def check_targets(report_to) -> None:
    """Fail in one line, before a run loads or creates anything, when a ``--report-to`` target cannot
    work (wandb not installed): found at the first iteration, it cost the loading and left a run
    directory that then needed --overwrite. tensorboardX is a dependency, so only wandb is checked."""
    if "wandb" in tuple(report_to):
        _import_wandb()


def _import_wandb():
    try:
        import wandb  # optional and slow to import (about 1 s): pip install "rajax[wandb]"
    except ImportError:
        raise InvalidInput("--report-to wandb needs the wandb package: pip install 'rajax[wandb]'") from None
    return wandb


def new_run_id() -> str:
    """A fresh W&B run id, drawn once per run and stored with it (``RunDir.stored``). Not derived from
    the directory's name: every user's default ``runs/synthetic-a0.2-s4`` would be one W&B run."""
    return secrets.token_hex(8)


def _num(v):
    v = float(v)
    return v if math.isfinite(v) else None


def read_metrics(out_dir) -> list[dict]:
    path = pathlib.Path(out_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_samples(path: pathlib.Path, prompts, responses, rewards, extra: dict | None = None) -> None:
    """Sample generations of one iteration as CSV: prompt, response, reward (+ extra columns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = extra or {}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["prompt", "response", "reward", *extra])
        for i, (p, r, s) in enumerate(zip(prompts, responses, rewards)):
            w.writerow([p, r, f"{float(s):.6g}", *(f"{float(v[i]):.6g}" for v in extra.values())])


def plot_curves(out_dir, path=None) -> pathlib.Path:
    """Training curves (reward, KL, beta, alpha') against iteration, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = read_metrics(out_dir)
    path = pathlib.Path(path or pathlib.Path(out_dir) / "curves.png")
    panels = [
        ("env/reward_mean", "reward (mean)"),
        ("objective/kl", "KL"),
        ("objective/kl_coef", "β (KL coefficient)"),
        ("risk/alpha_prime", "α′ (episodes kept)"),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
    its = [r["iteration"] for r in recs]
    for ax, (key, title) in zip(axes, panels):
        ys = [r.get(key) for r in recs]
        ax.plot(its, [float("nan") if y is None else y for y in ys], lw=1.5)
        if key == "env/reward_mean" and any("env/reward_cvar" in r for r in recs):
            ax.plot(its, [r.get("env/reward_cvar", float("nan")) for r in recs], lw=1, label="CVaR")
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
