"""ILSVRC data: readers and writers of the CLS-LOC files (devkit XML, Kaggle CSV, predictions), the
classification and localization datasets, the R-CNN stage's RoIs, and a synthetic set."""
