"""`facefab swap`: the weight-free mesh swap of a shared portrait onto a shared talking video."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from facefab.face.mesh import largest_face_landmarks
from facefab.face.parsing import mouth_open_ratio
from facefab.face.scores import finite_pearson, image_psnr
from facefab.jobs.cli import main
from facefab.manifests.io import read_manifest
from facefab.media import probe, read_frames, read_image, read_metadata
from facefab.media.provenance import read_tag
from face_regions import face_and_away

SECONDS = 2.0
# identity ratios of a face, each a distance over the inter-ocular distance: eye widths, mouth width, nose
# bridge to tip, nose tip to upper lip, eyes to mouth, brows to eyes, nose width
PAIRS = [(33, 133), (362, 263), (61, 291), (168, 4), (4, 0), (168, 13), (105, 159), (334, 386), (98, 327)]


def _ratios(points: np.ndarray) -> np.ndarray:
    xy = points[..., :2]
    iod = np.linalg.norm(xy[..., 468, :] - xy[..., 473, :], axis=-1)[..., None]
    return np.stack([np.linalg.norm(xy[..., a, :] - xy[..., b, :], axis=-1) for a, b in PAIRS], -1) / iod


@pytest.fixture(scope="module")
def swapped(shared_data, tmp_path_factory, ray_local) -> dict:
    video = str(shared_data / "videos" / "drive_d10.mp4")
    source = str(shared_data / "portraits" / "lp_s9.jpg")
    out = tmp_path_factory.mktemp("swap") / "out"
    assert main(["swap", "--video", video, "--source", source, "--out", str(out), "--max-duration", str(SECONDS),
                 "--watermark", "false", "--crf", "12", "--no-progress"]) == 0
    (row,) = read_manifest(str(out)).to_pylist()
    return {"row": row, "video": video, "source": source, "out": out}


def test_the_source_face_follows_the_video_face(swapped):
    """The mouth opens and closes with the video's (r >= 0.8), the face's proportions move to the
    source's, and pixels away from the face are the video's."""
    row = swapped["row"]
    assert row["status"] == "ok", row["error"]
    video, output = read_frames(swapped["video"], end=SECONDS), read_frames(row["out_uri"])
    info = probe(row["out_uri"])
    assert output.shape == video.shape and info.fps == probe(swapped["video"]).fps and info.has_audio
    assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == "weightfree-swap"
    before, after = largest_face_landmarks(video), largest_face_landmarks(output)
    mouth_video, mouth_out = mouth_open_ratio(before), mouth_open_ratio(after)
    r = finite_pearson(mouth_out, mouth_video)
    source = read_image(swapped["source"])
    target = _ratios(largest_face_landmarks(source[None])[0])
    was = np.linalg.norm(_ratios(before) - target, axis=-1)
    now = np.linalg.norm(_ratios(after) - target, axis=-1)
    print(f"mouth opening r={r:.3f}; identity-ratio distance to the source {np.nanmean(was):.3f} -> "
          f"{np.nanmean(now):.3f}")
    assert r >= 0.8
    assert np.nanmean(now) < 0.6 * np.nanmean(was)
    for t in range(0, len(video), 10):
        _, outside = face_and_away(before[t], video.shape[1:])
        assert image_psnr(output[t][outside], video[t][outside]) >= 40


def test_contact_sheet(swapped):
    """Video frames over swapped frames, face crops, for a viewer (seams, flicker, expression)."""
    video, output = read_frames(swapped["video"], end=SECONDS), read_frames(swapped["row"]["out_uri"])
    marks = largest_face_landmarks(video)
    cells = []
    for t in np.linspace(0, len(video) - 1, 6).astype(int):
        lo, hi = np.nanmin(marks[t][:, :2], axis=0), np.nanmax(marks[t][:, :2], axis=0)
        centre, half = (lo + hi) / 2, 0.8 * float((hi - lo).max())
        x0, y0 = np.maximum((centre - half).astype(int), 0)
        x1, y1 = (centre + half).astype(int)
        cells.append(np.concatenate([cv2.resize(f[y0:y1, x0:x1], (192, 192)) for f in (video[t], output[t])]))
    sheet = np.concatenate(cells, axis=1)
    path = swapped["out"].parent / "swap_contact_sheet.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    print(f"contact sheet: {path}")
    assert np.abs(sheet[192:].astype(int) - sheet[:192]).mean() > 3  # the faces did change


def test_an_unreadable_source_fails_its_row(shared_data, tmp_path, ray_local):
    broken = tmp_path / "source.jpg"
    broken.write_bytes(b"not an image")
    out = str(tmp_path / "out")
    assert main(["swap", "--video", str(shared_data / "videos" / "drive_d6.mp4"), "--source", str(broken),
                 "--out", out, "--max-duration", "0.5", "--no-progress"]) == 3
    (row,) = read_manifest(out).to_pylist()
    assert row["status"] == "failed" and "not a readable image" in str(row["error"])


def test_a_still_and_the_reenact_mode(shared_data, tmp_path, ray_local):
    """`--image`: the source's face on a portrait, a tagged PNG of the portrait's size. `--mode reenact`:
    the source portrait itself moved like the video's face (the video's length, frame rate and sound, the
    portrait's size, its mouth opening with the video's); with --image it is a usage error."""
    video = str(shared_data / "videos" / "drive_d10.mp4")
    source = str(shared_data / "portraits" / "lp_s9.jpg")
    still = str(shared_data / "portraits" / "hallo_3.jpg")
    out = tmp_path / "still"
    assert main(["swap", "--image", still, "--source", source, "--out", str(out), "--no-progress"]) == 0
    (row,) = read_manifest(str(out)).to_pylist()
    assert row["status"] == "ok" and row["out_uri"].endswith(".png"), row["error"]
    image, swapped = read_image(still), read_image(row["out_uri"])
    assert swapped.shape == image.shape
    assert read_tag(read_metadata(row["out_uri"]))["facefab:model"] == "weightfree-swap"
    target = _ratios(largest_face_landmarks(read_image(source)[None])[0])
    was = np.linalg.norm(_ratios(largest_face_landmarks(image[None])[0]) - target)
    now = np.linalg.norm(_ratios(largest_face_landmarks(swapped[None])[0]) - target)
    assert now < 0.6 * was, (was, now)

    out = tmp_path / "reenact"
    source = str(shared_data / "portraits" / "lp_s1.jpg")  # a photograph: the mesh reads a painting's mouth poorly
    assert main(["swap", "--video", video, "--source", source, "--mode", "reenact", "--out", str(out),
                 "--max-duration", "1.5", "--no-progress"]) == 0
    (row,) = read_manifest(str(out)).to_pylist()
    assert row["status"] == "ok", row["error"]
    info, portrait = probe(row["out_uri"]), read_image(source)
    assert abs(info.height - portrait.shape[0]) <= 1 and abs(info.width - portrait.shape[1]) <= 1  # yuv420p: even
    assert info.fps == probe(video).fps and info.num_frames == round(1.5 * info.fps) and info.has_audio
    driving, moved = read_frames(video, end=1.5), read_frames(row["out_uri"])
    r = finite_pearson(mouth_open_ratio(largest_face_landmarks(moved)),
                       mouth_open_ratio(largest_face_landmarks(driving)))
    print(f"reenact: mouth opening r={r:.3f}")
    assert r >= 0.8
    assert main(["swap", "--image", still, "--source", source, "--mode", "reenact", "--out", str(out)]) == 2


def test_a_fringed_source_leaves_the_video_faces_brows_and_forehead(shared_data):
    """lp_s1's fringe hides her brows: the new face ends at the eyes and the video face's brows and
    forehead stay the video's, where without the fringe rule her fringe is pasted over them."""
    from facefab.models.swap.weightfree import SwapConfig, WeightFreeSwap

    portraits = {name: read_image(str(shared_data / "portraits" / f"{name}.jpg"))
                 for name in ("lp_s1", "lp_s9", "hallo_2", "hallo_3")}
    meshes = {name: largest_face_landmarks(image[None])[0] for name, image in portraits.items()}
    swap, plain = WeightFreeSwap(), WeightFreeSwap(SwapConfig(fringe=0))
    assert {name: swap.source(portraits[name], meshes[name]).fringe for name in portraits} == {
        "lp_s1": True, "lp_s9": False, "hallo_2": False, "hallo_3": False}

    frame = read_frames(str(shared_data / "videos" / "drive_d10.mp4"), end=0.04)[0]
    points = largest_face_landmarks(frame[None])[0]
    outputs = {}
    for name, model in (("fringe", swap), ("plain", plain)):
        source = model.source(portraits["lp_s1"], meshes["lp_s1"])
        outputs[name] = model.render(frame, points, source, model.plan(source, points[None]), 0)
    up = points[10, :2] - points[152, :2]
    up /= np.linalg.norm(up)
    ys, xs = np.mgrid[0:frame.shape[0], 0:frame.shape[1]]
    height = xs * up[0] + ys * up[1]
    oval = np.zeros(frame.shape[:2], np.uint8)
    cv2.fillPoly(oval, [np.round(points[swap.oval, :2]).astype(np.int32)], 1)
    brows = float(np.max(points[swap.brows, :2] @ up))
    forehead = oval.astype(bool) & (height > brows - 0.1 * (brows - float(np.mean(points[[468, 473], :2] @ up))))
    changed = {name: np.abs(out[forehead].astype(int) - frame[forehead]).mean() for name, out in outputs.items()}
    assert changed["fringe"] < 0.5 and changed["plain"] > 10, changed
    below = oval.astype(bool) & (height < float(points[4, :2] @ up))  # the cheeks, nose and mouth: the source's
    assert np.abs(outputs["fringe"][below].astype(int) - frame[below]).mean() > 5
