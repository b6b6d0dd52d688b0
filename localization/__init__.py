"""ILSVRC CLS-LOC localization: the official metric, the on-disk formats and a synthetic dataset."""
