"""Config precedence (defaults < YAML < flags) and clear errors for the CLI."""

from __future__ import annotations

import argparse

import pytest

from facefab.jobs.cli import build_parser, main
from facefab.jobs.config import add_config_flags, build_config
from facefab.pipelines.preprocess import PreprocessConfig


def _parse(argv, tmp_path=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_flags(parser, PreprocessConfig)
    args = parser.parse_args(argv)
    return build_config(PreprocessConfig, args, args.config)


def test_defaults_yaml_and_flags_in_order(tmp_path):
    assert _parse([]).shots.max_clip == 10.0
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("shots: {max_clip: 6, min_clip: 2}\nfilter: {min_face_size: 0.1}\noperators: [probe, shots]\n")
    cfg = _parse(["--config", str(cfg_file)])
    assert (cfg.shots.max_clip, cfg.shots.min_clip, cfg.filter.min_face_size) == (6.0, 2.0, 0.1)
    assert cfg.operators == ["probe", "shots"]
    cfg = _parse(["--config", str(cfg_file), "--shots.max-clip", "4", "--operators", "probe,shots,faces"])
    assert (cfg.shots.max_clip, cfg.shots.min_clip) == (4.0, 2.0)
    assert cfg.operators == ["probe", "shots", "faces"]


def test_unknown_yaml_field_and_wrong_type_are_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("shots: {max_clips: 6}\n")
    with pytest.raises(ValueError, match=r"config\.shots: unknown field\(s\) \['max_clips'\]"):
        _parse(["--config", str(bad)])
    bad.write_text("shots: {max_clip: ten}\n")
    with pytest.raises(ValueError, match="config.shots.max_clip: expected float"):
        _parse(["--config", str(bad)])
    assert main(["preprocess", "samples", "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    assert "expected float" in capsys.readouterr().err


def test_every_job_subcommand_takes_out_storage_options_and_config():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("preprocess", "dub", "train"):
        if name not in sub.choices:
            pytest.fail(f"subcommand {name} missing")
        opts = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert {"--out", "--storage-options", "--config"} <= opts, name


def test_help_and_light_commands_do_not_import_the_models():
    # `facefab --help` / `facefab status` used to import torch, diffusers and every operator (~5 s)
    import subprocess
    import sys

    probe = ("import sys\nfrom facefab.jobs import cli\n"
             "for argv in (['--help'], ['status', '--help'], ['-v', 'report', '--help']):\n"
             "    try:\n        cli.main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'diffusers', 'mediapipe', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert "usage: facefab [-h]" in out and "usage: facefab status" in out and "usage: facefab report" in out
    assert out.strip().splitlines()[-1] == "[]"
