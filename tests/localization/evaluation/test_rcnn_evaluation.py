"""localization/evaluation/rcnn_evaluation.py: the R-CNN's regressed boxes are scored as RPN+RCNN and the
RPN's own first proposal as RPN, each paired with its class (stubs give known proposals and boxes)."""

import os

import torch

import localization.evaluation.rcnn_evaluation as rcnn_evaluation
from classification.data.ilsvrc import read_synsets
from localization.data.loc_dataset import LocEvalTransform
from localization.evaluation.submission import val_ground_truth
from tests.localization.test_rpn_localizer import tiny_config, tiny_root  # noqa: F401 - a fixture


class StubRCNN(torch.nn.Module):
    """Re-scores class c's proposals into the box (c + 6, c + 6, c + 16, c + 16) (continuous)."""

    def rescore(self, image, proposals, classes, chunk=256):
        c = torch.tensor(classes, dtype=torch.float32)
        return torch.stack([c + 6, c + 6, c + 16, c + 16], 1), torch.ones(len(classes))


def test_rpn_and_rcnn_guesses_hold_their_own_boxes(tiny_root, tmp_path, monkeypatch):  # noqa: F811
    cfg = tiny_config(tiny_root, tmp_path, "test.mode=1crop")
    synsets = read_synsets(os.path.join(tiny_root, "LOC_synset_mapping.txt"))
    num_classes = len(synsets.wnids)

    def proposals(rpn, views, geometries, size, top_n, flip):
        c = torch.arange(num_classes, dtype=torch.float32)[:, None].expand(-1, top_n)
        boxes = torch.stack([c + 1, c + 1, c + 11, c + 11], -1)  # (K, n, 4); entry 0: the RPN's box
        return boxes, c.clone()  # logits (K, n): they rank the classes 5, 4, 3, 2, 1

    monkeypatch.setattr(rcnn_evaluation, "class_proposals", proposals)
    views = LocEvalTransform("1crop", cfg.test.resize, cfg.input.crop, list(cfg.test.dense_scales))
    dataset = rcnn_evaluation.build_rcnn_test_set(cfg, views, synsets)
    truth = val_ground_truth(cfg, synsets, [r.image_id for r in dataset.records])
    rpn, rcnn = rcnn_evaluation.localize_dataset_rcnn(StubRCNN(), torch.nn.Identity(), dataset, cfg, truth.classes,
                                                      progress=False)
    assert len(rpn) == len(rcnn) == len(truth.objects) > 0
    for image_id in rpn:
        assert rpn[image_id].ranking == rcnn[image_id].ranking == [5, 4, 3, 2, 1]
        for c in set(rpn[image_id].ranking) | set(truth.classes[image_id]):
            # continuous boxes -> inclusive pixel indices: x2 - 1
            assert rpn[image_id].boxes[c] == (c + 1, c + 1, c + 10, c + 10), (image_id, c)
            assert rcnn[image_id].boxes[c] == (c + 6, c + 6, c + 15, c + 15), (image_id, c)
