"""Readers and writers of the ILSVRC CLS-LOC files (devkit XML, Kaggle CSV, predictions)."""
