"""Follow-Your-Emoji at the tiny config, no Ray: landmark images from a real face mesh, retargeting, the
official guider's names and shapes, the pipeline folder round trip, progressive (keyframes, then
in-between windows with known ends) sampling, what each training stage trains, and the official
checkpoint converter."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from facefab.models.follow_your_emoji import FollowYourEmojiNet, FollowYourEmojiPipeline, LandmarkGuider, tiny
from facefab.models.follow_your_emoji.convert import convert, official_to_facefab
from facefab.models.follow_your_emoji.landmarks import (
    PUPIL_COLOUR,
    PUPILS,
    connections,
    draw_landmarks,
    expression_masks,
    landmark_images,
    retarget,
)
from facefab.models.follow_your_emoji.pipeline import build_parts, progressive_plan
from facefab.models.shared.checkpoints import animatediff_keys
from facefab.models.shared.latents import PixelCodec
from facefab.models.shared.sampling import make_scheduler, sample_inpainted
from facefab.training.follow_your_emoji import STAGES, FollowYourEmojiSystem, trainable_names

SIZE = 256  # the landmark drawing test's crop


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def meshes(shared_data) -> np.ndarray:
    """(6, 478, 2) MediaPipe meshes of 6 real frames of drive_d6, in a SIZE px square crop of the frame."""
    from facefab.face.mesh import FaceMesher
    from facefab.media import read_frames

    frames = read_frames(str(shared_data / "videos" / "drive_d6.mp4"), start=1.0, end=1.5)[:6]
    mesher = FaceMesher()
    points = np.stack([mesher(f, np.array([100, 60, 380, 420])) for f in frames])[..., :2]
    mesher.close()
    assert np.isfinite(points).all()
    side = min(frames.shape[1:3])
    return (points * (SIZE / side)).astype(np.float32)


@pytest.fixture(scope="module")
def pipe() -> FollowYourEmojiPipeline:
    torch.manual_seed(0)
    net = FollowYourEmojiNet.fresh(tiny())
    for p in net.lmk_guider.conv_out.parameters():  # a fresh guider adds zeros: make the landmarks matter
        torch.nn.init.normal_(p.data, 0, 0.05)
    return FollowYourEmojiPipeline(net, PixelCodec(4), tiny())


# -- landmarks ----------------------------------------------------------------------------------------------

def test_landmark_image_draws_the_official_expression_parts(meshes):
    mesh = meshes[0]
    image = draw_landmarks(SIZE, mesh)
    assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
    colours = {tuple(c) for c in image.reshape(-1, 3)} - {(0, 0, 0)}
    palette = {colour for _, colour in connections()} | {PUPIL_COLOUR}
    assert colours <= palette  # only the official colours, nothing anti-aliased
    # eyes, brows (both sides), the four inner-lip quarters and the pupils are all there
    assert {(180, 200, 10), (180, 220, 10), (10, 200, 180), (10, 220, 180), (100, 100, 30), (100, 150, 50),
            (120, 100, 200), (150, 120, 100), PUPIL_COLOUR} <= colours
    for index in PUPILS:  # the red squares sit on the iris centres
        x, y = mesh[index].astype(int)
        assert tuple(image[y, x - 1]) == PUPIL_COLOUR
    # the outer lips and the jaw line are not drawn: nothing coloured below the inner lips' lowest point + a margin
    chin = int(mesh[[14, 87, 317, 178, 402]][:, 1].max()) + 4
    assert not image[chin:].any()
    # landmark images for the guider: (..., 3, S, S) in [0, 1]
    images = landmark_images(meshes[:2, None] * (64 / SIZE), 64)
    assert images.shape == (2, 1, 3, 64, 64) and images.max() <= 1 and images.max() > 0.5
    masks = expression_masks(meshes[:2], SIZE)
    assert masks.shape == (2, 2, SIZE, SIZE) and masks[:, 1].sum() < masks[:, 0].sum()
    x, y = mesh[13].astype(int)  # the upper inner lip: in the face and in the expression region
    assert masks[0, 0, y, x] == 1 and masks[0, 1, y, x] == 1 and masks[0, :, 2, 2].sum() == 0


def test_retarget_moves_the_reference_by_the_driving_motion(meshes):
    reference = meshes[0] * 0.9 + 10  # another face: smaller, shifted
    driving = meshes.copy()
    driving[2] = np.nan  # no face there: filled over time
    moved = retarget(reference, driving, relative=True)
    assert moved.shape == (6, 478, 2) and np.isfinite(moved).all()
    np.testing.assert_allclose(moved[0], reference, atol=1e-4)  # the first frame is the reference's own face
    motion = moved[5] - moved[0]
    expected = (meshes[5] - meshes[0]) * 0.9  # the driving motion, scaled onto the reference
    np.testing.assert_allclose(motion, expected, atol=0.05)
    np.testing.assert_allclose(moved[2], (moved[1] + moved[3]) / 2, atol=1e-3)  # interpolated
    absolute = retarget(reference, driving, relative=False)
    np.testing.assert_allclose(absolute[0], meshes[0] * 0.9 + 10, atol=1e-3)  # the driving face placed on it
    different = retarget(meshes[3], meshes, relative=True)
    assert np.abs(different[0] - meshes[3]).max() < 1e-4 and np.abs(absolute[0] - different[0]).max() > 1


# -- the guider -------------------------------------------------------------------------------------------

def test_guider_has_the_official_names_and_shapes():
    guider = LandmarkGuider(conditioning_embedding_channels=320, block_out_channels=(16, 32, 96, 256))  # infer.py
    shapes = {k: tuple(v.shape) for k, v in guider.state_dict().items()}
    assert shapes == {
        "conv_in.weight": (16, 3, 3, 3), "conv_in.bias": (16,),
        "blocks.0.weight": (16, 16, 3, 3), "blocks.0.bias": (16,), "blocks.1.weight": (32, 16, 3, 3), "blocks.1.bias": (32,),
        "blocks.2.weight": (32, 32, 3, 3), "blocks.2.bias": (32,), "blocks.3.weight": (96, 32, 3, 3), "blocks.3.bias": (96,),
        "blocks.4.weight": (96, 96, 3, 3), "blocks.4.bias": (96,), "blocks.5.weight": (256, 96, 3, 3),
        "blocks.5.bias": (256,), "conv_out.weight": (320, 256, 3, 3), "conv_out.bias": (320,)}
    with torch.no_grad():
        out = guider(torch.rand(1, 3, 2, 64, 64))
    assert out.shape == (1, 320, 2, 8, 8) and not out.any()  # zero conv_out: a fresh guider adds nothing
    tiny_guider = build_parts(tiny(), only=("lmk_guider",))["lmk_guider"]
    assert tiny_guider(torch.rand(1, 3, 64, 64)).shape == (1, 32, 16, 16)  # the tiny latent grid and width


# -- the pipeline -------------------------------------------------------------------------------------------

def _inputs(meshes: np.ndarray, n: int) -> tuple:
    rng = np.random.default_rng(0)
    reference = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    scaled = meshes * (64 / SIZE)
    driving = scaled[np.arange(n) % len(scaled)]
    own = scaled[3] * 0.9 + 3  # the reference's own face: another expression, smaller
    return reference, own, np.zeros((n, 64, 64, 3), np.uint8), driving


def test_pipeline_folder_round_trip(pipe, meshes, tmp_path):
    pipe.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "FollowYourEmojiPipeline"
    assert set(index) == {"_class_name", "reference_net", "denoising_unet", "lmk_guider"}
    loaded = FollowYourEmojiPipeline.from_pretrained(str(tmp_path), device="cpu", dtype="fp32")
    theirs = loaded.net.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in pipe.net.state_dict().items())
    assert loaded.config == pipe.config and loaded.size == 64
    args = _inputs(meshes, 3)
    a, b = pipe(*args, steps=2, seed=1), loaded(*args, steps=2, seed=1)
    assert a.shape == (3, 64, 64, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= 1  # the same frames (up to float rounding of the attention kernels)
    assert not np.array_equal(a, pipe(*args, steps=2, seed=1, relative=False))  # other landmarks, other frames


def test_progressive_plan_covers_every_frame_with_known_ends():
    for n, window in ((9, 8), (20, 8), (64, 8), (300, 16)):
        plan = progressive_plan(n, window)
        done: set[int] = set()
        for frames, known in plan:
            assert 2 <= len(frames) <= window and np.all(np.diff(frames) > 0)
            assert set(known.tolist()) <= done  # known frames were generated by an earlier window
            if known.size:
                assert list(known) == [frames[0], frames[-1]]
            done |= set(frames.tolist())
        assert done == set(range(n)) and not plan[0][1].size
        assert len(plan[0][0]) >= 3 and plan[0][0][0] == 0 and plan[0][0][-1] == n - 1  # the keyframes
    assert [list(f) for f, _ in progressive_plan(5, 8)] == [[0, 1, 2, 3, 4]]


def test_inpainting_holds_the_known_frames():
    scheduler = make_scheduler(tiny()["scheduler"])
    known = torch.randn(1, 3, 5, 4, 4)
    mask = torch.tensor([True, False, False, False, True])
    seen = []

    def predict(latents, t):
        seen.append(latents.clone())
        return torch.zeros_like(latents)

    out = sample_inpainted(predict, scheduler, torch.randn(1, 3, 5, 4, 4), 4, known, mask, seed=0)
    assert torch.equal(out[:, :, [0, 4]], known[:, :, [0, 4]])  # the known frames come back exactly
    # every step the model sees the known frames noised to that step, not its own previous output
    late = seen[-1][:, :, [0, 4]]
    assert (late - known[:, :, [0, 4]]).abs().mean() < (seen[0][:, :, [0, 4]] - known[:, :, [0, 4]]).abs().mean()


def test_progressive_sampling_gives_every_frame_and_keeps_the_keyframes(pipe, meshes, monkeypatch):
    n = 20  # > the tiny window of 8: keyframes, then in-between windows
    plan = progressive_plan(n, tiny()["sampling"]["context_frames"])
    keyframes = plan[0][0]
    import facefab.models.follow_your_emoji.pipeline as module

    calls = []
    original = module.sample_inpainted

    def spy(predict, scheduler, latents, steps, known=None, known_mask=None, seed=0, progress=None):
        out = original(predict, scheduler, latents, steps, known, known_mask, seed, progress)
        calls.append((known_mask.clone(), known.clone(), out.clone()))
        return out

    monkeypatch.setattr(module, "sample_inpainted", spy)
    progress = []
    frames = pipe(*_inputs(meshes, n), steps=2, seed=0, progress=lambda i, total: progress.append((i, total)))
    assert frames.shape == (n, 64, 64, 3) and frames.dtype == np.uint8
    assert len(calls) == len(plan) and progress[-1] == (len(plan), len(plan))
    first = calls[0][2]  # the keyframe window's latents
    assert not calls[0][0].any()
    for (mask, known, out), (idx, _) in zip(calls[1:], plan[1:]):
        assert mask[0] and mask[-1] and not mask[1:-1].any()
        assert torch.equal(out[:, :, mask], known[:, :, mask])  # the keyframes are held
        for j, frame in enumerate(idx[[0, -1]]):  # ... at what the keyframe window made of them
            k = int(np.flatnonzero(keyframes == frame)[0])
            assert torch.equal(known[:, :, [0, -1][j]], first[:, :, k])
    overlapping = FollowYourEmojiPipeline(pipe.net, PixelCodec(4), {**tiny(), "sampling": {
        **tiny()["sampling"], "long_video": "overlapping"}})
    assert overlapping(*_inputs(meshes, 10), steps=2, seed=0).shape == (10, 64, 64, 3)


# -- training -------------------------------------------------------------------------------------------------

def test_stages_train_the_papers_parts():
    system = FollowYourEmojiSystem()
    system.configure(tiny(), stage="single")
    net = system.build_model(tiny())
    trained = {n for n, p in net.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trained} == {"reference_net", "denoising_unet", "lmk_guider"}
    assert not any(".motion_modules." in n for n in trained)
    assert trainable_names(net, ["motion"]) == {n for n, _ in net.named_parameters() if ".motion_modules." in n}
    assert STAGES["temporal"] == {"num_frames": 16, "train": ["motion"]}
    with pytest.raises(ValueError, match="no stage"):
        system.configure(tiny(), stage="audio")


# -- the official checkpoint ----------------------------------------------------------------------------------

def test_converter_places_every_official_key(tmp_path):
    torch.manual_seed(0)
    parts = build_parts(tiny())
    for part in parts.values():  # no zero tensors: a placed tensor is recognisable
        for p in part.parameters():
            torch.nn.init.normal_(p.data, 0, 0.1)
    official = tmp_path / "pretrained_models" / "follow-your-emoji"
    official.mkdir(parents=True)
    unet = {name: v for k, v in parts["denoising_unet"].state_dict().items() for name in animatediff_keys(k)}
    # hard-written official names (models/unet, AnimateDiff motion modules, models/guider.py) at the tiny widths
    for key, shape in {
        "conv_in.weight": (32, 3, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight": (32, 32),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (32, 32),
        "down_blocks.0.motion_modules.0.temporal_transformer.proj_in.weight": (32, 32),
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight": (32, 32),
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe":
            (1, 32, 32),
        "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.norms.1.weight": (32,),
        "mid_block.motion_modules.0.temporal_transformer.transformer_blocks.0.ff_norm.bias": (64,),
        "up_blocks.1.motion_modules.1.temporal_transformer.transformer_blocks.0.ff.net.0.proj.weight": (256, 32),
    }.items():
        assert tuple(unet[key].shape) == shape, key
    torch.save(unet, official / "unet.pth")
    torch.save(parts["reference_net"].state_dict(), official / "referencenet.pth")
    guider = parts["lmk_guider"].state_dict()
    assert {"conv_in.weight", "blocks.3.weight", "conv_out.bias"} <= set(guider)
    torch.save({**guider, "not_a_guider_key": torch.zeros(2)}, official / "lmk_guider.pth")
    assert official_to_facefab("denoising_unet", "up_blocks.1.motion_modules.0.temporal_transformer.transformer_blocks"
                               ".0.attention_blocks.1.to_out.0.weight") == \
        "up_blocks.1.motion_modules.0.transformer_blocks.0.attn2.to_out.0.weight"

    from facefab.jobs.commands.convert import converter_of

    assert converter_of("follow-your-emoji") is convert  # `facefab convert follow-your-emoji SRC DST`
    dst = tmp_path / "converted"
    report = convert(str(tmp_path), str(dst), config=tiny())
    assert report["unmapped"] == ["lmk_guider.pth:not_a_guider_key"] and report["missing"] == {}
    assert report["mapped"] == sum(len(p.state_dict()) for p in parts.values())
    assert not [f for _, _, files in os.walk(dst) for f in files if f.endswith((".bin", ".pt", ".pth"))]
    loaded = FollowYourEmojiPipeline.from_pretrained(str(dst), device="cpu", dtype="fp32")
    for name, part in parts.items():
        theirs = getattr(loaded.net, name).state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in part.state_dict().items()), name
    assert json.loads((dst / "model_index.json").read_text())["_class_name"] == "FollowYourEmojiPipeline"
