"""ILSVRC CLS-LOC localization (the paper's App. C), on the ImageNet classifier of ``classification``.

Where things live: ``rpn_localizer.py`` (the per-class RPN), ``rcnn.py`` and ``rcnn_proposals.py`` (the
R-CNN stage on it), ``training.py``, ``weights.py`` (trained stages), ``data/`` (the localization datasets
and the R-CNN's training RoIs), ``evaluation/`` (the official metric, submissions, the stages on the val
set and the entry points of tools/eval_loc.py). The classifier whose top-5 classes the localizers box,
and the ILSVRC class lists and synthetic set, live in ``classification``.
"""

from resnet_engine.version import __version__ as __version__  # noqa: E402
