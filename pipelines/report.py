"""HTML report of a preprocess root: per-clip contact sheets, score histograms, the error table.

One self-contained file (images inlined as base64), so it can be copied anywhere or served from a
bucket. Contact sheets show sampled aligned crops with the parsing mask tinted in, the 478
landmarks as dots and the head-pose axes drawn from the nose tip.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from typing import Any

import cv2
import numpy as np

from facefab.face.alignment import invert_affines, points_to_crop
from facefab.manifests.io import read_manifest
from facefab.manifests.storage import exists, join_uri, read_bytes
from facefab.media import read_frames
from facefab.media.arrays import load_npz
from facefab.operators.track_row import read_frame_table

SCORE_COLUMNS = ("face_size", "blur", "pose_extremity", "landmark_jitter", "face_count", "speech_ratio", "av_sync")
# RGB tint per parsing label id (0 = background is not tinted)
LABEL_COLOURS = np.array([
    (0, 0, 0), (255, 200, 150), (120, 60, 20), (120, 60, 20), (40, 120, 255), (40, 120, 255),
    (255, 255, 0), (255, 40, 90), (200, 0, 60), (90, 0, 140), (60, 200, 90)], np.uint8)
NOSE_TIP = 1


def _jpeg_b64(image_rgb: np.ndarray, quality: int = 80) -> str:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return base64.b64encode(buf.tobytes()).decode()


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = (math.radians(v) for v in (yaw, pitch, roll))
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_frame(crop: np.ndarray, labels: np.ndarray | None, landmarks_crop: np.ndarray | None,
               pose: np.ndarray | None) -> np.ndarray:
    """Tinted mask + landmark dots + pose axes on one aligned crop (RGB)."""
    out = crop.copy()
    size = out.shape[0]
    if labels is not None:
        lab = cv2.resize(labels, (size, size), interpolation=cv2.INTER_NEAREST)
        tint = LABEL_COLOURS[np.clip(lab, 0, len(LABEL_COLOURS) - 1)]
        face = lab > 0
        out[face] = (0.6 * out[face] + 0.4 * tint[face]).astype(np.uint8)
    if landmarks_crop is not None and np.isfinite(landmarks_crop).all():
        for x, y in landmarks_crop[:, :2].astype(int):
            cv2.circle(out, (int(x), int(y)), 1, (0, 255, 0), -1)
        if pose is not None and np.isfinite(pose[:3]).all():
            origin = landmarks_crop[NOSE_TIP, :2]
            axes = _rotation(*pose[:3]) * (0.18 * size)
            for axis, colour in zip(axes.T, ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
                tip = origin + np.array([axis[0], -axis[1]])
                cv2.arrowedLine(out, tuple(origin.astype(int)), tuple(tip.astype(int)), colour, 2, tipLength=0.2)
    return out


def contact_sheet(row: dict[str, Any], storage_options: dict[str, Any] | None, frames_per_sheet: int = 6,
                  thumb: int = 160) -> np.ndarray:
    crops = read_frames(row["crop_uri"], storage_options=storage_options)
    n = len(crops)
    picks = np.linspace(0, n - 1, min(frames_per_sheet, n)).round().astype(int)
    table = read_frame_table(row["frames_uri"], storage_options) if row.get("frames_uri") else None
    in_crop = (points_to_crop(table.landmarks[..., :2], invert_affines(np.nan_to_num(table.inverse)))
               if table is not None else None)
    masks = load_npz(row["masks_uri"], storage_options)["labels"] if row.get("masks_uri") else None
    tiles = []
    for t in picks:
        lms = pose = None
        if table is not None and t < len(table):
            if np.isfinite(table.landmarks[t]).all() and np.isfinite(table.inverse[t]).all():
                lms = in_crop[t]
            if np.isfinite(table.pose[t]).all():
                pose = table.pose[t].astype(np.float64)
        labels = masks[t] if masks is not None and t < len(masks) else None
        tiles.append(cv2.resize(draw_frame(crops[t], labels, lms, pose), (thumb, thumb), interpolation=cv2.INTER_AREA))
    return np.concatenate(tiles, axis=1)


def histogram_png(values: list[float], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.2, 2.2), dpi=90)
    ax.hist(values, bins=min(20, max(5, len(values))), color="#4878cf")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape("" if v is None else str(v))


def build_report(root: str, storage_options: dict[str, Any] | None = None, max_clips: int = 24,
                 frames_per_sheet: int = 6) -> str:
    table = read_manifest(root, storage_options)
    if table.num_rows == 0:
        raise ValueError(f"{root} has no manifest to report on")
    rows = table.to_pylist()
    summary_uri = join_uri(root, "summary.json")
    summary = json.loads(read_bytes(summary_uri, storage_options)) if exists(summary_uri, storage_options) else {}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1

    parts = [f"<h1>facefab report</h1><p><code>{html.escape(root)}</code>: {len(rows)} rows — "
             + ", ".join(f"<b>{k}</b> {v}" for k, v in sorted(counts.items())) + "</p>"]
    if summary.get("operators"):
        parts.append("<h2>Operators (last run)</h2><table><tr><th>operator</th><th>rows</th><th>rows/s (worker time)</th><th>errors</th></tr>")
        for name, s in sorted(summary["operators"].items()):
            parts.append(f"<tr><td>{html.escape(name)}</td><td>{s.get('rows')}</td><td>{_fmt(s.get('rows_per_s'))}</td><td>{s.get('errors')}</td></tr>")
        parts.append("</table>")

    parts.append("<h2>Scores</h2><div class=grid>")
    for col in SCORE_COLUMNS:
        vals = [r[col] for r in rows if isinstance(r.get(col), (int, float)) and math.isfinite(r[col])]
        if vals:
            parts.append(f"<img alt='{col}' src='data:image/png;base64,{histogram_png(vals, col)}'>")
    parts.append("</div>")

    bad = [r for r in rows if r["status"] != "ok"]
    parts.append(f"<h2>Errors and filtered rows ({len(bad)})</h2><table><tr><th>status</th><th>video</th>"
                 "<th>operator</th><th>type</th><th>message</th></tr>")
    for r in bad:
        err = r.get("error") or {}
        parts.append(f"<tr><td>{r['status']}</td><td>{_fmt(r.get('video_uri'))}</td><td>{_fmt(err.get('operator'))}</td>"
                     f"<td>{_fmt(err.get('type'))}</td><td>{_fmt(err.get('message'))}</td></tr>")
    parts.append("</table>")

    good = [r for r in rows if r["status"] == "ok" and r.get("crop_uri")][:max_clips]
    parts.append(f"<h2>Clips ({len(good)} shown)</h2>")
    for r in good:
        scores = " · ".join(f"{c} {_fmt(r.get(c))}" for c in SCORE_COLUMNS if r.get(c) is not None)
        try:
            img = f"<img src='data:image/jpeg;base64,{_jpeg_b64(contact_sheet(r, storage_options, frames_per_sheet))}'>"
        except Exception as exc:  # noqa: BLE001 - a broken artifact is reported in place, not fatal
            img = f"<p class=err>contact sheet unavailable: {html.escape(type(exc).__name__)}: {html.escape(str(exc))}</p>"
        parts.append(f"<div class=clip><p><b>{_fmt(r.get('video_uri'))}</b> {r.get('start', 0):.2f}-{r.get('end', 0):.2f} s, "
                     f"track {r.get('track_id')}<br><small>{scores}</small></p>{img}</div>")

    style = ("body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px;text-align:left} .grid img{margin:4px}"
             ".clip{margin:1.2em 0} .err{color:#b00}")
    return f"<!doctype html><html><head><meta charset=utf-8><link rel=icon href='data:,'><title>facefab report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>"
