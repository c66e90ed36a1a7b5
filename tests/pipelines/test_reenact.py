"""`facefab animate --driving`: the weight-free mesh-driven reenactment on real talking videos."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pandas as pd

from facefab.face.alignment import umeyama_similarity
from facefab.face.mesh import largest_face_landmarks
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import finite_pearson, image_psnr, image_ssim
from facefab.manifests.io import read_manifest
from facefab.media import probe, read_audio, read_frames, read_image, write_video

# mesh points that keep a face's identity and move little with speech: the oval above the jaw line,
# brows, eye corners, nose
SHAPE_POINTS = np.array([10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 93, 234, 127, 162, 21, 54, 103, 67,
                         109, 70, 63, 105, 66, 107, 336, 296, 334, 293, 300, 33, 133, 362, 263, 1, 4, 5, 6,
                         168, 98, 327, 129, 358])


def _cut(src: str, dst: str, seconds: float) -> str:
    write_video(dst, read_frames(src, end=seconds), probe(src).fps, audio=read_audio(src, end=seconds, mono=False,
                                                                                       sample_rate=44100),
                audio_rate=44100)
    return dst


def _shape(points: np.ndarray) -> np.ndarray:
    """The identity points of a mesh in a canonical frame (similarity-aligned to a fixed layout)."""
    xy = points[SHAPE_POINTS, :2]
    canonical = (xy - xy.mean(axis=0)) / np.linalg.norm(xy - xy.mean(axis=0), axis=1).mean()
    return canonical


def _shape_distance(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _shape(a), _shape(b)
    m = umeyama_similarity(a, b)
    return float(np.linalg.norm(a @ m[:, :2].T + m[:, 2] - b, axis=1).mean())


def test_self_reenactment_beats_copying_the_first_frame(shared_data, tmp_path):
    """Reference = the first frame of a real talking video, driving = that video: the weight-free
    reenactment is nearer the real frames than the first frame held still (PSNR, SSIM, and the mean
    landmark distance at most half the copy's)."""
    from facefab.operators.base import RunContext
    from facefab.operators.reenact import ReenactJobConfig
    from facefab.pipelines.animate import animate_inputs, build_operators
    from facefab.pipelines.engine import run_local

    driving = _cut(str(shared_data / "videos" / "drive_d6.mp4"), str(tmp_path / "d6.mp4"), 3.0)
    real = read_frames(driving)
    reference = str(tmp_path / "first.png")
    cv2.imwrite(reference, real[0][..., ::-1])
    config = ReenactJobConfig(paste_back=True, watermark=False, crf=12)
    (row,) = run_local(build_operators(config), animate_inputs(reference=reference, driving=driving),
                       RunContext(str(tmp_path / "out")))
    assert row["status"] == "ok", row["error"]
    info = probe(row["out_uri"])
    assert (info.width, info.height, info.fps, info.num_frames) == (real.shape[2], real.shape[1], 30.0, len(real))
    assert info.has_audio and row["driving_face_fraction"] == 1.0

    out = read_frames(row["out_uri"])
    frames = range(1, len(real))
    ours = np.mean([image_psnr(out[t], real[t]) for t in frames]), np.mean([image_ssim(out[t], real[t]) for t in frames])
    copy = np.mean([image_psnr(real[0], real[t]) for t in frames]), np.mean([image_ssim(real[0], real[t])
                                                                               for t in frames])
    marks_real, marks_out = largest_face_landmarks(real)[1:, :, :2], largest_face_landmarks(out)[1:, :, :2]
    distance = float(np.nanmean(np.linalg.norm(marks_out - marks_real, axis=-1)))
    copy_distance = float(np.nanmean(np.linalg.norm(marks_real[:1] - marks_real, axis=-1)))
    print(f"self-reenactment drive_d6: PSNR {ours[0]:.2f} vs copy {copy[0]:.2f} dB, SSIM {ours[1]:.4f} vs "
          f"{copy[1]:.4f}, landmark distance {distance:.2f} vs {copy_distance:.2f} px")
    assert ours[0] > copy[0] and ours[1] > copy[1]
    assert distance <= 0.5 * copy_distance


def test_cross_identity_follows_the_driving_mouth_keeps_the_portrait_and_fails_only_bad_rows(
        shared_data, tmp_path, ray_local):
    """A painted portrait driven by a real talking video through the actor pool: its mouth opens and
    closes with the driver's (correlation >= 0.6) while its face shape stays its own; a broken driving
    video and one without a face fail their rows; the rerun resumes."""
    from facefab.jobs.cli import main

    driving = _cut(str(shared_data / "videos" / "drive_d10.mp4"), str(tmp_path / "d10.mp4"), 3.0)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    faceless = str(tmp_path / "faceless.mp4")
    write_video(faceless, np.full((20, 128, 128, 3), 90, np.uint8), 25.0)
    portrait = str(shared_data / "portraits" / "lp_s9.jpg")
    manifest = tmp_path / "jobs.parquet"
    pd.DataFrame([{"reference_uri": portrait, "video_uri": driving, "out_name": "mona"},
                  {"reference_uri": portrait, "video_uri": str(broken), "out_name": "broken"},
                  {"reference_uri": portrait, "video_uri": faceless, "out_name": "faceless"}]).to_parquet(manifest)
    out = str(tmp_path / "out")
    args = ["animate", str(manifest), "--out", out, "--size", "256", "--no-progress", "--max-failed-fraction", "1"]
    assert main(args) == 0
    got = {r["out_name"]: r for r in read_manifest(out).to_pylist()}
    assert {n: r["status"] for n, r in got.items()} == {"mona": "ok", "broken": "failed", "faceless": "failed"}
    assert "driving video" in got["broken"]["error"]["message"]
    assert "no face found" in got["faceless"]["error"]["message"]

    mona = got["mona"]
    info = probe(mona["out_uri"])
    drive = read_frames(driving)
    assert (info.width, info.height, info.fps, info.num_frames) == (256, 256, 30.0, len(drive)) and info.has_audio
    animated = largest_face_landmarks(read_frames(mona["out_uri"]))
    driver = largest_face_landmarks(drive)
    opening = finite_pearson(mouth_open_ratio(animated), mouth_open_ratio(driver))
    reference = largest_face_landmarks(read_image(portrait)[None])[0]
    own = np.nanmean([_shape_distance(a, reference) for a in animated])
    theirs = np.nanmean([_shape_distance(a, d) for a, d in zip(animated, driver, strict=True)])
    print(f"cross-identity lp_s9 <- drive_d10: mouth opening r={opening:.3f}; face shape distance to the portrait "
          f"{own:.4f}, to the driver {theirs:.4f}")
    assert opening >= 0.6
    assert own < 0.5 * theirs

    stamp = os.stat(mona["out_uri"]).st_mtime_ns
    assert main(args) == 0  # resumes: the done row is not redone
    assert os.stat(mona["out_uri"]).st_mtime_ns == stamp

    # --absolute: the driving face's own shape, not the portrait's
    absolute = str(tmp_path / "absolute")
    assert main(["animate", "--reference", portrait, "--driving", driving, "--absolute", "--out", absolute,
                 "--size", "256", "--max-duration", "0.5", "--no-progress"]) == 0
    (row,) = read_manifest(absolute).to_pylist()
    copied = largest_face_landmarks(read_frames(row["out_uri"]))
    own_absolute = np.nanmean([_shape_distance(a, reference) for a in copied])
    theirs_absolute = np.nanmean([_shape_distance(a, d) for a, d in zip(copied, driver, strict=False)])
    print(f"--absolute: face shape distance to the portrait {own_absolute:.4f} (relative: {own:.4f}), "
          f"to the driver {theirs_absolute:.4f} (relative: {theirs:.4f})")
    assert own_absolute > 1.5 * own and theirs_absolute < 0.9 * theirs


def test_trajectories_move_the_portrait_along_them_in_every_format(shared_data, tmp_path):
    """Sparse tracks (the chin and lower lip pulled down and back twice, the eyes and brows held) move
    the painted portrait: its measured chin follows the tracks, its brows stay; the same tracks as JSON,
    as a Parquet table and as a flow artifact in aligned-crop pixels give the same motion; a table
    without the track columns fails its row."""
    import json

    from facefab.face.alignment import similarity_from_landmarks
    from facefab.operators.base import RunContext
    from facefab.operators.reenact import TrajectoryJobConfig
    from facefab.pipelines.animate import animate_inputs, build_operators
    from facefab.pipelines.engine import run_local

    portrait = str(shared_data / "portraits" / "lp_s9.jpg")
    mesh = largest_face_landmarks(read_image(portrait)[None])[0][:, :2]
    moving, held = [152, 148, 377, 17, 14, 87, 317, 200], [33, 133, 362, 263, 70, 300, 105, 334, 1, 168]
    n = 40
    drop = 0.06 * np.ptp(mesh[:, 1]) * np.sin(np.pi * np.arange(n) / (n / 2)) ** 2  # pixels, twice down and up
    tracks = np.concatenate([mesh[moving][:, None] + np.stack([np.zeros(n), drop], 1)[None],
                             np.repeat(mesh[held][:, None], n, axis=1)])
    files = {"json": tmp_path / "tracks.json", "parquet": tmp_path / "tracks.parquet", "npz": tmp_path / "flow.npz"}
    files["json"].write_text(json.dumps({"tracks": tracks.tolist()}))
    pd.DataFrame([{"track": k, "frame": t, "x": x, "y": y} for k, track in enumerate(tracks)
                  for t, (x, y) in enumerate(track)]).to_parquet(files["parquet"])
    to_crop = similarity_from_landmarks(largest_face_landmarks(read_image(portrait)[None])[0], 128)
    np.savez(files["npz"], trajectories=(tracks @ to_crop[:, :2].T + to_crop[:, 2]).astype(np.float32),
             flow_size=np.int32(128))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")

    config = TrajectoryJobConfig(paste_back=True, watermark=False, crf=12)
    chins = {}
    for name, path in [*files.items(), ("bad", bad)]:
        (row,) = run_local(build_operators(config), animate_inputs(reference=portrait, trajectories=str(path)),
                           RunContext(str(tmp_path / "out" / name)))
        if name == "bad":
            assert row["status"] == "failed" and "track, frame, x, y" in str(row["error"])
            continue
        assert row["status"] == "ok", row["error"]
        info = probe(row["out_uri"])
        assert (info.fps, info.num_frames, row["tracks"]) == (25.0, n, len(tracks))
        measured = largest_face_landmarks(read_frames(row["out_uri"]))
        chins[name] = measured[:, 152, 1] - measured[0, 152, 1]
        brows = np.nanmax(np.abs(measured[:, [105, 334], 1] - measured[:1, [105, 334], 1]))
        print(f"trajectories {name}: chin moved {np.nanmax(chins[name]):.1f} px for {drop.max():.1f}, "
              f"r={finite_pearson(chins[name], drop):.3f}; brows {brows:.2f} px")
        assert finite_pearson(chins[name], drop) > 0.9
        assert 0.6 < np.nanmax(chins[name]) / drop.max() < 1.4
        assert brows < 0.25 * drop.max()
    assert np.nanmax(np.abs(chins["json"] - chins["parquet"])) < 0.5
    assert np.nanmax(np.abs(chins["json"] - chins["npz"])) < 1.0


def test_trajectories_from_a_preprocess_root_by_clip(talking_root, talking_clips, shared_data, tmp_path):
    """`--trajectories ROOT#drive_d6` takes that track's flow trajectories and its clip's frame rate: the
    same video as from its flow artifact; a bare ROOT with two tracks, or an unknown clip, fails its row
    naming the tracks to choose from."""
    from facefab.operators.base import RunContext
    from facefab.operators.reenact import TrajectoryJobConfig
    from facefab.pipelines.animate import animate_inputs, build_operators
    from facefab.pipelines.engine import run_local

    track = talking_clips["drive_d6"]
    portrait = str(shared_data / "portraits" / "lp_s9.jpg")
    config = TrajectoryJobConfig(watermark=False, crf=12, max_duration=1.0, size=192)
    out = {}
    for name, uri in [("root", f"{talking_root}#drive_d6"), ("by_id", f"{talking_root}#{track['id']}"),
                      ("artifact", track["flow_uri"]), ("bare", talking_root), ("unknown", f"{talking_root}#nope")]:
        (row,) = run_local(build_operators(config), animate_inputs(reference=portrait, trajectories=uri),
                           RunContext(str(tmp_path / name)))
        out[name] = row
    for name in ("bare", "unknown"):
        assert out[name]["status"] == "failed" and track["id"] in str(out[name]["error"]), out[name]["error"]
    assert "2 tracks" in str(out["bare"]["error"]) and "no track 'nope'" in str(out["unknown"]["error"])
    for name in ("root", "by_id", "artifact"):
        assert out[name]["status"] == "ok", out[name]["error"]
    assert out["root"]["fps"] == out["by_id"]["fps"] == track["fps"] and out["artifact"]["fps"] == 25.0
    assert out["root"]["frames"] == round(track["fps"]) and out["artifact"]["frames"] == 25
    root_video, artifact_video = read_frames(out["root"]["out_uri"]), read_frames(out["artifact"]["out_uri"])
    assert np.array_equal(root_video, read_frames(out["by_id"]["out_uri"]))
    assert image_psnr(root_video[:25], artifact_video) > 40  # the same tracks placed the same way
    assert np.abs(root_video[-1].astype(int) - root_video[0]).mean() > 0.5  # and they move the portrait
