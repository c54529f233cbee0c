"""Evaluation as in the paper (docs/paper.md §4): rewards on test prompts, tail, CVaR, R̄, perplexity,
figures and a report.

``metrics`` (pure NumPy), ``perplexity``, ``generation`` (responses and R̄'s KL part), ``report``
(figures, tables, files) and ``run.evaluate`` (everything, for a set of policies).
"""
from rajax.evaluation.metrics import cvar, cvar_count, quantile_curve, tail_mean
from rajax.evaluation.report import metrics_table
from rajax.evaluation.run import check_finite, evaluate

__all__ = ["check_finite", "cvar", "cvar_count", "evaluate", "metrics_table", "quantile_curve", "tail_mean"]
