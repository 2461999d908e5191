"""`sepico convert`: official SePiCo / DAFormer checkpoints into sepico weight files, read by
`sepico eval`, `sepico predict` and `model.init_checkpoint`.

Official layout facts (BIT-DA/SePiCo at bce38edd), written down here, not taken from our code:
- mmcv's runner saves ``{"meta", "state_dict", "optimizer"}``; the UDA model holds the student as
  ``self.model`` (mmseg/models/uda/uda_decorator.py l. 35) and the EMA teacher as ``self.ema_model``
  (mmseg/models/uda/sepico.py l. 114), so the state dict has ``model.*`` and ``ema_model.*`` keys;
- tools/publish_model.py l. 22-32 drops ``optimizer``, ``meta`` and every ``ema_model`` /
  ``imnet_model`` key: a released file holds the student alone; tools/test.py l. 145-149 loads with
  ``revise_keys=[(r'^module\\.', ''), ('model.', '')]``, i.e. it evaluates the student;
- the segmentor's parts: ``backbone`` / ``decode_head`` / ``auxiliary_head``
  (mmseg/models/segmentors/encoder_decoder_projector.py l. 40, 52, 64);
- DAFormerHead (mmseg/models/decode_heads/daformer_head.py l. 124-160): ``embed_layers.{i}`` are
  SegFormer ``MLP``s (``proj`` = nn.Linear, segformer_head.py l. 18-28); ``fuse_layer`` is an
  ``ASPPWrapper`` (l. 19-65) with ``aspp_modules`` (mmcv ``ConvModule`` 1x1 for dilation 1, a
  ``DepthwiseSeparableConvModule`` ``depthwise_conv`` / ``pointwise_conv`` for the others,
  sep_aspp_head.py l. 12-27) and a 3x3 ``bottleneck``; ``conv_seg`` is the 1x1 classifier;
  ConvModules with BN are named ``conv`` / ``bn`` and have no conv bias;
- ProjHead (proj_head.py l. 68-98): ``convs.0`` (in -> mid) and ``convs.1`` (mid -> channels),
  ConvModules with BN; for ``resize_concat`` mid = sum(in) // len(in_index) (l. 70);
- DLV2Head (dlv2_head.py l. 11-28): ``conv_seg`` deleted; ``aspp_modules.{i}.conv`` (ConvModule
  without norm and activation: conv with bias), 3x3 with dilation (6, 12, 18, 24).
"""
import pytest
import torch

from sepico.cli import main
from sepico.convert import load_model
from sepico.models import build_model
from sepico.train import Trainer
from sepico.train.config import validate
from sepico.errors import ConfigError
from tests.test_models import mit_checkpoint_keys, on_meta, resnet_v1c_keys
from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def bn(prefix, c):
    return {f"{prefix}.{s}": (c,) for s in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def daformer_head_keys(in_channels, embed, channels, classes, dilations=(1, 6, 12, 18)):
    keys = {}
    for i, c in enumerate(in_channels):
        keys |= {f"decode_head.embed_layers.{i}.proj.weight": (embed, c),
                 f"decode_head.embed_layers.{i}.proj.bias": (embed,)}
    cat, fuse = embed * len(in_channels), "decode_head.fuse_layer"
    for j, d in enumerate(dilations):
        m = f"{fuse}.aspp_modules.{j}"
        if d == 1:
            keys |= {f"{m}.conv.weight": (channels, cat, 1, 1)} | bn(f"{m}.bn", channels)
        else:
            keys |= {f"{m}.depthwise_conv.conv.weight": (cat, 1, 3, 3)} | bn(f"{m}.depthwise_conv.bn", cat)
            keys |= {f"{m}.pointwise_conv.conv.weight": (channels, cat, 1, 1)} | bn(f"{m}.pointwise_conv.bn", channels)
    keys |= {f"{fuse}.bottleneck.conv.weight": (channels, len(dilations) * channels, 3, 3)}
    keys |= bn(f"{fuse}.bottleneck.bn", channels)
    return keys | {"decode_head.conv_seg.weight": (classes, channels, 1, 1), "decode_head.conv_seg.bias": (classes,)}


def proj_head_keys(in_total, mid, out):
    return ({"auxiliary_head.convs.0.conv.weight": (mid, in_total, 1, 1)} | bn("auxiliary_head.convs.0.bn", mid)
            | {"auxiliary_head.convs.1.conv.weight": (out, mid, 1, 1)} | bn("auxiliary_head.convs.1.bn", out))


def dlv2_head_keys(in_channels, classes, dilations=(6, 12, 18, 24)):
    keys = {}
    for i, _ in enumerate(dilations):
        keys |= {f"decode_head.aspp_modules.{i}.conv.weight": (classes, in_channels, 3, 3),
                 f"decode_head.aspp_modules.{i}.conv.bias": (classes,)}
    return keys


def backbone_keys(family):
    """Official backbone keys (the ImageNet-file facts of tests/test_models.py), with shapes."""
    from sepico.models import mit
    from sepico.models.resnet import ResNet

    if family == "daformer":
        names = mit_checkpoint_keys((2, 2, 2, 2)) - {"head.weight", "head.bias"}
        encoder = on_meta(mit, "mit_b0")
    else:
        names = resnet_v1c_keys(18)
        encoder = on_meta(ResNet, 18)
    shapes = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert set(shapes) == names
    return {f"backbone.{k}": shapes[k] for k in names}


CLASSES, PROJ = 7, 12


def official_keys(family, projection=True, classes=CLASSES):
    if family == "daformer":  # mit_b0 widths 32 / 64 / 160 / 256, embed = channels = 24
        keys = backbone_keys(family) | daformer_head_keys((32, 64, 160, 256), 24, 24, classes)
        return keys | (proj_head_keys(32 + 64 + 160 + 256, (32 + 64 + 160 + 256) // 4, PROJ) if projection else {})
    keys = backbone_keys(family) | dlv2_head_keys(512, classes)
    return keys | (proj_head_keys(512, 512, PROJ) if projection else {})


def random_state(keys, seed):
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in keys.items():
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(seed, dtype=torch.int64)
        elif k.endswith("running_var"):
            state[k] = torch.rand(shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(shape, generator=g) * 0.1
    return state


def mmcv_checkpoint(family, layout, projection=True):
    student = random_state(official_keys(family, projection), 1)
    teacher = random_state(official_keys(family, projection), 2)
    if layout == "training":   # what the runner saves during training
        return {"meta": {"iter": 40000, "CLASSES": ("road", "sidewalk"), "PALETTE": [[128, 64, 128]]},
                "state_dict": {**{f"model.{k}": v for k, v in student.items()},
                               **{f"ema_model.{k}": v for k, v in teacher.items()}},
                "optimizer": {"state": {}, "param_groups": [{"lr": 6e-5, "params": [0, 1]}]}}, student, teacher
    if layout == "published":  # tools/publish_model.py output
        return {"state_dict": {f"model.{k}": v for k, v in student.items()}}, student, teacher
    if layout == "bare":       # state dict of the segmentor itself
        return {"state_dict": student}, student, teacher
    return dict(student), student, teacher  # a plain state dict


# By hand: the official part names onto ours; inside a part the names are the official ones.
HAND = {"backbone": "encoder", "decode_head": "decode_head", "auxiliary_head": "projection_head"}


def by_hand(family, tensors):
    torch.manual_seed(5)
    name = "daformer_mit_b0" if family == "daformer" else "deeplabv2_r18"
    kw = {"embed_dim": 24, "channels": 24} if family == "daformer" else {}
    model = build_model(name, num_classes=CLASSES, proj_dim=PROJ, **kw)
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for key, value in tensors.items():
            part, rest = key.split(".", 1)
            params[f"{HAND[part]}.{rest}"].copy_(value)
    return model.eval()


def model_name(family):
    return "daformer_mit_b0" if family == "daformer" else "deeplabv2_r18"


@pytest.mark.parametrize("family, layout", [("daformer", "training"), ("daformer", "published"),
                                            ("daformer", "bare"), ("deeplab", "plain"), ("deeplab", "training")])
def test_converted_file_loads_strictly_and_gives_the_logits_of_the_official_tensors(tmp_path, family, layout, capsys):
    ckpt, student, _ = mmcv_checkpoint(family, layout)
    src, dst = tmp_path / "official.pth", tmp_path / "converted.pt"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(dst), "--model", model_name(family)]) == 0
    assert "class statistics" in capsys.readouterr().err
    loaded = load_model(dst)
    m = loaded.config.model
    assert (m.name, m.num_classes, m.proj_dim) == (model_name(family), CLASSES, PROJ)
    assert loaded.weights == "student" and loaded.iteration is None
    if family == "daformer":
        assert m.head_channels == 24
    x = torch.randn(2, 3, 40, 56)
    hand = by_hand(family, student)
    model = loaded.model.eval()
    with torch.no_grad():
        logits, emb = model(x)
        ref_logits, ref_emb = hand(x)
    assert torch.equal(logits, ref_logits) and torch.equal(emb, ref_emb)
    # the published evaluation setting comes with it
    d = loaded.config.data
    assert (d.target, tuple(d.test_size), d.keep_ratio) == ("cityscapes", (640, 1280), True)


def test_teacher_flag_takes_the_ema_model(tmp_path):
    ckpt, student, teacher = mmcv_checkpoint("deeplab", "training")
    src = tmp_path / "official.pth"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(tmp_path / "t.pt"), "--model", "deeplabv2_r18", "--teacher"]) == 0
    assert main(["convert", str(src), str(tmp_path / "s.pt"), "--model", "deeplabv2_r18"]) == 0
    t, s = load_model(tmp_path / "t.pt"), load_model(tmp_path / "s.pt")
    assert t.weights == "teacher" and s.weights == "student"
    key = "decode_head.aspp_modules.2.conv.weight"
    assert torch.equal(t.model.state_dict()[key], teacher[key])
    assert torch.equal(s.model.state_dict()[key], student[key])
    assert not torch.equal(teacher[key], student[key])


def test_daformer_checkpoint_without_projection_head_converts_with_a_note(tmp_path, capsys):
    ckpt, student, _ = mmcv_checkpoint("daformer", "published", projection=False)
    src, dst = tmp_path / "daformer.pth", tmp_path / "c.pt"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(dst), "--model", "daformer_mit_b0"]) == 0
    assert "no auxiliary_head" in capsys.readouterr().err
    loaded = load_model(dst).model.eval()
    hand = by_hand("daformer", student)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(loaded.predict_logits(x), hand.predict_logits(x))


def _convert_fails(tmp_path, capsys, ckpt, *args, model="deeplabv2_r18"):
    src, dst = tmp_path / "official.pth", tmp_path / "converted.pt"
    if isinstance(ckpt, bytes):
        src.write_bytes(ckpt)
    else:
        torch.save(ckpt, src)
    code = main(["convert", str(src), str(dst), "--model", model, *args])
    err = capsys.readouterr().err
    assert code == 2 and not dst.exists()
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_wrong_layouts_fail_in_one_line_without_output(tmp_path, capsys):
    ckpt, _, _ = mmcv_checkpoint("deeplab", "published")
    state = ckpt["state_dict"]

    missing = {k: v for k, v in state.items() if k != "model.backbone.layer3.1.bn2.running_mean"}
    err = _convert_fails(tmp_path, capsys, {"state_dict": missing})
    assert "1 missing key(s): backbone.layer3.1.bn2.running_mean" in err

    extra = dict(state) | {"model.backbone.layer5.0.conv1.weight": torch.zeros(1)}
    assert "1 unexpected key(s): backbone.layer5.0.conv1.weight" in _convert_fails(tmp_path, capsys, {"state_dict": extra})

    shaped = dict(state) | {"model.backbone.stem.3.weight": torch.zeros(32, 32, 1, 1)}
    assert "shape mismatch(es): backbone.stem.3.weight (32, 32, 1, 1)" in _convert_fails(
        tmp_path, capsys, {"state_dict": shaped})

    outside = dict(state) | {"model.neck.conv.weight": torch.zeros(1)}
    assert "outside backbone / decode_head / auxiliary_head: neck.conv.weight" in _convert_fails(
        tmp_path, capsys, {"state_dict": outside})

    assert "looks like a DeepLab-V2" in _convert_fails(tmp_path, capsys, ckpt, model="daformer_mit_b0")
    assert "convert without --teacher" in _convert_fails(tmp_path, capsys, ckpt, "--teacher")
    assert "no state dict of tensors" in _convert_fails(tmp_path, capsys, {"state_dict": {"a": 1}})
    assert "not a readable checkpoint" in _convert_fails(tmp_path, capsys, b"not a torch file")


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned",))


def test_crafted_payload_is_refused_and_never_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _convert_fails(tmp_path, capsys, {"state_dict": {}, "meta": _Payload()})
    assert "refused" in err and ("os.system" in err or "posix.system" in err)
    assert not (tmp_path / "pwned").exists()


def test_eval_and_teacher_flag_on_a_converted_file(tmp_path, capsys):
    ckpt, _, _ = mmcv_checkpoint("deeplab", "published")
    src, dst = tmp_path / "official.pth", tmp_path / "c.pt"
    torch.save(ckpt, src)
    assert main(["convert", str(src), str(dst), "--model", "deeplabv2_r18"]) == 0
    capsys.readouterr()
    assert main(["eval", str(dst)]) == 2  # Cityscapes, but no folder named
    assert "give it with --root" in capsys.readouterr().err
    assert main(["eval", str(dst), "--teacher"]) == 2
    assert "--teacher does not apply" in capsys.readouterr().err


def test_init_checkpoint_starts_a_run_from_a_converted_file(tmp_path, capsys):
    state = random_state(official_keys("deeplab", classes=19), 3)  # 19 classes: the synthetic benchmark
    src, dst = tmp_path / "official.pth", tmp_path / "c.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, src)
    assert main(["convert", str(src), str(dst), "--model", "deeplabv2_r18"]) == 0
    capsys.readouterr()
    cfg = tiny_config()
    cfg.model.init_checkpoint, cfg.model.proj_dim = str(dst), PROJ
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    assert "class statistics (feature means / covariances) are not in it" in capsys.readouterr().err
    for ours, official in (("encoder.layer2.0.conv1.weight", "backbone.layer2.0.conv1.weight"),
                           ("decode_head.aspp_modules.3.conv.bias", "decode_head.aspp_modules.3.conv.bias"),
                           ("projection_head.convs.1.bn.running_var", "auxiliary_head.convs.1.bn.running_var")):
        assert torch.equal(trainer.model.state_dict()[ours].cpu(), state[official]), ours
        assert torch.equal(trainer.teacher.state_dict()[ours].cpu(), state[official]), ours  # EMA starts equal
    assert int(trainer.sepico.estimator.state_dict()["count"].sum()) == 0

    cfg.model.proj_dim = PROJ + 1  # the file's projection head is PROJ wide
    with pytest.raises(ConfigError, match=r"does not match model deeplabv2_r18.*shape mismatch"):
        Trainer(cfg, tmp_path / "run2", progress=False)
    cfg.model.proj_dim, cfg.model.pretrained = PROJ, str(dst)
    with pytest.raises(ConfigError, match="exclude each other"):
        validate(cfg)


@pytest.mark.parametrize("name", ["daformer_mit_b5", "deeplabv2_r101"])
def test_published_models_have_the_official_layout(name):
    """Every key and head shape of a released model (published widths: 19 classes, DAFormer
    embed = channels = 256, projection channels 512; configs/_base_/models/*.py, experiments.py)."""
    if name.startswith("daformer"):
        heads = daformer_head_keys((64, 128, 320, 512), 256, 256, 19) | proj_head_keys(1024, 256, 512)
        backbone = mit_checkpoint_keys((3, 6, 40, 3)) - {"head.weight", "head.bias"}
        kw = {"embed_dim": 256, "channels": 256}
    else:
        heads = dlv2_head_keys(2048, 19) | proj_head_keys(2048, 2048, 512)
        backbone = resnet_v1c_keys(101)
        kw = {}
    model = on_meta(build_model, name, num_classes=19, proj_dim=512, **kw)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = {f"{HAND[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": s for k, s in heads.items()}
    assert set(ours) == set(official) | {f"encoder.{k}" for k in backbone}
    for key, shape in official.items():
        assert ours[key] == shape, key
