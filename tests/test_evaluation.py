"""Evaluation: IoU and the 19/16/13-class protocols, sliding-window inference, logits resized to
the label, the per-class table, and ``sepico eval`` on a checkpoint over a fixture tree."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sepico import cli
from sepico.evaluation import (_windows, evaluate, format_table, iou_from_confusion, predict_logits,
                               protocol_mious, slide_logits)
from sepico.train import Trainer
from tests.helpers import make_cityscapes, make_gta5, real_config

C = 19


class PixelModel(nn.Module):
    """Logits computed pixel by pixel: a fixed 1 x 1 convolution, optionally at stride 2."""

    def __init__(self, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(3, C, 1)
        self.stride = stride
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))

    def predict_logits(self, x):
        return self.conv(x[:, :, ::self.stride, ::self.stride])


class OracleModel(nn.Module):
    """Reads the class back from the image (channel 0 = class / 255) and answers it."""

    def predict_logits(self, x):
        mean, std = 0.485, 0.229
        cls = ((x[:, 0] * std + mean) * 255).round().long().clamp(0, C - 1)
        return F.one_hot(cls, C).permute(0, 3, 1, 2).float() * 10


def test_iou_and_the_three_protocols():
    conf = torch.diag(torch.full((C,), 100))
    conf[3, 3] = 0   # wall never right: IoU 0 (it is labelled, so it counts)
    conf[3, 0] = 50
    out = iou_from_confusion(conf, range(C))
    assert out["iou"][3] == 0 and math.isclose(out["iou"][0], 100 * 100 / 150)
    protocols = protocol_mious(conf)
    road = 100 * 100 / 150
    assert math.isclose(protocols["19"], (17 * 100 + road) / 19)
    assert math.isclose(protocols["16"], (14 * 100 + road) / 16)   # wall is one of the 16
    assert math.isclose(protocols["13"], (12 * 100 + road) / 13)   # ... not of the 13
    # A class neither labelled nor predicted is left out of the mean (NaN IoU).
    conf[5, 5] = 0
    assert math.isnan(iou_from_confusion(conf, range(C))["iou"][5])


@pytest.mark.parametrize("size,window,stride", [(100, 32, 24), (64, 64, 16), (20, 32, 8), (97, 40, 40)])
def test_windows_cover_the_axis_and_end_at_the_border(size, window, stride):
    starts = _windows(size, window, stride)
    w = min(window, size)
    assert starts[0] == 0 and starts[-1] + w == size
    assert all(0 < b - a <= stride for a, b in zip(starts, starts[1:]))


def test_sliding_windows_equal_whole_image_for_a_pixelwise_model():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 37, 70)
    model = PixelModel()
    whole = model.predict_logits(images)
    slide = slide_logits(model, images, C, window=(16, 24), stride=(10, 13))
    assert torch.allclose(slide, whole, atol=1e-5)
    # Logits of a strided model come back at the label size.
    out = predict_logits(PixelModel(stride=2), images, (74, 140), num_classes=C, mode="slide",
                         window=(16, 24), stride=(8, 12))
    assert out.shape == (2, C, 74, 140)


def _blocks_dataset(n=3, size=(32, 48), shrink=2):
    """Labels of 8 x 8 blocks; images at 1/shrink of the label size encode the class."""
    gen = torch.Generator().manual_seed(1)
    items = []
    for _ in range(n):
        blocks = torch.randint(0, C, (size[0] // 8, size[1] // 8), generator=gen)
        label = blocks.repeat_interleave(8, 0).repeat_interleave(8, 1)
        label[:2] = 255
        small = label[::shrink, ::shrink].clamp(max=C - 1)
        image = torch.stack([small.float() / 255, torch.rand(small.shape, generator=gen),
                             torch.zeros(small.shape)])
        items.append((image, label))
    return items


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_evaluate_scores_a_perfect_model_100(mode):
    result = evaluate(OracleModel(), _blocks_dataset(), num_classes=C, mode=mode, window=(8, 16),
                      stride=(6, 10), batch_size=2)
    assert result["miou"] == 100.0 and result["pixel_accuracy"] == 100.0
    conf = torch.tensor(result["confusion"])
    assert conf.sum() == 3 * 30 * 48 and torch.equal(conf, torch.diag(conf.diag()))
    assert result["protocols"]["16"] <= 100.0
    table = format_table(result)
    assert "road" in table and "mIoU13" in table and "pixel accuracy" in table


def test_sepico_eval_on_a_checkpoint(tmp_path, capsys):
    gta5, cityscapes = make_gta5(tmp_path / "gta5", n=2), make_cityscapes(tmp_path / "cityscapes")
    cfg = real_config(tmp_path, "gta5", gta5, "cityscapes", cityscapes)
    ckpt = Trainer(cfg, tmp_path / "run", progress=False).save_checkpoint()
    out = tmp_path / "eval.json"
    code = cli.main(["eval", str(ckpt), "--device", "cpu", "--mode", "slide", "--window", "16,32",
                     "--stride", "12,24", "--protocol", "13", "--teacher", "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["mode"] == "slide" and result["window"] == [16, 32] and result["weights"] == "teacher"
    assert result["images"] == 2 and len(result["iou"]) == 13 and set(result["protocols"]) == {"19", "16", "13"}
    assert "wall" not in printed.split("{")[0] and "mIoU19" in printed and '"miou"' in printed
    code = cli.main(["eval", str(ckpt), "--device", "cpu", "--size", "16,32", "--no-progress"])
    printed = capsys.readouterr().out
    result = json.loads(printed[printed.index("\n{") + 1:])  # the table, then the JSON
    assert code == 0 and result["mode"] == "whole" and len(result["iou"]) == 19


def test_sepico_eval_errors_in_one_line(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
