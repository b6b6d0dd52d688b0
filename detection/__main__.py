"""python -m detection --help: the detection command lines."""

from resnet_engine.tool_index import main

main("detection", ["train_det.py", "eval_det.py", "infer.py", "export.py", "ablate_det.py", "demo.py", "plot_logs.py",
                   "convert_weights.py", "make_shapes.py"])
