"""Metrics records flattened to the names TensorBoard and the plots give them, and JSON written in one step."""

import json

from resnet_engine.config import flatten_tree
from resnet_engine.logger import flatten_metrics, write_json


def test_metrics_keep_their_numbers_under_slash_joined_names():
    record = {"iteration": 5, "bbox": {"AP": 31.5, "per_class": {"cat": 2}}, "done": True, "name": "x",
              "empty": {}}
    assert flatten_metrics(record) == {"iteration": 5.0, "bbox/AP": 31.5, "bbox/per_class/cat": 2.0}


def test_a_config_tree_keeps_every_leaf_under_dotted_keys():
    tree = {"model": {"rpn": {"nms_thresh": 0.7}, "extra": {}}, "seed": None}
    assert list(flatten_tree(tree)) == [("model.rpn.nms_thresh", 0.7), ("model.extra", {}), ("seed", None)]
    assert list(flatten_tree(tree, "/")) == [("model/rpn/nms_thresh", 0.7), ("model/extra", {}), ("seed", None)]
    assert list(flatten_tree({})) == []


def test_json_is_written_whole_and_replaces_the_old_file(tmp_path):
    path = tmp_path / "new" / "metrics.json"
    write_json({"bbox": {"AP": 1.5}}, str(path))
    write_json([1, 2], str(path))
    assert json.loads(path.read_text()) == [1, 2]
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.json"]  # no temporary file left
