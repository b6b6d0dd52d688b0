"""python -m classification --help: the classification command lines."""

from resnet_engine.tool_index import main

main("classification", ["train_cls.py", "imagenet_tables.py", "degradation.py", "layer_responses.py",
                          "plot_logs.py"])
