"""Image classification: the paper's ImageNet and CIFAR classifiers, their data, trainer and evaluation.

Where things live: ``config.py`` (the schema; ``data.dataset`` chooses imagenet, cifar10 or cifar100),
``classifier.py`` (the networks as classifiers, their test views and errors), ``data/`` (the ILSVRC and
CIFAR files, the paper's protocols, synthetic sets), ``training.py``, ``evaluation.py``, ``weights.py``
(trained classifiers), ``degradation.py``, ``layer_responses.py`` and ``imagenet_tables.py`` (the paper's
experiments on them).

The Python API under tools/train_cls.py, which the experiments build on::

    from classification.config import load_classification_config
    from classification.evaluation import evaluate_weights
    from classification.training import train_classifier

    cfg = load_classification_config("cifar10_resnet56.yaml", ["data.root=/data/cifar"])
    run = train_classifier(cfg)              # resume=True continues output_dir, overwrite=True replaces it
    run.output_dir, run.weights, run.metrics["test"]["top1_err"]
    evaluate_weights(cfg, run.weights, split="test")    # {"test": {"top1_err", "top5_err", ...}}

``train_classifier(cfg, resume=False, overwrite=False)`` returns a ``TrainedRun`` (``output_dir``,
``metrics`` as in output_dir/metrics.json, ``weights``: output_dir/model_final.pth).
``evaluate_weights(cfg, weights, split=None)`` tests weights on the config's test sets (CIFAR: on ``split``
alone when given: "trainval", "train", "val" or "test"), subtracting a CIFAR checkpoint's own pixel mean,
and writes output_dir/eval_<mode or split>.json.
"""

from resnet_engine.version import __version__ as __version__  # noqa: E402
