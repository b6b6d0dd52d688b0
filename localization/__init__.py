"""ILSVRC CLS-LOC localization (the paper's App. C) and the ImageNet classifier.

Where things live: ``rpn_localizer.py`` (the per-class RPN), ``rcnn.py`` and ``rcnn_proposals.py`` (the
R-CNN stage on it), ``training.py``, ``weights.py`` (trained stages), ``data/`` (ILSVRC files, datasets,
a synthetic set), ``evaluation/`` (the official metric, submissions, the stages on the val set and the
entry points of tools/eval_loc.py), ``classifier.py`` and ``train_cls.py`` (the classifier: 1-crop,
10-crop and dense testing, top-1/top-5 error).
"""

from resnet_engine.version import __version__ as __version__  # noqa: E402
