"""`kvblend eval`: batch completion evaluation — quality, fidelity and latency per context mode.

datasets.py  items: HumanEval infilling, our jsonl format (FORMAT.md), repository holes (holes.py)
metrics.py   exact match, edit similarity, identifier F1 (definitions in README "Evaluation")
runner.py    every mode on every item through the real Completer; `evaluate` writes the outputs
report.py    per-mode aggregates, results.json, summary.md, plots
"""

from kvblend.eval.config import EvalConfig, ModeSpec
from kvblend.eval.datasets import DatasetError, EvalItem, load_dataset

__all__ = ["DatasetError", "EvalConfig", "EvalItem", "ModeSpec", "load_dataset"]
