"""Face-Adapter at the tiny config, no Ray: the official token mappers' names and shapes, the Spatial Condition
Generator's landmark image / areas / condition, the net's output shape, the pipeline folder round trip, both
modes of the pipeline (and a swap keeps the target beyond the adapting area), what training trains and the
samples it draws."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.media import resize_frames
from facefab.models.face_adapter import FaceAdapterNet, FaceAdapterPipeline, ID2Token, Image2Token, paper, tiny
from facefab.models.face_adapter.conditions import (
    POINTS70,
    adapting_area,
    blend_mask,
    face_hull,
    landmark_image,
    spatial_condition,
)
from facefab.models.face_adapter.config import check
from facefab.models.shared.latents import PixelCodec
from facefab.training.face_adapter import FaceAdapterSystem

SIZE = 64
CROP = 96  # the crops given to the pipeline: resized to the model's 64 and back


@pytest.fixture(scope="module")
def meshes(shared_data) -> tuple[np.ndarray, np.ndarray]:
    """4 frames of drive_d6 through one aligned crop: (4, CROP, CROP, 3) crops, (4, 478, 2) meshes in crop pixels."""
    from facefab.face.alignment import points_to_crop, similarity_from_landmarks, warp_to_crop
    from facefab.face.mesh import FaceMesher
    from facefab.media import read_frames

    video = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=2.0, end=2.5)[:4]
    with_z = np.stack([FaceMesher()(frame, np.array([100, 60, 380, 420])) for frame in video])
    fixed = similarity_from_landmarks(with_z[0], CROP)
    crops = np.stack([warp_to_crop(frame, fixed, CROP) for frame in video])
    points = points_to_crop(with_z[..., :2], np.repeat(fixed[None], len(video), axis=0)).astype(np.float32)
    assert np.isfinite(points).all()
    return crops, points


@pytest.fixture(scope="module")
def pipe() -> FaceAdapterPipeline:
    torch.manual_seed(0)
    return FaceAdapterPipeline(FaceAdapterNet.fresh(tiny()), PixelCodec(4), tiny())


def test_token_mappers_have_the_official_names_and_shapes():
    id2token = ID2Token(id_dim=512, text_hidden_size=768, max_length=77, num_layers=3)  # infer.py's
    names = set(id2token.state_dict())
    assert {"id_proj.weight", "query", "id2t.layers.2.multihead_attn.in_proj_weight"} <= names
    assert id2token(torch.randn(2, 512)).shape == (2, 77, 768)
    image2token = Image2Token(visual_hidden_size=1280, text_hidden_size=768, max_length=77, num_layers=3)
    assert {"visual_proj.weight", "query", "i2t.layers.0.self_attn.in_proj_weight"} <= set(image2token.state_dict())
    assert image2token(torch.randn(2, 257, 1280)).shape == (2, 77, 768)
    small = tiny()
    net = FaceAdapterNet.fresh(small)
    tokens = net.identity_tokens(torch.rand(3, 3, SIZE, SIZE) * 2 - 1)
    assert tokens.shape == (3, small["identity"]["tokens"], small["unet"]["cross_attention_dim"])
    assert net.attribute_tokens(torch.zeros(3, 3, SIZE, SIZE)).shape == (3, small["attribute"]["tokens"], 32)


def test_configs_check():
    assert check(paper())["unet"]["block_out_channels"] == [320, 640, 1280, 1280]
    assert check(tiny())["size"] == SIZE
    # the frozen SD1.5 UNet keeps its epsilon schedule; the from-scratch tiny UNet learns v (epsilon's low-SNR
    # error amplification turns a small net's samples into saturated noise)
    assert paper()["scheduler"]["prediction_type"] == "epsilon"
    assert tiny()["scheduler"]["prediction_type"] == "v_prediction" and tiny()["scheduler"]["rescale_betas_zero_snr"]
    with pytest.raises(ValueError, match="downsamples"):
        check(tiny(controlnet={"conditioning_embedding_out_channels": [8, 16]}))
    with pytest.raises(ValueError, match="arcface_path"):
        check(tiny(identity={**tiny()["identity"], "backbone": "arcface"}))


def test_spatial_condition_generator(meshes):
    _, points = meshes
    image = landmark_image(points[0], CROP)
    assert image.shape == (CROP, CROP, 3) and image.dtype == np.uint8
    coloured = np.unique(image.reshape(-1, 3), axis=0)
    assert 20 < len(coloured) <= len(POINTS70) + 1  # the rainbow dots (+ black)
    hull, grown = face_hull(points[0], CROP), face_hull(points[0], CROP, dilate=0.06)
    assert set(np.unique(hull)) == {0.0, 1.0} and grown.sum() > hull.sum() and (grown >= hull).all()
    assert 0.1 < hull.mean() < 0.8
    moved = points[0] + np.float32([12, 0])
    union = adapting_area(points[0], moved, size=CROP, dilate=0.06)
    assert (union >= grown).all() and union.sum() > grown.sum()
    soft = blend_mask(grown, 0.03)
    assert (soft[grown > 0] > 0.4).all() and soft.max() <= 1.0
    far = face_hull(points[0], CROP, dilate=0.06 + 4 * 0.03) == 0
    assert (soft[far] == 0).all()  # the base image is kept exactly beyond the area and the feather
    lmk, bg = torch.ones(1, 3, 4, 4), -torch.ones(1, 3, 4, 4)
    area = torch.zeros(1, 1, 4, 4)
    area[..., :2, :] = 1
    cond = spatial_condition(lmk, area, bg)
    assert (cond[..., :2, :] == 1).all() and (cond[..., 2:, :] == -1).all()


def test_net_output_and_area_shapes():
    net = FaceAdapterNet.fresh(tiny())
    noisy, cond = torch.randn(2, 3, SIZE // 4, SIZE // 4), torch.zeros(2, 3, SIZE, SIZE)
    out = net(noisy, torch.tensor([10, 500]), cond, net.identity_tokens(cond), net.attribute_tokens(cond))
    assert out.shape == noisy.shape
    assert net.adapting_area(cond, cond).shape == (2, 1, SIZE, SIZE)


def test_pipeline_folder_round_trip(pipe, tmp_path):
    pipe.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index.pop("_class_name") == "FaceAdapterPipeline"
    assert sorted(index) == ["area_predictor", "attribute_encoder", "controlnet", "face_id", "id2token",
                             "image2token", "unet"]
    loaded = FaceAdapterPipeline.from_pretrained(str(tmp_path), device="cpu", dtype="fp32")
    theirs = loaded.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in pipe.net.state_dict().items())
    assert loaded.size == SIZE and loaded.config == pipe.config


@pytest.mark.parametrize("mode", ["swap", "reenact"])
def test_pipeline_generates_both_modes(pipe, meshes, mode):
    crops, points = meshes
    calls = []
    out = pipe(crops[0], crops[1:], points[1:], mode=mode, source_landmarks=points[0], steps=2, batch_size=2,
               progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (3, CROP, CROP, 3) and out.dtype == np.uint8
    assert calls == [(2, 3), (3, 3)]
    base = crops[1:] if mode == "swap" else crops[:1]
    assert not np.array_equal(out, np.broadcast_to(base, out.shape))
    if mode == "swap":  # far outside the adapting area: the target's own pixels
        for frame, target, mesh in zip(out, crops[1:], points[1:]):
            far = face_hull(mesh, CROP, dilate=0.2) == 0
            assert far.mean() > 0.2 and (frame[far] == target[far]).all()
            inside = face_hull(mesh, CROP) > 0
            assert np.abs(frame[inside].astype(int) - target[inside]).mean() > 5


def test_training_trains_the_adapter_and_the_tiny_unet():
    system = FaceAdapterSystem()
    system.configure(tiny())
    net = system.build_model(tiny())
    trained = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trained == {"unet", "controlnet", "id2token", "image2token", "area_predictor", "face_id",
                       "attribute_encoder"}
    frozen = FaceAdapterSystem()
    frozen.configure(tiny(train_unet=False), options={"init": "unused"})  # the paper's frozen UNet
    assert "unet" not in frozen.options["train"]
    with pytest.raises(ValueError, match="freezes the UNet"):
        FaceAdapterSystem().configure(tiny(train_unet=False))


def test_samples_and_loss(meshes):
    crops, points = meshes
    system = FaceAdapterSystem()
    system.configure(tiny(), options={"reference_margin": 1})
    small = resize_frames(crops, (SIZE, SIZE))
    clip = {"crops": small, "mesh": points * (SIZE / CROP), "valid": np.ones(len(crops), bool)}
    samples = system.draw(clip, np.random.default_rng(0), 4)
    assert len(samples) == 4
    for s in samples:
        assert s["source"].shape == s["target"].shape == s["landmarks"].shape == (SIZE, SIZE, 3)
        assert (s["reenact_area"] >= s["swap_area"]).all() and s["swap_area"].any()
    batch = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
    torch.manual_seed(0)
    net = system.build_model(tiny())
    loss, logs = system.loss(net, batch)
    assert torch.isfinite(loss) and set(logs) == {"mse", "area_bce"}
    loss.backward()
    assert net.controlnet.controlnet_mid_block.weight.grad is not None
