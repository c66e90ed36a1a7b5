"""GAIA at the tiny config, no Ray: landmark images of a real mesh, part shapes, the pipeline folder round
trip, the two training systems on real preprocessed-style tracks (the VAE reconstructs held-out frames
better after a few dozen CPU steps and keeps the appearance when the motion is swapped; the motion
diffusion loss goes down), and the errors a misconfigured motion stage gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.models.gaia import GaiaMotionDiffusion, GaiaPipeline, GaiaVAE, landmark_batch, landmark_image, tiny
from facefab.models.gaia.config import check, motion_dim, paper
from facefab.models.shared.latents import to_unit
from facefab.training.gaia import GaiaMotionSystem, GaiaVAESystem, clip_mesh

CROP = 128  # side of the test tracks' aligned crop videos; the tiny model works at 64
SIZE = 64
FRAMES = 48
HELD = 12  # the last frames of each clip: a held-out row
VAE_STEPS, MOTION_STEPS = 40, 40


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write_track(folder, crops, landmarks, affines, audio, fps) -> dict:
    """One preprocess-style row: crop mp4 with its speech, frames.parquet (landmarks in frame pixels, pose,
    crop->frame inverse), AudioFeatures-style .npz."""
    from facefab.audio.features import log_mel, mel_windows
    from facefab.face.alignment import invert_affines
    from facefab.face.pose import pose_track
    from facefab.manifests.io import rows_to_table, write_table
    from facefab.media import write_video
    from facefab.media.arrays import save_npz

    folder.mkdir()
    n = len(crops)
    write_video(str(folder / "crop.mp4"), crops, fps, audio=audio)
    pose = pose_track(landmarks, np.ones(n, bool), 512, 512)
    inverse = invert_affines(affines)
    rows = [{"clip_id": folder.name, "track_id": 0, "frame_index": i, "time": i / fps, "bbox": [0, 0, 1, 1],
             "landmarks": landmarks[i].reshape(-1).tolist(), "pose": pose[i].tolist(),
             "inverse_transform": inverse[i].reshape(-1).tolist()} for i in range(n)]
    write_table(str(folder / "frames.parquet"), rows_to_table(rows, "frames"))
    mel = log_mel(audio)
    save_npz(str(folder / "audio.npz"), mel=mel, frame_index_map=mel_windows(n, fps, len(mel), 8))
    return {"id": folder.name, "crop_uri": str(folder / "crop.mp4"), "frames_uri": str(folder / "frames.parquet"),
            "audio_features_uri": str(folder / "audio.npz"), "fps": fps, "crop_size": CROP}


@pytest.fixture(scope="module")
def tracks(shared_data, tmp_path_factory) -> dict:
    """Two real talking clips (drive_d6, drive_d10), 48 frames each, aligned as preprocess aligns (FFHQ
    framing from the MediaPipe mesh), split into a training row (frames 0-35) and a held-out row (36-47)."""
    import cv2

    from facefab.face.alignment import points_to_crop, similarity_from_landmarks, warp_to_crop
    from facefab.face.mesh import largest_face_landmarks
    from facefab.media import probe, read_audio, read_frames

    root = tmp_path_factory.mktemp("gaia_tracks")
    out = {"train": [], "held": []}
    for name in ("drive_d6", "drive_d10"):
        src = str(shared_data / "videos" / f"{name}.mp4")
        fps = probe(src).fps
        frames = read_frames(src, start=0.0, end=(FRAMES + 2) / fps)[:FRAMES]
        landmarks = largest_face_landmarks(frames)
        assert np.isfinite(landmarks).all()
        affines = np.stack([similarity_from_landmarks(p, CROP) for p in landmarks])
        crops = np.stack([warp_to_crop(f, a, CROP) for f, a in zip(frames, affines)])
        audio = read_audio(src, start=0.0, end=FRAMES / fps)
        samples = round(len(audio) * (FRAMES - HELD) / FRAMES)
        for part, sl, sound in (("train", slice(0, FRAMES - HELD), audio[:samples]),
                                ("held", slice(FRAMES - HELD, FRAMES), audio[samples:])):
            out[part].append(_write_track(root / f"{name}_{part}", crops[sl], landmarks[sl], affines[sl], sound, fps))
        small = np.stack([cv2.resize(c, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for c in crops])
        out[name] = {"crops": small, "mesh": points_to_crop(landmarks, affines)[..., :2].astype(np.float32)
                     * (SIZE / CROP), "audio": audio, "fps": fps}
    return out


def _batch(samples: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def _tiny_pipeline(seed: int = 0, **kwargs) -> GaiaPipeline:
    torch.manual_seed(seed)
    return GaiaPipeline(GaiaVAE(**tiny()["vae"]), GaiaMotionDiffusion(**tiny()["motion"]), **kwargs)


# -- parts ----------------------------------------------------------------------------------------------

def test_landmark_image_draws_the_mesh_parts(tracks):
    mesh = tracks["drive_d6"]["mesh"][0] * (256 / SIZE)
    image = landmark_image(mesh, 256)
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    lips = np.all(image == (60, 255, 60), axis=-1)  # FACEMESH_LIPS' colour, drawn around the mouth
    ys, xs = np.nonzero(lips)
    mouth = mesh[[61, 291, 0, 17]]
    assert lips.sum() > 50
    assert mouth[:, 0].min() - 4 <= xs.min() and xs.max() <= mouth[:, 0].max() + 4
    assert mouth[:, 1].min() - 4 <= ys.min() and ys.max() <= mouth[:, 1].max() + 4
    assert image[:20].max() == 0  # nothing above the face
    assert landmark_image(np.full((478, 2), np.nan), 64).max() == 0
    batch = landmark_batch(tracks["drive_d6"]["mesh"][:3], SIZE)
    assert batch.shape == (3, 3, SIZE, SIZE) and batch.min() == -1 and batch.max() <= 1


def test_configs_and_part_shapes(tracks):
    check(**paper()), check(**tiny())
    assert motion_dim(paper()["vae"]) == paper()["motion"]["motion_dim"] == 256
    with pytest.raises(ValueError, match="motion latents"):
        check(tiny()["vae"], paper()["motion"])
    torch.manual_seed(0)
    vae = GaiaVAE(**tiny()["vae"])
    assert vae.motion_shape == (4, 4, 4) and vae.motion_dim == tiny()["motion"]["motion_dim"]
    images = to_unit(tracks["drive_d6"]["crops"][:2])
    landmarks = landmark_batch(tracks["drive_d6"]["mesh"][:2], SIZE)
    out, posterior = vae(images, landmarks)
    assert out.shape == (2, 3, SIZE, SIZE) and posterior.mean.shape == (2, 4, 4, 4)
    assert vae.encode_appearance(images).shape == (2, 8, 16, 16)
    torch.testing.assert_close(vae.decode(vae.encode_appearance(images), posterior.mean.flatten(1)),
                               vae.decode(vae.encode_appearance(images), posterior.mean))
    model = GaiaMotionDiffusion(**tiny()["motion"])
    mel = torch.randn(2, 16, 17, 80) - 6
    pred = model(torch.randn(2, 16, 64), torch.tensor([10, 900]), mel, torch.randn(2, 64), torch.zeros(2, 16, 3))
    assert pred.shape == (2, 16, 64)
    assert pred.abs().max() == 0  # the zero-initialised head: an untrained model predicts 0
    with pytest.raises(ValueError, match="mel bins"):
        model(torch.randn(1, 4, 64), torch.tensor([1]), torch.randn(1, 4, 17, 40), torch.randn(1, 64))


def test_pipeline_generates_and_round_trips(tracks, tmp_path):
    clip = tracks["drive_d6"]
    pipe = _tiny_pipeline(steps=2)
    with torch.no_grad():  # a non-zero head, so the sampled motion depends on the conditions
        torch.nn.init.normal_(pipe.motion.head[1].weight, std=0.05)
    args = (clip["crops"][0], clip["mesh"][0], clip["audio"][:16000], clip["fps"], 40)
    frames = pipe(*args, seed=3)
    assert frames.shape == (40, SIZE, SIZE, 3) and frames.dtype == np.uint8 and pipe.size == SIZE
    assert frames.std(axis=0).mean() > 0.5  # the motion latents (and so the frames) change over time
    steps = []
    posed = pipe(*args, pose=np.tile([[20.0, -10.0, 5.0]], (40, 1)), seed=3, progress=lambda i, n: steps.append(i))
    assert steps == [1, 2] and np.abs(posed.astype(int) - frames).max() > 0
    with pytest.raises(ValueError, match="aligned crop"):
        pipe(tracks["drive_d6"]["crops"][0][:32], *args[1:])

    pipe.save_pretrained(str(tmp_path))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index == {"_class_name": "GaiaPipeline", "vae": ["facefab.models.gaia", "GaiaVAE"],
                     "motion": ["facefab.models.gaia", "GaiaMotionDiffusion"], "scheduler": ["diffusers", "DDIMScheduler"]}
    loaded = GaiaPipeline.from_pretrained(str(tmp_path), device="cpu", dtype="fp32", steps=2)
    for ours, theirs in ((pipe.vae, loaded.vae), (pipe.motion, loaded.motion)):
        state = theirs.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in ours.state_dict().items())
    assert loaded.scheduler.config.prediction_type == pipe.scheduler.config.prediction_type
    np.testing.assert_array_equal(loaded(*args, seed=3), frames)
    import shutil

    shutil.rmtree(tmp_path / "motion")
    with pytest.raises(ValueError, match="no motion/ folder"):
        GaiaPipeline.from_pretrained(str(tmp_path), device="cpu")


# -- training systems ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_vae(tracks, tmp_path_factory) -> dict:
    """GaiaVAESystem: a few dozen optimiser steps on the two training rows; the export folder."""
    system = GaiaVAESystem()
    system.configure(tiny()["vae"], options={"pairs_per_clip": 16, "seed": 0})
    torch.manual_seed(0)
    model = system.build_model(tiny()["vae"])
    held = [s for row in tracks["held"] for s in system.make_eval_samples(row)]
    before = system.evaluate(model, held)
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.5, 0.999))
    pool: list[dict] = []
    for step in range(VAE_STEPS):
        if len(pool) < 8:
            pool += [s for row in tracks["train"] for s in system.make_samples(row)]
        batch, pool = pool[:8], pool[8:]
        loss, scalars = system.loss(model, _batch(batch))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    folder = tmp_path_factory.mktemp("gaia_export")
    system.export(model, str(folder))
    return {"model": model, "before": before, "after": system.evaluate(model, held), "folder": folder,
            "scalars": scalars}


def test_vae_samples_follow_the_config(tracks):
    system = GaiaVAESystem()
    system.configure(tiny()["vae"], options={"pairs_per_clip": 5, "min_gap": 4})
    samples = system.make_samples(tracks["train"][0])
    assert len(samples) == 5
    s = samples[0]
    assert s["appearance"].shape == s["target"].shape == (SIZE, SIZE, 3) and s["points"].shape == (478, 2)
    mesh, valid, frame_index, pose = clip_mesh(tracks["train"][0], None, SIZE)
    assert valid.all() and pose is not None and np.isfinite(pose).all() and len(frame_index) == FRAMES - HELD
    np.testing.assert_allclose(mesh, tracks["drive_d6"]["mesh"][: FRAMES - HELD], atol=0.05)
    matches = [np.flatnonzero(np.abs(mesh - s["points"]).max(axis=(1, 2)) < 1e-5) for s in samples]
    assert all(len(m) == 1 for m in matches)  # each target's mesh is one frame's mesh


def test_vae_reconstructs_held_frames_better_after_training(trained_vae):
    before, after = trained_vae["before"], trained_vae["after"]
    assert after["psnr"] > before["psnr"] + 5, (before, after)
    assert after["l1"] < 0.5 * before["l1"], (before, after)
    assert trained_vae["scalars"]["kl"] > 0


def test_swapping_the_motion_changes_the_output_but_not_the_appearance(tracks, trained_vae):
    """d10's mesh drives d6's appearance: the output changes, yet stays d6 (the motion latent of a landmark
    image carries no appearance), while swapping the appearance input changes the person."""
    vae = trained_vae["model"]
    d6, d10 = tracks["drive_d6"], tracks["drive_d10"]
    with torch.no_grad():
        appearance = vae.encode_appearance(to_unit(d6["crops"][[40]]))
        other_appearance = vae.encode_appearance(to_unit(d10["crops"][[40]]))
        motion = vae.encode_motion(landmark_batch(np.stack([d6["mesh"][44], d10["mesh"][44]]), SIZE)).mode()
        own, swapped = vae.decode(appearance.expand(2, -1, -1, -1), motion)
        other = vae.decode(other_appearance, motion[:1])[0]

    def l1(a, b):
        return float((a - b).abs().mean())

    motion_change, appearance_change = l1(own, swapped), l1(own, other)
    assert motion_change > 2e-3, motion_change
    assert appearance_change > 10 * motion_change, (appearance_change, motion_change)
    d6_frames, d10_frames = to_unit(d6["crops"][:36]), to_unit(d10["crops"][:36])
    nearest = {name: min(l1(swapped, f) for f in frames) for name, frames in (("d6", d6_frames), ("d10", d10_frames))}
    assert nearest["d6"] < 0.5 * nearest["d10"], nearest


@pytest.fixture(scope="module")
def motion_system(trained_vae) -> GaiaMotionSystem:
    system = GaiaMotionSystem()
    system.configure(tiny()["motion"], options={"vae": str(trained_vae["folder"]), "samples_per_clip": 4, "seed": 0})
    return system


def test_motion_samples_follow_the_config(tracks, motion_system):
    samples = motion_system.make_samples(tracks["train"][1])
    assert len(samples) == 4
    s = samples[0]
    t = tiny()["motion"]["window"]
    assert s["points"].shape == (t, 478, 2) and s["reference_points"].shape == (478, 2)
    assert s["mel"].shape == (t, 17, 80) and s["pose"].shape == (t, 3) and s["weight"].shape == (t,)
    assert s["has_pose"].tolist() == [1.0] and np.abs(s["pose"]).max() > 0.1
    assert 0.2 < s["points"].mean() < 0.8  # crop coordinates normalised by the crop side
    with pytest.raises(ValueError, match="unknown gaia-motion option"):
        motion_system.configure(tiny()["motion"], options={"nope": 1})
    with pytest.raises(ValueError, match="no stages"):
        motion_system.configure(tiny()["motion"], stage="full")


def test_motion_diffusion_loss_goes_down(tracks, motion_system, trained_vae):
    torch.manual_seed(0)
    model = motion_system.build_model(tiny()["motion"])
    fixed = _batch([s for row in tracks["train"] for s in motion_system.make_samples(row)])

    def fixed_loss() -> float:
        torch.manual_seed(123)  # the same noise, timesteps and dropout every time
        with torch.no_grad():
            return float(motion_system.loss(model, fixed)[0])

    before = fixed_loss()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(MOTION_STEPS):
        batch = _batch([s for row in tracks["train"] for s in motion_system.make_samples(row)][:4])
        loss, scalars = motion_system.loss(model, batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)
    assert 0.05 < scalars["latent_std"] < 20

    # the trained parts make a pipeline whose sampled motion follows the pose it is given
    pipe = GaiaPipeline(trained_vae["model"], model.eval(), steps=4)
    clip = tracks["drive_d6"]
    _, reference = pipe.encode_reference(clip["crops"][0], clip["mesh"][0])
    from facefab.models.shared.speech import audio_mel_windows

    mel = audio_mel_windows(clip["audio"], 24, clip["fps"], 17)
    left = pipe.sample_motion(reference, mel, np.tile([[-25.0, 0, 0]], (24, 1)), seed=1)
    right = pipe.sample_motion(reference, mel, np.tile([[25.0, 0, 0]], (24, 1)), seed=1)
    free = pipe.sample_motion(reference, mel, None, seed=1)
    assert left.shape == (24, 64) and float((left - right).abs().mean()) > 1e-3
    assert float((free - left).abs().mean()) > 1e-3


def test_motion_stage_needs_the_trained_vae(tmp_path):
    system = GaiaMotionSystem()
    with pytest.raises(ValueError, match="does not exist"):
        system.configure(tiny()["motion"], options={"vae": str(tmp_path / "nowhere")})
    system.configure(tiny()["motion"])  # no option: the run's CKPT_ROOT/gaia/vae/ (the runtime's group_uri)
    with pytest.raises(FileNotFoundError, match="train gaia-vae first"):
        system.vae_on(torch.device("cpu"))  # outside a run there is no group folder
    system.group_uri = str(tmp_path / "ckpt" / "gaia")
    with pytest.raises(FileNotFoundError, match="holds no GaiaVAE .*this run's CKPT_ROOT/gaia: train gaia-vae first"):
        system.vae_on(torch.device("cpu"))  # the run's group folder without the VAE stage's export
    (tmp_path / "empty").mkdir()
    system.configure(tiny()["motion"], options={"vae": str(tmp_path / "empty")})
    with pytest.raises(FileNotFoundError, match="holds no GaiaVAE"):
        system.vae_on(torch.device("cpu"))
    wrong = tmp_path / "paper_vae"
    GaiaVAE(**{**tiny()["vae"], "motion_channels": (8, 16, 16, 32)}).save_pretrained(str(wrong / "vae"))
    system.configure(tiny()["motion"], options={"vae": str(wrong)})
    with pytest.raises(ValueError, match="same --preset"):
        system.vae_on(torch.device("cpu"))


def test_untrained_export_of_both_stages_loads(tmp_path):
    from facefab.training.catalog import export_untrained, stages_of

    assert stages_of("gaia") == ("gaia-vae", "gaia-motion")
    export_untrained("gaia", str(tmp_path))
    pipe = GaiaPipeline.from_pretrained(str(tmp_path), device="cpu", dtype="fp32")
    assert pipe.size == SIZE and pipe.motion.config.window == tiny()["motion"]["window"]
