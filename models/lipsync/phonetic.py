"""Speech -> mouth shape for any speaker, from the sounds rather than the loudness.

A linear map, fitted by the project on talking videos (`fit_phonetic`), from what the vocal tract
is doing to the mouth shape the lip-sync models match:
- inputs per video frame: log F1 and F2 (`audio.formants`) over +-133 ms, and the spectral
  envelope in 8 mel bands plus log energy; every input standardised over the recording's own
  voiced frames, so voice, microphone and level drop out;
- outputs: each mouth feature (`weightfree.FEATURE_NAMES`) as a z-score over the speaker's own
  voiced frames. A caller maps them onto its own face's range.

The shipped parameters (`phonetic_mouth.json`, next to this file) record how well each output held
out on a speaker the fit did not see (`evaluation`); callers weight the outputs by it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .speech import Speech, sounding, speech_design

DEFAULT_FILE = Path(__file__).with_name("phonetic_mouth.json")


def ridge_solution(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias of ridge regression y ~ x (bias unpenalised), closed form by SVD."""
    xm, ym = x.mean(axis=0), y.mean(axis=0)
    u, s, vt = np.linalg.svd(x - xm, full_matrices=False)
    coef = vt.T @ ((s / (s * s + lam))[:, None] * (u.T @ (y - ym)))
    return coef, ym - xm @ coef


@dataclass
class PhoneticMouthConfig:
    mel_bands: int = 8  # spectral envelope bands (pooled log-mel)
    context_s: float = 0.133  # formants this far before and after the frame ...
    context_steps: int = 4  # ... sampled at this many points each side
    ridge: float = 100.0  # penalty of the linear fit
    max_z: float = 3.0  # predictions are clipped to this many speaker standard deviations


@dataclass
class PhoneticMouth:
    config: PhoneticMouthConfig = field(default_factory=PhoneticMouthConfig)
    targets: tuple[str, ...] = ()
    coef: np.ndarray | None = None  # (D, len(targets))
    bias: np.ndarray | None = None  # (len(targets),)
    # held-out Pearson r per target (leave one speaker out), and what the fit saw
    evaluation: dict = field(default_factory=dict)

    # -- inputs ------------------------------------------------------------------------------------

    def design(self, speech: Speech, fps: float) -> np.ndarray:
        """(T, D) inputs for speech whose `formants` are filled in."""
        if speech.formants is None:
            raise ValueError("the phonetic mouth model needs the speech's formants (audio.formants)")
        c = self.config
        voiced = sounding(speech)
        logf = np.log(np.maximum(np.asarray(speech.formants, np.float64), 1.0))
        ref = voiced & np.isfinite(logf).all(axis=1)
        if ref.sum() >= 2:
            logf = (logf - logf[ref].mean(axis=0)) / np.maximum(logf[ref].std(axis=0), 1e-3)
        else:
            logf = np.zeros_like(logf)
        logf = np.clip(np.nan_to_num(logf), -4.0, 4.0)
        steps = np.round(np.linspace(-c.context_s, c.context_s, 2 * c.context_steps + 1) * fps).astype(int)
        idx = np.clip(np.arange(len(logf))[:, None] + steps[None, :], 0, len(logf) - 1)
        context = logf[idx].reshape(len(logf), -1)
        return np.concatenate([context, speech_design(speech, bands=c.mel_bands, chunks=1)], axis=1)

    # -- fit and predict -----------------------------------------------------------------------------

    def fit(self, speeches: list[Speech], fps: list[float], shapes: list[np.ndarray],
            targets: tuple[str, ...]) -> PhoneticMouth:
        """Fit on several recordings: shapes (T_i, F) mouth features per frame (NaN without a
        face), standardised here per recording over its voiced frames."""
        xs, ys = [], []
        for speech, rate, y in zip(speeches, fps, shapes):
            x, z, keep = self._examples(speech, rate, y)
            xs.append(x[keep])
            ys.append(z[keep])
        self.coef, self.bias = ridge_solution(np.concatenate(xs), np.concatenate(ys), self.config.ridge)
        self.targets = tuple(targets)
        return self

    def _examples(self, speech: Speech, fps: float, shapes: np.ndarray):
        voiced = sounding(speech)
        ok = voiced & np.isfinite(shapes).all(axis=1)
        z = (shapes - shapes[ok].mean(axis=0)) / np.maximum(shapes[ok].std(axis=0), 1e-6)
        return self.design(speech, fps), z, ok

    def predict(self, speech: Speech, fps: float) -> np.ndarray:
        """(T, len(targets)) mouth shape as z-scores over the speaker's voiced frames."""
        if self.coef is None:
            raise ValueError("the phonetic mouth model has no fitted parameters")
        z = self.design(speech, fps) @ self.coef + self.bias
        return np.clip(z, -self.config.max_z, self.config.max_z)

    def held_out_r(self, name: str) -> float:
        return float(self.evaluation.get("held_out_r", {}).get(name, math.nan))

    # -- files ---------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> Path:
        """Write config, parameters and evaluation as one JSON file (a folder gets phonetic_mouth.json)."""
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILE.name
        payload = {"config": dataclasses.asdict(self.config), "targets": list(self.targets),
                   "coef": np.round(self.coef, 6).tolist(), "bias": np.round(self.bias, 6).tolist(),
                   "evaluation": self.evaluation}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path = DEFAULT_FILE) -> PhoneticMouth:
        path = Path(path)
        if path.is_dir():
            path = path / DEFAULT_FILE.name
        data = json.loads(path.read_text())
        config = PhoneticMouthConfig(**data["config"])
        coef, bias = np.asarray(data["coef"], np.float64), np.asarray(data["bias"], np.float64)
        if coef.ndim != 2 or coef.shape[1] != len(data["targets"]) or bias.shape != (coef.shape[1],):
            raise ValueError(f"{path}: coef {coef.shape} / bias {bias.shape} do not match "
                             f"{len(data['targets'])} targets")
        return cls(config, tuple(data["targets"]), coef, bias, data.get("evaluation", {}))


_DEFAULT: PhoneticMouth | None = None


def load_phonetic_mouth() -> PhoneticMouth:
    """The parameters shipped with the package (read once per process)."""
    global _DEFAULT
    if _DEFAULT is None:
        if not DEFAULT_FILE.exists():
            raise FileNotFoundError(f"{DEFAULT_FILE} is missing from the installed package: reinstall facefab, "
                                    "refit it (python -m facefab.models.lipsync.fit_phonetic) or set "
                                    "weightfree.phonetic to false")
        _DEFAULT = PhoneticMouth.from_pretrained(DEFAULT_FILE)
    return _DEFAULT
