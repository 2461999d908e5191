"""Models: checkpoint key names and shapes, forward shapes and strides, pretrained loading,
activation checkpointing, parameter groups, dropout switching.

Checkpoint facts below are written down from the published sources, not from our code:
- SegFormer MiT ImageNet checkpoints (``mit_b*.pth``): NVlabs/SegFormer
  ``mmseg/models/backbones/mix_transformer.py`` (module names, configs, qkv_bias=True, the
  ``head`` classifier) and open-mmlab/mmsegmentation ``tools/model_converters/mit2mmseg.py``
  (the key prefixes a real ``mit_b*.pth`` holds: ``head``, ``patch_embed*``, ``block*``, ``norm*``);
- mmseg ResNet-V1c (``open-mmlab://resnet101_v1c``, the DeepLab-V2 encoder): BIT-DA/SePiCo
  ``mmseg/models/backbones/resnet.py`` (lines cited at the tests); parameter counts derived from
  torchvision's published ``num_params`` (11,689,512 / 25,557,032 / 44,549,160), whose blocks are
  the same.
Large variants (MiT-B5, ResNet-101) are built on the meta device: names and shapes only.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from sepico.models import (MODEL_NAMES, DAFormer, DeepLabV2, build_model,
                           load_pretrained_encoder, mit)
from sepico.models.mit import EfficientSelfAttention
from sepico.models.resnet import ResNet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny convolutions on a shared 2-core machine: one thread is several times faster than two
    # threads fighting other test processes, and keeps the timings stable.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)  # every random input below is reproducible


def on_meta(fn, *args, **kwargs):
    with torch.device("meta"):
        return fn(*args, **kwargs)


def shapes(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------- MiT checkpoint facts

def mit_checkpoint_keys(depths):
    """Every key of a SegFormer ``mit_b*.pth`` ImageNet checkpoint (classifier included)."""
    pair = (".weight", ".bias")
    keys = {"head.weight", "head.bias"}
    for i, depth in enumerate(depths, start=1):
        keys |= {f"patch_embed{i}.{m}{s}" for m in ("proj", "norm") for s in pair}
        keys |= {f"norm{i}{s}" for s in pair}
        names = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1",
                 "mlp.dwconv.dwconv", "mlp.fc2"]
        if i < 4:  # spatial reduction ratios 8, 4, 2, 1: the last stage has no sr conv / norm
            names += ["attn.sr", "attn.norm"]
        keys |= {f"block{i}.{j}.{n}{s}" for j in range(depth) for n in names for s in pair}
    return keys


MIT_B0_SHAPES = {
    "patch_embed1.proj.weight": (32, 3, 7, 7), "patch_embed1.proj.bias": (32,),
    "patch_embed1.norm.weight": (32,), "patch_embed2.proj.weight": (64, 32, 3, 3),
    "patch_embed3.proj.weight": (160, 64, 3, 3), "patch_embed4.proj.weight": (256, 160, 3, 3),
    "block1.0.norm1.weight": (32,), "block1.0.attn.q.weight": (32, 32),
    "block1.0.attn.q.bias": (32,), "block1.0.attn.kv.weight": (64, 32),
    "block1.0.attn.kv.bias": (64,), "block1.0.attn.proj.weight": (32, 32),
    "block1.0.attn.sr.weight": (32, 32, 8, 8), "block1.0.attn.sr.bias": (32,),
    "block1.0.attn.norm.weight": (32,), "block1.0.norm2.bias": (32,),
    "block1.0.mlp.fc1.weight": (128, 32), "block1.0.mlp.fc1.bias": (128,),
    "block1.0.mlp.dwconv.dwconv.weight": (128, 1, 3, 3), "block1.0.mlp.dwconv.dwconv.bias": (128,),
    "block1.0.mlp.fc2.weight": (32, 128), "block2.1.attn.sr.weight": (64, 64, 4, 4),
    "block3.1.attn.sr.weight": (160, 160, 2, 2), "block3.0.attn.kv.weight": (320, 160),
    "block4.1.attn.kv.weight": (512, 256), "block4.1.mlp.fc1.weight": (1024, 256),
    "norm1.weight": (32,), "norm4.weight": (256,), "norm4.bias": (256,),
    "head.weight": (1000, 256), "head.bias": (1000,),
}
MIT_B5_SHAPES = {
    "patch_embed1.proj.weight": (64, 3, 7, 7), "patch_embed4.proj.weight": (512, 320, 3, 3),
    "block1.2.attn.sr.weight": (64, 64, 8, 8), "block2.5.attn.kv.weight": (256, 128),
    "block3.39.attn.sr.weight": (320, 320, 2, 2), "block3.39.mlp.fc1.weight": (1280, 320),
    "block3.39.mlp.dwconv.dwconv.weight": (1280, 1, 3, 3), "block4.2.attn.q.weight": (512, 512),
    "block4.2.mlp.fc2.weight": (512, 2048), "norm3.weight": (320,), "norm4.weight": (512,),
    "head.weight": (1000, 512),
}


@pytest.mark.parametrize("name, depths, count, facts", [
    ("mit_b0", (2, 2, 2, 2), 178, MIT_B0_SHAPES),
    ("mit_b5", (3, 6, 40, 3), 1054, MIT_B5_SHAPES),
])
def test_mit_state_dict_matches_segformer_checkpoint(name, depths, count, facts):
    expected = mit_checkpoint_keys(depths)
    assert len(expected) == count
    ours = shapes(on_meta(mit, name))
    assert set(ours) == expected - {"head.weight", "head.bias"}
    for key, shape in facts.items():
        if not key.startswith("head."):
            assert ours[key] == shape, key
    assert "block4.0.attn.sr.weight" not in ours and f"block3.{depths[2]}.norm1.weight" not in ours


def test_mit_depths_and_parameter_counts():
    # Encoder parameters in SegFormer's Table 1 (millions): B0 3.4, B1 13.1, B2 24.2, B3 44.0,
    # B4 60.8, B5 81.4. The table's rounding is not uniform (B0 has 3.32 M, B1 13.15 M), so the
    # check is |ours - table| <= 0.1 M: enough to catch a missing or extra layer of any stage.
    paper = {"mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8,
             "mit_b5": 81.4}
    depths = {"mit_b0": (2, 2, 2, 2), "mit_b1": (2, 2, 2, 2), "mit_b2": (3, 4, 6, 3),
              "mit_b3": (3, 4, 18, 3), "mit_b4": (3, 8, 27, 3), "mit_b5": (3, 6, 40, 3)}
    for name, millions in paper.items():
        encoder = on_meta(mit, name)
        expected = mit_checkpoint_keys(depths[name]) - {"head.weight", "head.bias"}
        assert set(encoder.state_dict()) == expected
        count = sum(p.numel() for p in encoder.parameters()) / 1e6
        assert abs(count - millions) <= 0.1 + 1e-9, (name, count)
        widths = (32, 64, 160, 256) if name == "mit_b0" else (64, 128, 320, 512)
        assert encoder.out_channels == widths


# ------------------------------------------------------------------- ResNet-V1c checkpoint facts
# mmseg ResNetV1c (BIT-DA/SePiCo mmseg/models/backbones/resnet.py): deep_stem=True, avg_down=False
# (l. 687-699); the stem is one nn.Sequential named ``stem`` of conv(3->32, stride 2), BN, ReLU,
# conv(32->32), BN, ReLU, conv(32->64), BN, ReLU (l. 589-622), then a 3x3 / 2 max pool; block norms
# are ``bn1..bn3`` (build_norm_layer postfix 1..3, l. 165-168); stages ``layer1..4`` (l. 518-520).
# The DeepLab-V2 base (configs/_base_/models/deeplabv2_proj_r50-d8.py l. 12-22, depth 101 from
# experiments.py l. 46-48) sets strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation.

def resnet_v1c_keys(depth):
    """Every key of an mmseg ``ResNetV1c`` state dict of ``depth`` (no classifier)."""
    def bn(prefix):
        return {f"{prefix}.{s}" for s in ("weight", "bias", "running_mean", "running_var",
                                         "num_batches_tracked")}
    blocks, convs = {18: ((2, 2, 2, 2), 2), 50: ((3, 4, 6, 3), 3), 101: ((3, 4, 23, 3), 3)}[depth]
    keys = {"stem.0.weight", "stem.3.weight", "stem.6.weight"} | bn("stem.1") | bn("stem.4") | bn("stem.7")
    for i, n in enumerate(blocks, start=1):
        for j in range(n):
            for c in range(1, convs + 1):
                keys |= {f"layer{i}.{j}.conv{c}.weight"} | bn(f"layer{i}.{j}.bn{c}")
        if i > 1 or convs == 3:  # layer1 of a basic-block ResNet keeps 64 channels: no projection
            keys |= {f"layer{i}.0.downsample.0.weight"} | bn(f"layer{i}.0.downsample.1")
    return keys


STEM_SHAPES = {"stem.0.weight": (32, 3, 3, 3), "stem.1.weight": (32,), "stem.3.weight": (32, 32, 3, 3),
               "stem.4.running_var": (32,), "stem.6.weight": (64, 32, 3, 3), "stem.7.bias": (64,)}
RESNET18_SHAPES = {
    **STEM_SHAPES, "layer1.0.conv1.weight": (64, 64, 3, 3), "layer2.0.conv1.weight": (128, 64, 3, 3),
    "layer2.0.downsample.0.weight": (128, 64, 1, 1), "layer3.1.conv2.weight": (256, 256, 3, 3),
    "layer4.0.downsample.1.running_var": (512,), "layer4.1.bn2.weight": (512,),
}
RESNET101_SHAPES = {
    **STEM_SHAPES, "layer1.0.conv1.weight": (64, 64, 1, 1),
    "layer1.0.conv3.weight": (256, 64, 1, 1), "layer1.0.downsample.0.weight": (256, 64, 1, 1),
    "layer2.0.conv2.weight": (128, 128, 3, 3), "layer3.22.conv3.weight": (1024, 256, 1, 1),
    "layer4.0.conv1.weight": (512, 1024, 1, 1), "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
    "layer4.2.bn3.running_mean": (2048,),
}


# Parameter counts: torchvision's ResNets without their fc layer (11,689,512 - 513,000;
# 25,557,032 - 2,049,000; 44,549,160 - 2,049,000), less the 7x7 stem (9,408 + 128), plus the deep
# stem (864 + 64 + 9,216 + 64 + 18,432 + 128 = 28,768).
@pytest.mark.parametrize("depth, count, params, facts", [
    (18, 132, 11_195_744, RESNET18_SHAPES),
    (50, 330, 23_527_264, {**STEM_SHAPES, "layer3.5.conv3.weight": (1024, 256, 1, 1)}),
    (101, 636, 42_519_392, RESNET101_SHAPES),
])
def test_resnet_state_dict_is_mmseg_resnet_v1c(depth, count, params, facts):
    expected = resnet_v1c_keys(depth)
    assert len(expected) == count
    encoder = on_meta(ResNet, depth)
    ours = shapes(encoder)
    assert set(ours) == expected
    for key, shape in facts.items():
        assert ours[key] == shape, key
    assert sum(p.numel() for p in encoder.parameters()) == params
    stem = encoder.stem
    assert [(m.stride[0], m.padding[0]) for m in stem if isinstance(m, torch.nn.Conv2d)] == [(2, 1), (1, 1), (1, 1)]
    assert encoder.maxpool.kernel_size == 3 and encoder.maxpool.stride == 2


@pytest.mark.parametrize("depth", [18, 101])
def test_resnet_deeplab_dilation(depth):
    encoder = on_meta(ResNet, depth)
    conv = "conv1" if depth == 18 else "conv2"  # the 3x3 conv carrying stride and dilation
    expect = {"layer2.0": (2, 1), "layer3.0": (1, 1), "layer3.1": (1, 2),
              "layer4.0": (1, 2), "layer4.1": (1, 4)}
    for block, (stride, dilation) in expect.items():
        m = encoder.get_submodule(f"{block}.{conv}")
        assert (m.stride[0], m.dilation[0], m.padding[0]) == (stride, dilation, dilation), block
    assert encoder.get_submodule("layer3.0.downsample.0").stride == (1, 1)
    assert encoder.strides == (4, 8, 8, 8)


# --------------------------------------------------------------------------- forward

def tiny(name, **kw):
    torch.manual_seed(0)
    kw = {"num_classes": 5, "proj_dim": 32, **kw}
    return build_model(name, **kw)


@pytest.fixture(scope="module")
def daformer():
    return tiny("daformer_mit_b0")


@pytest.fixture(scope="module")
def deeplab():
    return tiny("deeplabv2_r18")


@pytest.mark.parametrize("size", [(64, 64), (64, 96), (50, 70)])
@pytest.mark.parametrize("family", ["daformer", "deeplab"])
def test_forward_shapes_strides_and_unit_embeddings(family, size, request):
    model = request.getfixturevalue(family)
    model.train()
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    logits, emb = model(x)
    ceil = lambda n, s: -(-n // s)  # noqa: E731
    ls, es = model.logits_stride, model.embedding_stride
    assert (ls, es) == ((4, 4) if family == "daformer" else (8, 8))
    assert logits.shape == (2, 5, ceil(size[0], ls), ceil(size[1], ls))
    assert emb.shape == (2, 32, ceil(size[0], es), ceil(size[1], es))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(emb.shape[0], *emb.shape[2:]))
    features = model.encoder(x)
    assert [f.shape[1] for f in features] == list(model.encoder.out_channels)
    assert [tuple(f.shape[2:]) for f in features] == [
        (ceil(size[0], s), ceil(size[1], s)) for s in model.encoder.strides]


def test_predict_logits_equals_forward_logits(daformer):
    daformer.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(daformer.predict_logits(x), daformer(x)[0], rtol=0, atol=0)


def test_projection_head_equals_concatenation_formula(daformer):
    # Published formula: resize every stage to the first, concatenate, conv-BN-ReLU twice,
    # normalise.
    daformer.eval()
    head = daformer.projection_head
    with torch.no_grad():
        feats = daformer.encoder(torch.randn(2, 3, 64, 96))
        size = feats[0].shape[-2:]
        cat = torch.cat([F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                         for f in feats], dim=1)
        expected = F.normalize(head.convs(cat), dim=1)
        torch.testing.assert_close(head(feats), expected, rtol=1e-4, atol=1e-5)
    assert head.convs[0].conv.weight.shape == (512 // 4, 512, 1, 1)  # MiT-B0: 512 -> 128 -> 32


def test_attention_equals_segformer_formula():
    torch.manual_seed(0)
    dim, heads, sr, h, w = 20, 2, 2, 6, 5
    attn = EfficientSelfAttention(dim, heads, sr)
    x = torch.randn(3, h * w, dim)
    hd = dim // heads
    q = attn.q(x).reshape(3, h * w, heads, hd).permute(0, 2, 1, 3)
    reduced = attn.sr(x.permute(0, 2, 1).reshape(3, dim, h, w)).reshape(3, dim, -1).permute(0, 2, 1)
    kv = attn.kv(attn.norm(reduced)).reshape(3, -1, 2, heads, hd).permute(2, 0, 3, 1, 4)
    scores = (q @ kv[0].transpose(-2, -1)) * hd ** -0.5
    expected = attn.proj((scores.softmax(-1) @ kv[1]).transpose(1, 2).reshape(3, h * w, dim))
    torch.testing.assert_close(attn(x, h, w), expected, rtol=1e-5, atol=1e-6)


def test_bad_input_and_bad_names():
    with pytest.raises(ValueError, match="unknown model 'daformer_mit_b9'"):
        build_model("daformer_mit_b9")
    with pytest.raises(ValueError, match="depth 34"):
        DeepLabV2(depth=34)
    with pytest.raises(ValueError, match="proj_dim"):
        on_meta(DAFormer, encoder="mit_b0", proj_dim=0)
    with pytest.raises(ValueError, match="projection_stages"):
        on_meta(DAFormer, encoder="mit_b0", projection_stages=(4,))
    assert len(MODEL_NAMES) == 10
    assert "daformer_mit_b5" in MODEL_NAMES and "deeplabv2_r101" in MODEL_NAMES


def test_bad_image_shape_is_a_clear_error(deeplab):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        deeplab(torch.randn(3, 64, 64))


# --------------------------------------------------------------------------- pretrained loading

def _save(tmp_path, state, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def _random_like(encoder, classifier):
    gen = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone())
             for k, v in encoder.state_dict().items()}
    state.update(classifier)
    return state


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_load_mit_checkpoint_strict(tmp_path, wrap):
    model = tiny("daformer_mit_b0")
    head = {"head.weight": torch.randn(1000, 256), "head.bias": torch.randn(1000)}
    state = _random_like(model.encoder, head)
    path = _save(tmp_path, state if wrap is None else {wrap: state, "meta": {"epoch": 3}})
    report = load_pretrained_encoder(model, path)
    assert report.loaded == 176 and sorted(report.dropped) == ["head.bias", "head.weight"]
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_load_resnet_checkpoint_without_num_batches_tracked(tmp_path):
    encoder = ResNet(18)
    fc = {"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)}
    state = {k: v for k, v in _random_like(encoder, fc).items()
             if not k.endswith("num_batches_tracked")}  # as in files saved before PyTorch 0.4
    report = load_pretrained_encoder(encoder, _save(tmp_path, state))
    assert report.loaded == 110 and sorted(report.dropped) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(encoder.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])


def test_load_errors_name_the_keys(tmp_path):
    model = tiny("daformer_mit_b0")
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    good = _random_like(model.encoder, {})

    missing = dict(good)
    del missing["block2.1.attn.kv.weight"]
    with pytest.raises(ValueError, match=r"1 missing key\(s\): block2\.1\.attn\.kv\.weight"):
        load_pretrained_encoder(model, _save(tmp_path, missing, "missing.pth"))

    unexpected = dict(good, **{"block1.0.attn.qkv.weight": torch.zeros(96, 32)})
    with pytest.raises(ValueError, match=r"1 unexpected key\(s\): block1\.0\.attn\.qkv\.weight"):
        load_pretrained_encoder(model, _save(tmp_path, unexpected, "unexpected.pth"))

    prefixed = {f"backbone.{k}": v for k, v in good.items()}  # an mmseg-style file: in no layout
    with pytest.raises(ValueError, match=r"in no known weights layout; closest: the SegFormer release layout .*"
                                         r"first keys that do not fit: backbone\.patch_embed1\.proj\.weight, .*"
                                         r"\(171 more\)"):
        load_pretrained_encoder(model, _save(tmp_path, prefixed, "prefixed.pth"))

    wrong = dict(good, **{"norm4.weight": torch.ones(512)})  # an MiT-B1..B5 stage-4 norm
    with pytest.raises(ValueError,
                       match=r"norm4\.weight \(512,\) in the file, \(256,\) in the model"):
        load_pretrained_encoder(model, _save(tmp_path, wrong, "wrong.pth"))

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_pretrained_encoder(model, tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        load_pretrained_encoder(model, _save(tmp_path, [1, 2], "list.pth"))

    for k, v in model.encoder.state_dict().items():  # nothing was copied by a failed load
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# ------------------------------------------------------------------- activation checkpointing

def _step(model, x, seed):
    torch.manual_seed(seed)
    model.zero_grad(set_to_none=True)
    logits, emb = model(x)
    weights = torch.linspace(-1, 1, emb.shape[1])[:, None, None]
    (logits.square().mean() + (emb * weights).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), emb.detach(), grads


@pytest.mark.parametrize("name, kw", [
    ("daformer_mit_b0", {"drop_path_rate": 0.3, "dropout": 0.2}),  # random drop-path masks
    ("deeplabv2_r18", {}),                                         # BatchNorm in the blocks
])
def test_activation_checkpointing_same_outputs_gradients_and_buffers(name, kw):
    plain = tiny(name, **kw).train()
    ckpt = copy.deepcopy(plain)
    ckpt.activation_checkpointing = True
    assert ckpt.encoder.activation_checkpointing and not plain.activation_checkpointing
    x = torch.randn(2, 3, 64, 64)
    calls = {"plain": 0, "ckpt": 0}
    for key, model in (("plain", plain), ("ckpt", ckpt)):  # count the first block's forwards
        block = next(m for n, m in model.encoder.named_modules() if n in ("block1.0", "layer1.0"))

        def counted(*args, key=key, forward=block.forward):
            calls[key] += 1
            return forward(*args)
        block.forward = counted
    ref, got = _step(plain, x, seed=3), _step(ckpt, x, seed=3)
    assert calls == {"plain": 1, "ckpt": 2}  # the checkpointed block really ran again in backward
    torch.testing.assert_close(got[0], ref[0], rtol=0, atol=0)
    torch.testing.assert_close(got[1], ref[1], rtol=0, atol=0)
    for n in ref[2]:
        torch.testing.assert_close(got[2][n], ref[2][n], rtol=1e-5, atol=1e-7, msg=n)
    # The recomputation must not update BatchNorm running statistics a second time.
    buffers = dict(plain.named_buffers())
    for n, b in ckpt.named_buffers():
        torch.testing.assert_close(b, buffers[n], rtol=0, atol=0, msg=n)
    with torch.inference_mode():  # teacher path: no checkpointing machinery, same result
        torch.testing.assert_close(ckpt.eval()(x)[0], plain.eval()(x)[0], rtol=0, atol=0)


# --------------------------------------------------------------------------- parameters and modes

@pytest.mark.parametrize("family", ["daformer", "deeplab"])
def test_parameter_groups_cover_every_parameter_once(family, request):
    model = request.getfixturevalue(family)
    groups = model.parameter_groups(lr=6e-5, weight_decay=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert set(ids) == {id(p) for p in model.parameters()}
    head_ids = {id(p) for p in model.decode_head.parameters()} | {id(p) for p in model.projection_head.parameters()}
    by_name = {g["name"]: g for g in groups}
    assert {id(p) for p in by_name["head"]["params"]} == head_ids
    assert by_name["head"]["lr"] == pytest.approx(6e-4) and by_name["head"]["weight_decay"] == 0.01
    assert by_name["encoder"]["lr"] == 6e-5 and by_name["encoder"]["weight_decay"] == 0.01
    torch.optim.AdamW(groups, lr=6e-5)  # the groups are accepted as they are


def test_parameter_groups_follow_mmcv_custom_keys():
    """The published paramwise_cfg (SePiCo experiments.py:151-161: custom_keys head lr_mult 10,
    pos_block and norm decay_mult 0) as mmcv 1.3.7's DefaultOptimizerConstructor applies it
    (default_constructor.py:154, 181-189: keys longest first, ties alphabetical, first substring
    match only): MiT's LayerNorms do not decay, head parameters decay at 10x lr even where their
    name holds 'norm', BatchNorms named 'bn' decay."""
    model = tiny("daformer_mit_b0")
    groups = model.parameter_groups(lr=1e-3, weight_decay=0.05, head_lr_mult=10.0)
    setting = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    for name, p in names.items():
        if "head" in name:
            expected = (pytest.approx(1e-2), 0.05)
        elif "norm" in name:
            expected = (1e-3, 0.0)
        else:
            expected = (1e-3, 0.05)
        assert setting[id(p)] == expected, name
    # The MiT norms the rule catches, by their official names.
    for name in ("encoder.patch_embed1.norm.weight", "encoder.block1.0.norm1.weight",
                 "encoder.block1.0.attn.norm.bias", "encoder.norm4.weight"):
        assert setting[id(names[name])] == (1e-3, 0.0), name
    assert setting[id(names["encoder.block1.0.attn.q.weight"])] == (1e-3, 0.05)
    deeplab = build_model("deeplabv2_r18", num_classes=3, proj_dim=4)
    bn = dict(deeplab.named_parameters())["encoder.stem.1.weight"]
    decay = {id(p): g["weight_decay"] for g in deeplab.parameter_groups(1e-3, 0.05) for p in g["params"]}
    assert decay[id(bn)] == 0.05  # ResNet BatchNorms are named bn*: they decay, as in mmseg


def test_set_dropout_survives_train_and_keeps_batchnorm_training():
    model = tiny("daformer_mit_b0", drop_path_rate=0.5, dropout=0.5).train()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x)[0]
        torch.manual_seed(1)
        assert not torch.equal(model(x)[0], a)  # dropout and drop-path are active

        model.set_dropout(False)
        model.train()  # a later train() must not switch them back on
        torch.manual_seed(0)
        a = model(x)[0]
        torch.manual_seed(1)
        torch.testing.assert_close(model(x)[0], a, rtol=0, atol=0)
        assert model.decode_head.fuse_layer.bottleneck.bn.training  # BatchNorm still batch stats
        assert not model.decode_head.dropout.training
        assert not model.encoder.block4[1].drop_path.training

        model.set_dropout(True)
        assert model.decode_head.dropout.training and model.encoder.block4[1].drop_path.training
        model.eval()
        assert not model.decode_head.dropout.training


@pytest.mark.parametrize("size,out", [((8, 16), (32, 64)), ((13, 7), (51, 102)), ((32, 64), (16, 30)), ((5, 5), (5, 9))])
def test_bilinear_weights_reproduce_interpolate(size, out):
    """The matrix form of bilinear resizing (align_corners=False) that deterministic CUDA training
    uses (sepico.models.heads.resize_to) is F.interpolate's map, up and down."""
    from sepico.models.heads import bilinear_weights

    x = torch.randn(2, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(x, out, mode="bilinear", align_corners=False)
    rows, cols = bilinear_weights(size[0], out[0], x), bilinear_weights(size[1], out[1], x)
    torch.testing.assert_close(rows @ x @ cols.t(), expected, rtol=0, atol=1e-12)
    assert torch.allclose(rows.sum(1), torch.ones(out[0], dtype=torch.float64))
