"""python -m classification --help: the classification command lines."""

from resnet_engine.tool_index import main

main("classification", ["train_cls.py", "imagenet_tables.py", "plot_logs.py"])
