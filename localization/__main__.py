"""python -m localization --help: the localization command lines."""

from resnet_engine.tool_index import main

main("localization", ["train_cls.py", "train_loc.py", "eval_loc.py", "plot_logs.py"])
