"""Evaluating localizers: the official ILSVRC CLS-LOC metric, the submission and its errors, the RPN and
R-CNN stages on the val set, and the entry points of tools/eval_loc.py (evaluator.py)."""
