"""MegActor at the tiny config, no Ray: the official driving encoder's names and shapes (with its AdaLN
fusion), the denoiser's concatenated input, the official face-region preprocessing of the driving frames,
the pipeline folder round trip, 16-frame windows overlapping by 8 over a long clip, what each training stage
trains, and the official checkpoint converter on a synthetic official-named state dict."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from facefab.models.megactor import ConditionInputLayer, MegActorNet, MegActorPipeline, paper, tiny
from facefab.models.megactor.config import check, denoiser_in
from facefab.models.megactor.convert import convert, split_key
from facefab.models.megactor.driving import background_mask, driving_frames, face_boxes, greyscale
from facefab.models.megactor.pipeline import build_parts
from facefab.models.shared.checkpoints import animatediff_keys
from facefab.models.shared.latents import PixelCodec
from facefab.models.shared.windows import window_spans
from facefab.training.megactor import STAGES, MegActorSystem

SIZE = 64


@pytest.fixture(scope="module")
def meshes(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """6 frames of drive_d6 through ONE aligned crop (the first frame's alignment, as the operator hands the
    driving video to a DrivenPipeline): (6, 64, 64, 3) crops and their (6, 478, 2) meshes in crop pixels."""
    from facefab.face.alignment import points_to_crop, similarity_from_landmarks, warp_to_crop
    from facefab.face.mesh import FaceMesher
    from facefab.media import read_frames

    video = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=2.0, end=2.5)[:6]
    with_z = np.stack([FaceMesher()(frame, np.array([100, 60, 380, 420])) for frame in video])
    fixed = similarity_from_landmarks(with_z[0], SIZE)
    crops = np.stack([warp_to_crop(frame, fixed, SIZE) for frame in video])
    points = points_to_crop(with_z[..., :2], np.repeat(fixed[None], len(video), axis=0)).astype(np.float32)
    assert np.isfinite(points).all() and crops.shape == (6, SIZE, SIZE, 3)
    return crops, points


@pytest.fixture(scope="module")
def pipe() -> MegActorPipeline:
    torch.manual_seed(0)
    net = MegActorNet.fresh(tiny())
    for p in net.condition_input_layer.refer_linears_out.parameters():  # a fresh AdaLN is the identity
        torch.nn.init.normal_(p.data, 0, 0.05)
    return MegActorPipeline(net, PixelCodec(4), tiny())


# -- the official modules ------------------------------------------------------------------------------------

def test_driving_encoder_has_the_official_names_and_shapes():
    """unet.condition_input_layer of the released checkpoint (ConvInputLayer(use_refer_ada=True) at 512 px)."""
    layer = ConditionInputLayer(**paper()["condition_input_layer"], sample_size=512)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    official = {
        "spatial_conv_layers.0.0.weight": (3, 3, 3, 3), "spatial_conv_layers.0.2.weight": (16, 3, 4, 4),
        "spatial_conv_layers.1.0.weight": (16, 16, 3, 3), "spatial_conv_layers.1.2.weight": (32, 16, 4, 4),
        "spatial_conv_layers.2.0.weight": (32, 32, 3, 3), "spatial_conv_layers.2.2.weight": (64, 32, 4, 4),
        "spatial_conv_layers.3.0.weight": (64, 64, 3, 3), "spatial_conv_layers.3.2.weight": (128, 64, 3, 3),
        "spatial_conv_out.weight": (4, 128, 1, 1), "refer_convs.0.weight": (4, 3, 3, 3),
        "refer_convs.2.weight": (8, 4, 4, 4), "refer_convs.4.weight": (8, 8, 3, 3),
        "refer_convs.26.weight": (512, 256, 4, 4), "refer_convs.28.weight": (512, 512, 3, 3),
        "refer_convs.30.weight": (512, 512, 4, 4), "refer_linears.0.weight": (256, 512),
        "refer_linears_out.0.weight": (256, 256), "refer_linears_out.0.bias": (256,)}
    assert {k: shapes.get(k) for k in official} == official
    assert len(shapes) == 2 * (8 + 1 + 16 + 2)  # 8 spatial convs, spatial_conv_out, 16 refer convs, 2 linears
    driving, reference = torch.rand(1, 3, 2, 512, 512), torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        plain = layer(driving, reference)
        assert plain.shape == (1, 4, 2, 64, 64)
        scale, shift = layer.modulation(reference)
        assert scale.shape == shift.shape == (1, 128) and not scale.any() and not shift.any()  # zero AdaLN
        torch.nn.init.normal_(layer.refer_linears_out[0].weight, 0, 0.1)
        assert not torch.allclose(layer(driving, reference), plain)  # the reference now modulates the features
        assert not torch.allclose(layer(driving, reference), layer(driving, torch.rand(1, 3, 512, 512)))


def test_denoiser_input_is_the_official_concatenation():
    from accelerate import init_empty_weights

    with init_empty_weights():
        parts = build_parts(paper())
    unet = parts["unet"].state_dict()
    assert denoiser_in(paper()) == 13 and tuple(unet["conv_in.weight"].shape) == (320, 13, 3, 3)
    assert not any(k.startswith("mid_block.motion_modules") for k in unet)  # motion_module_mid_block: false
    assert any(k.startswith("up_blocks.3.motion_modules.2.") for k in unet)
    assert len(parts["appearance_encoder"].state_dict()) == 686  # the official "origin unet: 686"
    assert check(tiny()) and denoiser_in(tiny()) == 3 + 3 + 1 + 3
    with pytest.raises(ValueError, match="downsamples"):
        check(tiny(condition_input_layer={**tiny()["condition_input_layer"], "channels": [8, 16]}))


def test_midup_fusion_reads_the_reference_only_in_mid_and_up_blocks():
    net = MegActorNet.fresh(tiny())
    readers = {name: type(p).__name__ for name, p in net.unet.attn_processors.items()
               if name.endswith("attn1.processor") and "motion_modules" not in name}
    assert {v for k, v in readers.items() if k.startswith("down_blocks.")} == {"AttnProcessor2_0"}
    assert {v for k, v in readers.items() if k.startswith(("up_blocks.", "mid_block."))} == {"_Read"}


# -- preprocessing ------------------------------------------------------------------------------------------

def test_driving_frames_keep_the_grey_face_region(meshes):
    crops, points = meshes
    grey = driving_frames(crops, points)
    assert grey.shape == crops.shape and grey.dtype == np.uint8
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    np.testing.assert_allclose(greyscale(crops[:1])[0, ..., 0], crops[0] @ [0.2989, 0.5870, 0.1140], atol=1)
    left, top, right, bottom = face_boxes(points, SIZE)[0]
    (x0, y0), (x1, y1) = points[0].min(0), points[0].max(0)
    assert top < y0 - 0.2 * (y1 - y0) and left <= x0 + 1 and right >= x1 - 1  # raised above the brows
    outside = np.ones((SIZE, SIZE), bool)
    outside[top:bottom, left:right] = False
    assert not grey[0][outside].any() and grey[0][~outside].mean() > 20
    with_gap = points.copy()
    with_gap[2] = np.nan  # a frame without a face keeps a box (interpolated)
    assert driving_frames(crops, with_gap)[2].any()
    contour = driving_frames(crops, points, points[3] * 0.9 + 3, contour_preserve=True)
    assert contour.shape == crops.shape and 0 < (contour[0, ..., 0] > 0).mean() < (grey[0, ..., 0] > 0).mean()
    mask = background_mask(points[0], SIZE)
    cx, cy = points[0].mean(0).astype(int)
    assert mask[cy, cx] == 0 and mask[2, 2] == 1 and mask[-1, cx] == 0  # face and body are not background


# -- the pipeline -------------------------------------------------------------------------------------------

def test_pipeline_folder_round_trip(pipe, meshes, tmp_path):
    crops, points = meshes
    pipe.save_pretrained(str(tmp_path / "m"))
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["_class_name"] == "MegActorPipeline"
    assert set(index) == {"_class_name", "appearance_encoder", "unet", "condition_input_layer", "background_encoder"}
    loaded = MegActorPipeline.from_pretrained(str(tmp_path / "m"), device="cpu", dtype="fp32")
    theirs = loaded.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in pipe.net.state_dict().items())
    args = (crops[0], points[0], crops[:3], points[:3])
    a, b = pipe(*args, steps=2, seed=3), loaded(*args, steps=2, seed=3)
    assert a.shape == (3, SIZE, SIZE, 3) and a.dtype == np.uint8 and loaded.config == pipe.config
    assert np.abs(a.astype(int) - b).max() <= 2  # the same frames (up to float rounding of the attention kernels)


def test_long_clips_run_in_16_frame_windows_overlapping_by_8(pipe, meshes, monkeypatch):
    """40 frames: windows [0,16) [8,24) [16,32) [24,40) every step, every frame in one or two, and one
    output frame per driving frame; the appearance encoder runs once per step."""
    assert window_spans(40, 16, 8) == [(0, 16), (8, 24), (16, 32), (24, 40)]
    for n in (1, 15, 16, 17, 33, 57):
        spans = window_spans(n, 16, 8)
        covered = np.zeros(n, int)
        for start, end in spans:
            covered[start:end] += 1
        assert covered.min() >= 1 and all(e - s == min(16, n) for s, e in spans)
        assert all(b[0] <= a[1] - min(8, n - 1) for a, b in zip(spans, spans[1:]))
    crops, points = meshes
    idx = np.arange(40) % len(crops)
    seen, writes = [], []
    denoise, write = pipe.net.denoise, pipe.net.write_reference
    monkeypatch.setattr(pipe.net, "denoise", lambda x, *a, **k: seen.append(x.shape[2]) or denoise(x, *a, **k))
    monkeypatch.setattr(pipe.net, "write_reference", lambda *a: writes.append(1) or write(*a))
    out = pipe(crops[0], points[0], crops[idx], points[idx], steps=2, guidance_scale=1.0)
    assert out.shape == (40, SIZE, SIZE, 3)
    assert seen == [16] * 8 and len(writes) == 2  # 4 windows x 2 steps, unguided; one reference pass a step
    assert pipe.config["sampling"]["context_frames"] == 16 and pipe.config["sampling"]["context_overlap"] == 8
    assert paper()["sampling"]["context_frames"] == 16 and paper()["sampling"]["context_overlap"] == 8


def test_the_driving_video_moves_the_output(pipe, meshes):
    crops, points = meshes
    reversed_ = pipe(crops[0], points[0], crops[::-1].copy(), points[::-1].copy(), steps=2, seed=1)
    forward = pipe(crops[0], points[0], crops, points, steps=2, seed=1)
    assert not np.array_equal(forward[0], reversed_[0])
    with pytest.raises(ValueError, match="driven by the video"):
        pipe(crops[0], points[0], None, points, steps=1)


# -- training stages ------------------------------------------------------------------------------------------

def test_stages_train_the_official_modules():
    system = MegActorSystem()
    system.configure(tiny(), stage="spatial")
    net = system.build_model(tiny())
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trained} == {"appearance_encoder", "unet", "condition_input_layer",
                                                  "background_encoder"}
    assert not any(".motion_modules." in n for n in trained)
    frozen = {n for n, p in net.appearance_encoder.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("up_blocks.1.attentions.1.", "conv_norm_out.", "conv_out.")) for n in frozen)
    assert system.trainable_names(net, ["motion"]) == {n for n, _ in net.named_parameters() if ".motion_modules." in n}
    assert STAGES["temporal"]["train"] == ["motion"] and STAGES["temporal"]["num_frames"] == 16
    with pytest.raises(ValueError, match="no stage"):
        system.configure(tiny(), stage="audio")
    with pytest.raises(ValueError, match="image_encoder"):
        system.configure(paper(latent={"type": "pixel", "factor": 8}))


def test_samples_carry_the_official_inputs(meshes):
    crops, points = meshes
    system = MegActorSystem()
    system.configure(tiny(), options={"num_frames": 3, "warp_rate": 1.0, "reference_margin": 1})
    samples = system._draw({"crops": crops, "mesh": points, "valid": np.ones(len(crops), bool)},
                           np.random.default_rng(0), 6)
    assert len(samples) == 6
    for sample in samples:
        assert sample["reference"].shape == (SIZE, SIZE, 3) and sample["target"].shape == (3, SIZE, SIZE, 3)
        assert sample["driving"].shape == (3, SIZE, SIZE, 3) and sample["mask"].shape == (SIZE, SIZE)
        driving = sample["driving"]
        assert (driving[..., 0] == driving[..., 2]).all() and 0 < (driving > 0).mean() < 0.9  # grey, face region
        assert set(np.unique(sample["mask"])) == {0, 1}


# -- the official checkpoint ----------------------------------------------------------------------------------

def test_converter_places_every_official_key(tmp_path):
    """A checkpoint-steps*.ckpt as the official train.py saves it (DeepSpeed's `module.` prefix, the MagicAnimate
    module's `appearance_encoder.` / `unet.` / `unet.condition_input_layer.` names, AnimateDiff motion-module
    names, the frozen vae among them) at the tiny widths -> every tensor placed."""
    torch.manual_seed(0)
    parts = build_parts(tiny())
    for part in parts.values():  # no zero tensors: a placed tensor is recognisable
        for p in part.parameters():
            torch.nn.init.normal_(p.data, 0, 0.1)
    state = {f"module.appearance_encoder.{k}": v for k, v in parts["appearance_encoder"].state_dict().items()}
    state.update({f"module.unet.{name}": v for k, v in parts["unet"].state_dict().items()
                  for name in animatediff_keys(k)})
    state.update({f"module.unet.condition_input_layer.{k}": v
                  for k, v in parts["condition_input_layer"].state_dict().items()})
    for key, shape in {  # hard-written official names at the tiny widths
        "module.unet.condition_input_layer.refer_convs.10.weight": (32, 16, 4, 4),
        "module.unet.condition_input_layer.refer_linears_out.0.weight": (64, 32),
        "module.unet.condition_input_layer.spatial_conv_layers.2.2.weight": (32, 16, 3, 3),
        "module.unet.conv_in.weight": (32, 10, 3, 3),
        "module.unet.down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1"
        ".pos_encoder.pe": (1, 32, 32),
        "module.appearance_encoder.up_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight": (32, 32),
    }.items():
        assert tuple(state[key].shape) == shape, key
    state["module.vae.decoder.conv_out.weight"] = torch.zeros(3, 4, 3, 3)  # frozen: skipped
    state["module.not_a_part.weight"] = torch.zeros(2)
    weights = tmp_path / "RawVideoDriven" / "weights"
    weights.mkdir(parents=True)
    torch.save({"state_dict": state, "global_step": 9000}, weights / "checkpoint-steps9000.ckpt")
    torch.save({}, weights / "checkpoint-steps300.ckpt")  # an older one: the newest is taken
    assert split_key("module.unet.condition_input_layer.refer_convs.0.bias") == ("condition_input_layer",
                                                                                 "refer_convs.0.bias")

    from facefab.jobs.commands.convert import converter_of

    assert converter_of("megactor") is convert  # `facefab convert megactor SRC DST`
    dst = tmp_path / "converted"
    report = convert(str(tmp_path / "RawVideoDriven"), str(dst), config=tiny())
    assert report["unmapped"] == ["checkpoint-steps9000.ckpt:module.not_a_part.weight"] and report["skipped"] == 1
    assert report["missing"] == {"background_encoder": sorted(parts["background_encoder"].state_dict())}
    assert report["mapped"] == sum(len(p.state_dict()) for name, p in parts.items() if name != "background_encoder")
    assert not [f for _, _, files in os.walk(dst) for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    loaded = MegActorPipeline.from_pretrained(str(dst), device="cpu", dtype="fp32")
    for name in ("appearance_encoder", "unet", "condition_input_layer"):
        theirs = getattr(loaded.net, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in parts[name].state_dict().items()), name
    assert json.loads((dst / "model_index.json").read_text())["_class_name"] == "MegActorPipeline"
