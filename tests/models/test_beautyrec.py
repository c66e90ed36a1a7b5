"""BeautyREC unit tests: the network at the tiny size, its component masks, the pipeline folder round trip and
numpy API, the official checkpoint converter on a synthetic official-named state dict, and the makeup loss's
histogram matching."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.face.parsing import LABELS
from facefab.models.beautyrec import TINY_CONFIG, BeautyRECNet, BeautyRECPipeline, component_masks
from facefab.models.beautyrec.convert import convert

SIZE = TINY_CONFIG["image_size"]


def face_labels(size: int = SIZE) -> np.ndarray:
    """A schematic parsed face: skin oval, nose, brows, eyes, lips, inner mouth, hair around."""
    s = size / 64
    labels = np.full((size, size), LABELS["hair_other"], np.uint8)
    yy, xx = np.mgrid[:size, :size]
    labels[((yy - 34 * s) / (26 * s)) ** 2 + ((xx - 32 * s) / (20 * s)) ** 2 <= 1] = LABELS["skin"]

    def box(name, y0, y1, x0, x1):
        labels[round(y0 * s):round(y1 * s), round(x0 * s):round(x1 * s)] = LABELS[name]

    box("left_brow", 18, 20, 36, 46), box("right_brow", 18, 20, 18, 28)
    box("left_eye", 24, 27, 37, 45), box("right_eye", 24, 27, 19, 27)
    box("nose", 28, 38, 29, 35)
    box("upper_lip", 42, 45, 25, 39), box("lower_lip", 46, 49, 25, 39), box("inner_mouth", 45, 46, 26, 38)
    return labels


def random_faces(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (n, 1, 1, 3))
    return np.clip(base + rng.integers(-30, 30, (n, size, size, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def net() -> BeautyRECNet:
    torch.manual_seed(0)
    return BeautyRECNet(**TINY_CONFIG).eval()


def test_forward_shapes_and_range(net):
    x = torch.rand(2, 3, SIZE, SIZE) * 2 - 1
    labels = torch.from_numpy(np.stack([face_labels()] * 2))
    with torch.no_grad():
        out = net(x, x.flip(0), labels, labels)
    assert out.shape == (2, 3, SIZE, SIZE) and out.abs().max() <= 1
    with torch.no_grad():  # the reference matters
        assert not torch.allclose(out, net(x, torch.zeros_like(x), labels, labels))


def test_component_masks():
    labels = torch.from_numpy(face_labels()[None])
    masks = component_masks(labels)
    assert masks.shape == (1, 3, SIZE, SIZE) and set(masks.unique().tolist()) == {0.0, 1.0}
    lips, skin, eyes = masks[0].bool()
    ids = labels[0]
    assert torch.equal(lips, (ids == LABELS["upper_lip"]) | (ids == LABELS["lower_lip"]))
    assert torch.equal(skin, (ids == LABELS["skin"]) | (ids == LABELS["nose"]))
    # the eye-shadow band: around the eyes, on skin only, never the eyes or brows themselves
    assert eyes.sum() > 20 and skin[eyes].all()
    for name in ("left_eye", "right_eye", "left_brow", "right_brow"):
        assert not eyes[ids == LABELS[name]].any()
    assert not eyes[40:].any()  # nothing near the mouth
    wider = component_masks(labels, band_px=4)[0, 2].bool()
    assert wider.sum() > eyes.sum() and wider[eyes].all()


def test_pipeline_folder_round_trip_and_call(net, tmp_path):
    pipe = BeautyRECPipeline(net)
    pipe.save_pretrained(str(tmp_path / "ckpt"))
    assert json.loads((tmp_path / "ckpt" / "model_index.json").read_text())["_class_name"] == "BeautyRECPipeline"
    loaded = BeautyRECPipeline.from_pretrained(str(tmp_path / "ckpt"), device="cpu", dtype="fp32")
    assert loaded.size == SIZE and all(torch.equal(v, loaded.net.state_dict()[k]) for k, v in net.state_dict().items())

    crops, reference = random_faces(3, 96), random_faces(1, 80, seed=1)[0]  # other sizes than the model's
    labels, reference_labels = np.stack([face_labels(96)] * 3), face_labels(80)
    out = loaded(crops, reference, labels, reference_labels, batch_size=2)
    assert out.shape == (3, 96, 96, 3) and out.dtype == np.uint8
    # another batch size may take other float kernels: a rounding step at most
    other = pipe(crops, reference, labels, reference_labels, batch_size=3)
    assert np.abs(out.astype(np.int16) - other).max() <= 1
    with pytest.raises(ValueError):
        pipe(crops, reference, labels[:, :90], reference_labels)


def official_layout(dim: int = 48, n_res: int = 3) -> dict[str, tuple[int, ...]]:
    """The official network's state-dict names and shapes (network/REC/REC.py, BeautyREC(params)), written out
    from its module tree: Conv2dBlock = pad + conv (+ norm), LayerNorm's gamma / beta, SELayer's fc.0 / fc.2,
    SpatialGate's spatial, OurMultiheadAttention's w_qs / w_ks / w_vs / fc, the unit's BatchNorm."""
    layout: dict[str, tuple[int, ...]] = {}

    def conv(prefix, cout, cin, k, norm=""):
        layout[f"{prefix}.conv.weight"], layout[f"{prefix}.conv.bias"] = (cout, cin, k, k), (cout,)
        if norm == "ln":
            layout[f"{prefix}.norm.gamma"] = layout[f"{prefix}.norm.beta"] = (cout,)

    def resblocks(prefix, count, width):
        for i in range(count):
            for j in (0, 1):
                conv(f"{prefix}.model.{i}.model.{j}", width, width, 3)

    conv("content_encoder.conv_first", dim, 3, 7)
    conv("content_encoder.down1", dim, dim, 4)
    conv("content_encoder.down2", dim, dim, 4)
    resblocks("content_encoder.resblocks", n_res, dim)
    for enc in ("style_encoder", "style_encoder_global"):
        conv(f"{enc}.conv_first", dim, 3, 7)
        conv(f"{enc}.down1", dim, dim, 4)
        conv(f"{enc}.down2", dim, dim, 4)
        layout[f"{enc}.style.weight"], layout[f"{enc}.style.bias"] = (dim, dim, 1, 1), (dim,)
    for m in (1, 2, 3):
        for part in ("lip", "skin", "eye"):
            layout[f"modulate{m}.sen_{part}.fc.0.weight"] = (dim // 16, dim)
            layout[f"modulate{m}.sen_{part}.fc.2.weight"] = (dim, dim // 16)
            layout[f"modulate{m}.sa_{part}.spatial.weight"], layout[f"modulate{m}.sa_{part}.spatial.bias"] = (1, 2, 3, 3), (1,)
    for w in ("w_qs", "w_ks", "w_vs", "fc"):
        layout[f"attention1.attn.{w}.weight"] = (dim, dim, 1, 1)
    for lin in ("linear1", "linear2"):
        layout[f"attention1.{lin}.weight"], layout[f"attention1.{lin}.bias"] = (dim, dim, 1, 1), (dim,)
    for b in ("weight", "bias", "running_mean", "running_var"):
        layout[f"attention1.norm.{b}"] = (dim,)
    layout["attention1.norm.num_batches_tracked"] = ()
    resblocks("res", n_res, 2 * dim)
    conv("upconv1", dim, 3 * dim, 3, "ln")
    conv("upconv2", dim, 2 * dim, 3, "ln")
    conv("out", 3, dim, 3)
    return layout


def test_our_net_has_the_official_layout():
    ours = {k: tuple(v.shape) for k, v in BeautyRECNet().state_dict().items()}
    assert ours == official_layout()


def test_converter_places_every_official_key(tmp_path):
    """checkpoints/BeautyREC.pt as the official code saves it ({"cleaner": state dict, "optimizer", "epoch"},
    here with DataParallel's `module.` prefix) -> every tensor placed, the config read off the shapes."""
    gen = torch.Generator().manual_seed(0)
    state = {f"module.{k}": (torch.randn(shape, generator=gen) if shape else torch.tensor(7))
             for k, shape in official_layout().items()}
    folder = tmp_path / "BeautyREC" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"cleaner": state, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}, "epoch": 99},
               folder / "BeautyREC.pt")

    from facefab.jobs.commands.convert import converter_of

    assert converter_of("beautyrec") is convert  # `facefab convert beautyrec SRC DST`
    report = convert(str(tmp_path / "BeautyREC"), str(tmp_path / "converted"))
    assert report["unmapped"] == [] and report["missing"] == [] and report["mapped"] == len(state)
    assert report["config"] == {"image_size": 256, "dim": 48, "style_dim": 48, "n_res": 3, "n_head": 8}
    pipe = BeautyRECPipeline.from_pretrained(str(tmp_path / "converted"), device="cpu", dtype="fp32")
    loaded = pipe.net.state_dict()
    assert all(torch.equal(v, loaded[k.removeprefix("module.")]) for k, v in state.items())


def test_histogram_matching_takes_the_reference_colours():
    from facefab.training.beautyrec import histogram_matched

    source = torch.rand(2, 3, 16, 16) * 0.2  # dark
    reference = torch.rand(2, 3, 16, 16) * 0.2 + 0.7  # bright
    mask = torch.zeros(2, 16, 16)
    mask[:, 4:10, 4:10] = 1
    mask[1] = 0  # no region: not valid, unchanged
    matched, valid = histogram_matched(source, reference, mask, torch.ones(2, 16, 16))
    assert valid.tolist() == [True, False] and torch.equal(matched[1], source[1])
    inside = matched[0][:, mask[0] > 0]
    assert inside.min() >= 0.7 and torch.equal(matched[0][:, mask[0] == 0], source[0][:, mask[0] == 0])
    # the order of the source's pixels is kept (rank mapping)
    order = source[0][:, mask[0] > 0].argsort(1)
    assert (inside.gather(1, order).diff(dim=1) >= 0).all()
