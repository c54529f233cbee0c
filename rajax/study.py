"""RLHF vs RA-RLHF over seeds: per-run rows and the side-by-side table (``bin/study`` runs them).

``row`` turns one policy's evaluation metrics into a table row (reward, tail, CVaR at each
``eval.cvar_alphas``, the KL-penalised return R̄, extra scores such as a ground truth, perplexity);
``table`` writes mean ± sample std over seeds per method.
"""
from __future__ import annotations

import statistics


def row(m: dict) -> dict:
    """One policy's evaluation metrics (``metrics.json`` ``policies[name]``) as a table row."""
    r = {"reward": m["reward"], "tail": m["tail"]}
    r.update({f"CVaR {a}": v for a, v in m["cvar"].items()})
    if "return" in m:
        r["R̄"] = m["return"]
    r.update(m.get("extra", {}))
    r["perplexity"] = m["perplexity"]
    return r


def _fmt(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}"


def table(results: dict[str, list[dict]]) -> str:
    """Markdown table: one row per method, mean ± std over seeds of each column."""
    cols = list(next(iter(results.values()))[0])
    lines = ["| method | seeds | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for method, rows in results.items():
        cells = [_fmt([r[c] for r in rows]) for c in cols]
        lines.append(f"| {method} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
