"""Feature operators on real media: face parsing, audio features, speech encoder, flow, quality.

Track rows are built here the way the preprocessing DAG builds them (MediaPipe mesh landmarks in
source pixels, a per-track similarity crop, the crop written as an mp4 with its audio), from short
windows of the shared videos so the whole file runs in well under two minutes on two cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import SHARED

from facefab.audio.features import frame_rms
from facefab.face.flow import RAFT_UNAVAILABLE, load_flow
from facefab.face.parsing import LABELS, mouth_open_ratio
from facefab.face.scores import av_sync_score
from facefab.media import read_audio, read_frames, write_audio, write_video
from facefab.media.arrays import load_npz, pack_arrays, unpack_arrays
from facefab.operators.audio import AudioFeatures, SpeechEncoder
from facefab.operators.base import RunContext
from facefab.operators.flow import OpticalFlow
from facefab.operators.parsing import FaceParsing
from facefab.operators.quality import QualityFilter, QualityScores
from facefab.pipelines.engine import run_local

VIDEOS = SHARED / "videos"
FPS = 25.0
CROP = 512


# -- building track rows -------------------------------------------------------------------------

def mesh_landmarks(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(T,478,3) MediaPipe mesh in source pixels (NaN where no face) and (T,) valid."""
    import mediapipe as mp

    out = np.full((len(frames), 478, 3), np.nan, np.float32)
    with mp.solutions.face_mesh.FaceMesh(max_num_faces=1, refine_landmarks=True) as mesh:
        for t, frame in enumerate(frames):
            found = mesh.process(frame).multi_face_landmarks
            if found:
                h, w = frame.shape[:2]
                out[t] = [(p.x * w, p.y * h, p.z * w) for p in found[0].landmark]
    return out, np.isfinite(out).all(axis=(1, 2))


def track_affine(landmarks: np.ndarray, valid: np.ndarray, margin: float = 1.8) -> np.ndarray:
    """(T,2,3) one frame->crop similarity for the whole track, from the median face box."""
    xy = landmarks[valid, :, :2]
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    cx, cy = np.median((lo + hi) / 2, axis=0)
    scale = CROP / (np.median((hi - lo).max(axis=1)) * margin)
    affine = np.array([[scale, 0, CROP / 2 - scale * cx], [0, scale, CROP / 2 - scale * cy]], np.float32)
    return np.repeat(affine[None], len(landmarks), axis=0)


def make_track_row(folder: Path, video: str, start: float, end: float, row_id: str) -> dict:
    uri = str(VIDEOS / video)
    frames = read_frames(uri, fps=FPS, start=start, end=end)
    landmarks, valid = mesh_landmarks(frames)
    affine = track_affine(landmarks, valid)
    crops = np.stack([cv2.warpAffine(f, a, (CROP, CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                      for f, a in zip(frames, affine)])
    audio = read_audio(uri, start=start, end=end)
    crop_uri = str(folder / f"{row_id}.mp4")
    write_video(crop_uri, crops, FPS, audio=audio)
    lo, hi = np.nanmin(landmarks[..., :2], axis=1), np.nanmax(landmarks[..., :2], axis=1)
    n = len(frames)
    return {
        "id": row_id, "source_id": video, "status": "ok", "video_uri": uri, "start": start, "end": end,
        "fps": FPS, "has_audio": True, "crop_uri": crop_uri, "crop_size": CROP, "face_count": 1,
        "_landmarks": pack_arrays(landmarks=landmarks, valid=valid),
        "_align": pack_arrays(affine=affine, inverse=np.stack([cv2.invertAffineTransform(a) for a in affine])),
        "_pose": pack_arrays(pose=np.zeros((n, 6), np.float32)),
        "_track": pack_arrays(frame_index=np.arange(n), bbox=np.concatenate([lo, hi], axis=1),
                              present=valid, score=valid.astype(np.float32)),
    }


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> RunContext:
    return RunContext(out_root=str(tmp_path_factory.mktemp("out")))


@pytest.fixture(scope="module")
def talk_row(media) -> dict:
    """2 s of drive_d6: a frontal face talking, with its own in-sync speech."""
    return make_track_row(media, "drive_d6.mp4", 2.0, 4.0, "d6short")


@pytest.fixture(scope="module")
def sync_row(media) -> dict:
    """5 s of drive_d6, long enough for a stable lip-sync correlation."""
    return make_track_row(media, "drive_d6.mp4", 2.0, 7.0, "d6long")


def _landmarks(row: dict) -> np.ndarray:
    return unpack_arrays(row["_landmarks"])["landmarks"]


def run_one(op, row: dict) -> dict:
    [out] = run_local([op], [row])
    assert out["status"] == "ok", out.get("error")
    return out


# -- face parsing ----------------------------------------------------------------------------------

def _centroid(mask: np.ndarray, label: int) -> np.ndarray:
    ys, xs = np.nonzero(mask == label)
    return np.array([xs.mean(), ys.mean()])


def test_face_parsing_label_layout(talk_row, ctx):
    out = run_one(FaceParsing(ctx=ctx), talk_row)
    masks = load_npz(out["masks_uri"])
    labels = masks["labels"]
    assert labels.shape == (50, 256, 256) and labels.dtype == np.uint8
    assert list(masks["label_names"]) == list(LABELS)
    assert masks["valid"].all()
    assert all(set(range(1, 9)) <= set(np.unique(f)) for f in labels)  # skin..lower lip in every frame

    mouth = mouth_open_ratio(_landmarks(talk_row))
    frame = labels[int(np.nanargmax(mouth))]  # widest-open mouth: every label is there
    assert set(np.unique(frame)) == set(range(len(LABELS)))
    eyes_y = max(_centroid(frame, LABELS["left_eye"])[1], _centroid(frame, LABELS["right_eye"])[1])
    assert eyes_y < _centroid(frame, LABELS["nose"])[1] < _centroid(frame, LABELS["upper_lip"])[1]
    # MediaPipe's "left" is the subject's left: the image's right side.
    assert _centroid(frame, LABELS["left_eye"])[0] > _centroid(frame, LABELS["right_eye"])[0]
    assert _centroid(frame, LABELS["left_brow"])[1] < _centroid(frame, LABELS["left_eye"])[1]
    upper, inner, lower = (_centroid(frame, LABELS[k])[1] for k in ("upper_lip", "inner_mouth", "lower_lip"))
    assert upper < inner < lower
    counts = np.bincount(frame.ravel(), minlength=len(LABELS))
    assert counts[LABELS["skin"]] > counts[2:10].max()
    # hair/other-foreground sits around the face, mostly above it in a portrait crop
    assert _centroid(frame, LABELS["hair_other"])[1] < _centroid(frame, LABELS["nose"])[1] + 40
    assert 0.0 < out["mouth_open_ratio_mean"] < 1.0


# -- audio features --------------------------------------------------------------------------------

def audio_row(uri: str, start: float, end: float, has_audio: bool = True, row_id: str = "aud") -> dict:
    return {"id": row_id, "status": "ok", "video_uri": uri, "start": start, "end": end, "fps": FPS,
            "has_audio": has_audio}


def test_audio_features_speech(talk_row, ctx):
    op = AudioFeatures(ctx=ctx)
    speech = run_one(op, audio_row(str(SHARED / "audio" / "speech_hallo1.wav"), 1.0, 3.0))
    feats = load_npz(speech["audio_features_uri"])
    assert feats["mel"].shape == (201, 80)  # 2 s at a 10 ms hop, centred frames
    assert feats["frame_index_map"].shape == (50, 17)
    assert feats["vad"].shape == feats["rms"].shape == (50,)
    assert speech["speech_ratio"] > 0.6 and speech["has_speech"] is True
    # frame t's window is centred on the mel frame (10 ms hop) nearest its mid-time (t + 0.5)/fps
    centre = feats["frame_index_map"][10, 8]
    assert centre == round((10 + 0.5) / FPS * 100)

    track = run_one(op, talk_row)  # per-frame windows follow the track's frame count
    assert load_npz(track["audio_features_uri"])["frame_index_map"].shape[0] == 50

    # a track that starts 1 s into its clip hears the audio from there on
    late = {**audio_row(str(SHARED / "audio" / "speech_hallo1.wav"), 0.0, 3.0, row_id="late"),
            "_track": pack_arrays(frame_index=np.arange(25, 75))}
    late_rms = load_npz(run_one(op, late)["audio_features_uri"])["rms"]
    np.testing.assert_allclose(late_rms, feats["rms"], atol=1e-4)


def test_audio_features_silence_and_no_audio(tmp_path, ctx):
    silence = str(tmp_path / "silence.wav")
    write_audio(silence, np.zeros(16000 * 2, np.float32), 16000)
    out = run_one(AudioFeatures(ctx=ctx), audio_row(silence, 0.0, 2.0, row_id="silent"))
    feats = load_npz(out["audio_features_uri"])
    assert out["speech_ratio"] < 0.05
    assert feats["mel"].max() <= math.log(1e-5) + 1.0  # at the log floor
    assert float(feats["rms"].max()) < 1e-3

    no_audio = audio_row(str(VIDEOS / "drive_d0.mp4"), 0.0, 1.0, has_audio=False, row_id="noaud")
    out = run_one(AudioFeatures(ctx=ctx), no_audio)
    feats = load_npz(out["audio_features_uri"])
    assert out["speech_ratio"] == 0.0 and out["has_speech"] is False and not bool(feats["has_audio"])
    assert feats["frame_index_map"].shape == (25, 17)

    [failed] = run_local([AudioFeatures({"require_audio": True}, ctx)], [no_audio])
    assert failed["status"] == "failed"
    assert json.loads(failed["error"])["message"] == "video has no audio track"


# -- speech encoder --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    torch.manual_seed(0)
    config = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), conv_bias=False,
                            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    folder = tmp_path_factory.mktemp("tiny_wav2vec2")
    Wav2Vec2Model(config).save_pretrained(folder)
    return folder


def test_speech_encoder_local_checkpoint(tiny_wav2vec2, talk_row, ctx):
    out = run_one(SpeechEncoder({"model_path": str(tiny_wav2vec2)}, ctx), talk_row)
    emb = load_npz(out["speech_embeddings_uri"])["embeddings"]
    assert emb.shape == (50, 32) and emb.dtype == np.float32 and np.isfinite(emb).all()
    assert emb.std(axis=0).mean() > 0  # changes over time with the speech


def test_speech_encoder_s3_checkpoint(tiny_wav2vec2, talk_row, s3_root, tmp_path):
    import fsspec

    root, opts = s3_root
    fs = fsspec.filesystem("s3", **opts)
    model_uri = f"{root}/models/tiny"
    for f in tiny_wav2vec2.iterdir():
        fs.put_file(str(f), f"{model_uri[len('s3://'):]}/{f.name}")
    ctx = RunContext(out_root=root, storage_options=opts)
    out = run_one(SpeechEncoder({"model_path": model_uri, "cache_dir": str(tmp_path / "cache")}, ctx), talk_row)
    assert load_npz(out["speech_embeddings_uri"], opts)["embeddings"].shape == (50, 32)
    assert len(list((tmp_path / "cache").iterdir())) == 1  # one cached copy, no temp folders left


def test_speech_encoder_whisper_chunks_long_clips(tmp_path, ctx):
    from transformers import WhisperConfig, WhisperModel

    config = WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                           decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=100,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
                           max_target_positions=32)
    WhisperModel(config).save_pretrained(tmp_path / "whisper")
    row = audio_row(str(SHARED / "audio" / "speech_eng.wav"), 0.0, 31.0, row_id="whisper")  # > one 30-s window
    out = run_one(SpeechEncoder({"model_path": str(tmp_path / "whisper"), "all_layers": True}, ctx), row)
    emb = load_npz(out["speech_embeddings_uri"])["embeddings"]
    assert emb.shape == (775, 3, 32) and np.isfinite(emb).all()  # frames, embedding + 2 layers, width


# -- optical flow --------------------------------------------------------------------------------

def test_flow_of_a_translating_portrait(tmp_path, ctx):
    portrait = cv2.cvtColor(cv2.imread(str(SHARED / "portraits" / "hallo_2.jpg")), cv2.COLOR_BGR2RGB)
    portrait = cv2.resize(portrait, (CROP, CROP), interpolation=cv2.INTER_AREA)
    n, step = 12, 2.0
    frames = np.stack([cv2.warpAffine(portrait, np.float32([[1, 0, step * t], [0, 1, 0]]), (CROP, CROP),
                                      borderMode=cv2.BORDER_REFLECT) for t in range(n)])
    crop_uri = str(tmp_path / "moving.mp4")
    write_video(crop_uri, frames, FPS)
    row = {"id": "moving", "status": "ok", "crop_uri": crop_uri, "start": 0.0, "end": n / FPS, "fps": FPS}

    out = run_one(OpticalFlow(ctx=ctx), row)
    data = load_flow(out["flow_uri"])
    flow, traj = data["flow"], data["trajectories"]
    assert flow.shape == (n - 1, 128, 128, 2)
    assert load_npz(out["flow_uri"])["flow_q"].dtype == np.int8  # stored compactly
    inner = flow[:, 16:-16, 16:-16].astype(np.float32)  # away from the reflected border
    expected = step * 128 / CROP
    assert inner[..., 0].mean() == pytest.approx(expected, abs=0.1)
    assert abs(inner[..., 1].mean()) < 0.1
    assert out["motion_mean"] == pytest.approx(expected, abs=0.15)
    assert traj.shape == (64, n, 2)
    moved = traj[:, -1] - traj[:, 0]
    assert np.median(moved[:, 0]) == pytest.approx(expected * (n - 1), rel=0.25)
    assert np.abs(np.median(moved[:, 1])) < 1.0

    assert OpticalFlow({"backend": "raft"}).stateful and not OpticalFlow().stateful  # RAFT: actor pool
    [failed] = run_local([OpticalFlow({"backend": "raft"}, ctx)], [row])
    assert failed["status"] == "failed" and json.loads(failed["error"])["message"] == RAFT_UNAVAILABLE


# -- quality ---------------------------------------------------------------------------------------

def test_quality_scores_blur_ranks_sharp_above_blurred(talk_row, media, ctx):
    sharp = run_one(QualityScores(ctx=ctx), talk_row)
    crops = read_frames(talk_row["crop_uri"])
    blurred_uri = str(media / "blurred.mp4")
    write_video(blurred_uri, np.stack([cv2.GaussianBlur(f, (0, 0), 3.0) for f in crops]), FPS)
    blurred = run_one(QualityScores(ctx=ctx), {**talk_row, "crop_uri": blurred_uri})
    assert sharp["blur"] > 3 * blurred["blur"]

    assert 0.2 < sharp["face_size"] < 0.9
    assert sharp["pose_extremity"] == 0.0
    assert 0.0 < sharp["landmark_jitter"] < 0.01
    assert sharp["face_count"] == 1
    assert 0.0 <= sharp["speech_ratio"] <= 1.0

    silent = run_one(QualityScores(ctx=ctx), {**talk_row, "has_audio": False})
    assert silent["av_sync"] is None and silent["av_sync_lag"] is None and silent["speech_ratio"] == 0.0


def test_av_sync_in_sync_beats_foreign_audio(sync_row, ctx):
    [out] = run_local([AudioFeatures(ctx=ctx), QualityScores(ctx=ctx)], [sync_row])
    assert out["status"] == "ok", out.get("error")
    mouth = mouth_open_ratio(_landmarks(sync_row))
    n = len(mouth)

    def envelope(video: str) -> np.ndarray:
        return frame_rms(read_audio(str(VIDEOS / video), start=2.0, end=7.0), FPS, n)

    own, own_lag = av_sync_score(mouth, envelope("drive_d6.mp4"), max_lag=5)
    foreign, _ = av_sync_score(mouth, envelope("drive_d10.mp4"), max_lag=5)
    assert own > 0.3 and abs(own_lag) <= 2
    assert own > foreign + 0.2
    assert out["av_sync"] == pytest.approx(own, abs=0.05)  # envelope read back from audio_features_uri
    assert run_one(QualityScores(ctx=ctx), sync_row)["av_sync"] == pytest.approx(out["av_sync"], abs=1e-6)


def test_av_sync_score_edge_cases():
    rng = np.random.default_rng(0)
    signal = rng.random(60)
    r, lag = av_sync_score(np.roll(signal, 3), signal, max_lag=5)  # mouth 3 frames after the sound
    assert r == pytest.approx(1.0, abs=0.1) and lag == 3
    r, lag = av_sync_score(signal, np.zeros(60), max_lag=5)
    assert math.isnan(r) and lag == 0


def test_quality_filter_lists_every_failed_threshold():
    row = {"id": "q", "status": "ok", "face_size": 0.08, "blur": 12.3, "pose_extremity": 0.2,
           "landmark_jitter": 0.001, "face_count": 1, "speech_ratio": 0.9, "av_sync": None}
    passing = QualityFilter({"min_face_size": 0.05, "min_blur": 10, "max_face_count": 1})
    [kept] = run_local([passing], [row])
    assert kept["status"] == "ok"

    strict = QualityFilter({"min_face_size": 0.1, "min_blur": 30, "max_pose_extremity": 0.5, "min_av_sync": 0.2})
    [dropped] = run_local([strict], [row])
    assert dropped["status"] == "filtered"
    assert json.loads(dropped["error"])["message"] == (
        "face_size 0.08 < min 0.1; blur 12.3 < min 30; av_sync missing (min 0.2)")
    assert dropped["face_size"] == 0.08 and dropped["blur"] == 12.3  # scores kept for re-filtering
