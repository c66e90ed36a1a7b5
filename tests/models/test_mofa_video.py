"""MOFA-Video's parts: the official parameter names and shapes (read off MyNiuuu/MOFA-Video's
models/ldmk_ctrlnet.py, traj_ctrlnet.py, controlnet_sdv.py, occlusion/hourglass.py and cmp/), the
sparse hints, the splatting, the sparse-to-dense net, the pipeline's two entry points, the folder round
trip, the converter on a synthetic official-named checkpoint, and the training loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from facefab.models.mofa_video import FlowControlNet, MofaVideoPipeline, SparseToDense, paper, tiny
from facefab.models.mofa_video.config import check
from facefab.models.mofa_video.controlnet import ControlNetUNet
from facefab.models.mofa_video.flow import keypoint_images, softsplat_average, sparse_hints
from facefab.models.mofa_video.pipeline import MofaVideoNet, build_parts


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _empty(config: dict, only: tuple[str, ...]):
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build_parts(config, only=only)


# the official FlowControlNet (ldmk_ctrlnet.py) at SVD-xt's layout: name -> shape
OFFICIAL_LDMK = {
    "conv_in.weight": (320, 8, 3, 3),
    "add_embedding.linear_1.weight": (1280, 768),
    "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
    "controlnet_cond_embedding.blocks.5.weight": (256, 96, 3, 3),
    "controlnet_cond_embedding.conv_out.weight": (320, 256, 3, 3),
    "controlnet_ldmk_embedding.blocks.5.weight": (128, 64, 3, 3),
    "controlnet_ldmk_embedding.conv_out.weight": (320, 128, 3, 3),
    "flow_encoder.encoders.0.conv_in.weight": (320, 320, 3, 3),
    "flow_encoder.encoders.1.conv_in.weight": (640, 320, 3, 3),
    "flow_encoder.encoders.2.conv_in.weight": (1280, 640, 3, 3),
    "zero_outs.8.weight": (320, 320, 1, 1),
    "zero_outs.16.weight": (320, 320, 1, 1),
    "zero_outs.32.weight": (640, 640, 1, 1),
    "zero_outs.64.weight": (1280, 1280, 1, 1),
    "occlusions.8.hourglass.encoder.down_blocks.0.conv.weight": (128, 642, 3, 3),
    "occlusions.8.hourglass.encoder.down_blocks.2.conv.weight": (512, 256, 3, 3),
    "occlusions.8.hourglass.decoder.up_blocks.0.conv.weight": (256, 512, 3, 3),
    "occlusions.8.hourglass.decoder.up_blocks.1.conv.weight": (128, 512, 3, 3),
    "occlusions.8.hourglass.decoder.up_blocks.2.conv.weight": (64, 256, 3, 3),
    "occlusions.64.hourglass.encoder.down_blocks.0.conv.weight": (128, 2562, 3, 3),
    "occlusions.64.matting.weight": (1280, 64, 7, 7),
    "occlusions.64.matting_mask.weight": (1, 64, 7, 7),
    "controlnet_down_blocks.0.weight": (320, 320, 1, 1),
    "controlnet_down_blocks.11.weight": (1280, 1280, 1, 1),
    "controlnet_mid_block.weight": (1280, 1280, 1, 1),
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
    "mid_block.resnets.0.spatial_res_block.conv1.weight": (1280, 1280, 3, 3),
}


def test_the_adapter_has_the_official_names_and_shapes():
    parts = _empty(paper(), ("unet", "controlnet", "cmp"))
    state = {k: tuple(v.shape) for k, v in parts["controlnet"].state_dict().items()}
    for key, shape in OFFICIAL_LDMK.items():
        assert state.get(key) == shape, (key, state.get(key), shape)
    assert sum(k.startswith("controlnet_down_blocks.") and k.endswith(".weight") for k in state) == 12
    assert not any(k.startswith(("up_blocks.", "conv_out.", "flow_encoder.zeroconvs.")) for k in state)
    # the encoder half is SVD's UNet's, name for name (ControlNet's copy)
    unet = {k: tuple(v.shape) for k, v in parts["unet"].state_dict().items()}
    encoder = [k for k in state if k.split(".")[0] in ("conv_in", "time_embedding", "add_embedding", "down_blocks",
                                                         "mid_block")]
    assert encoder and all(unet[k] == state[k] for k in encoder)
    from diffusers import UNetSpatioTemporalConditionModel

    assert type(parts["unet"]).__mro__[1] is UNetSpatioTemporalConditionModel  # SVD's unet/ loads as is
    cmp = {k: tuple(v.shape) for k, v in parts["cmp"].state_dict().items()}
    assert cmp["flow_encoder.features.0.weight"] == (16, 4, 5, 5)  # the official shallownet8x
    assert cmp["flow_encoder.features.4.weight"] == (16, 16, 3, 3) and "flow_encoder.features.5.running_mean" in cmp
    assert cmp["flow_decoder.head.weight"][0] == 198  # 2 x 99 bins (the official output_dim)


def test_the_trajectory_variant_has_zeroconvs_and_no_occlusion_nets():
    config = paper()
    config["controlnet"].update(landmarks=False, flow_zeroconv=True, occlusion=None)
    state = _empty(config, ("controlnet",))["controlnet"].state_dict()
    assert tuple(state["flow_encoder.zeroconvs.2.weight"].shape) == (1280, 1280, 1, 1)
    assert not any(k.startswith(("occlusions.", "zero_outs.", "controlnet_ldmk_embedding.")) for k in state)


def test_configs_check():
    check(tiny())
    check(paper())
    bad = tiny()
    bad["controlnet"]["conditioning_embedding_out_channels"] = [8, 16, 16, 16]
    with pytest.raises(ValueError, match="downsamples"):
        check(bad)


def test_softsplat_moves_features_along_the_flow():
    x = torch.zeros(1, 2, 8, 8)
    x[0, :, 2, 3] = torch.tensor([1.0, 5.0])
    flow = torch.zeros(1, 2, 8, 8)
    flow[0, 0], flow[0, 1] = 2.0, 1.0  # everything moves 2 right, 1 down
    out = softsplat_average(x, flow)
    assert torch.allclose(out[0, :, 3, 5], torch.tensor([1.0, 5.0]), atol=1e-5)
    assert out[0, :, 2, 3].abs().sum() < 1e-5
    assert torch.allclose(softsplat_average(x, torch.zeros_like(flow)), x, atol=1e-5)
    half = flow.clone().requires_grad_(True)
    softsplat_average(x, half * 0.5).sum().backward()
    assert half.grad is not None  # differentiable in the flow (the CMP trains through it)


def test_sparse_hints_write_the_motion_at_the_reference_points():
    start = np.array([[10.0, 20.0], [30.0, 5.0], [np.nan, 1.0], [70.0, 3.0]], np.float32)
    targets = np.array([[[12.0, 19.0], [30.0, 8.0], [1.0, 1.0], [71.0, 3.0]],
                        [[10.0, 20.0], [np.nan, np.nan], [1.0, 1.0], [70.0, 3.0]]], np.float32)
    sparse, mask = sparse_hints(start, targets, 64)
    assert sparse.shape == mask.shape == (2, 2, 64, 64)
    assert tuple(sparse[0, :, 20, 10]) == (2.0, -1.0) and tuple(sparse[0, :, 5, 30]) == (0.0, 3.0)
    assert mask[0].sum() == 4 and mask[1].sum() == 2  # NaN and off-image points give no hint
    images = keypoint_images(targets, 64, 1)
    assert images.shape == (2, 64, 64, 3) and images[0, 19, 12].all() and images[1].sum() > 0


def test_sparse_to_dense_makes_a_dense_flow_at_any_size():
    cmp = SparseToDense(**tiny()["cmp"]).eval()
    image, sparse, mask = torch.randn(2, 3, 64, 64), torch.zeros(2, 2, 64, 64), torch.zeros(2, 2, 64, 64)
    sparse[:, 0, 10, 10], mask[:, :, 10, 10] = 3.0, 1.0
    flow = cmp(image, sparse, mask)
    assert flow.shape == (2, 2, 64, 64) and flow.abs().max() <= tiny()["cmp"]["fmax"]
    assert cmp.dense(torch.randn(1, 3, 128, 128), torch.zeros(1, 2, 128, 128),
                     torch.zeros(1, 2, 128, 128)).shape == (1, 2, 128, 128)


def test_a_fresh_adapter_leaves_the_unet_as_it_is_and_a_trained_one_moves_it():
    config = tiny()
    torch.manual_seed(0)
    net = MofaVideoNet.fresh(config).eval()
    b, f = 1, config["num_frames"]
    x = torch.randn(b, f, 6, 16, 16)
    ids = torch.tensor([[6.0, 127.0, 0.02]])
    context = torch.randn(b, 1, 32)
    reference = torch.rand(b, 3, 64, 64) * 2 - 1
    flows = torch.randn(b, f - 1, 2, 64, 64)
    marks = torch.rand(b, f, 3, 64, 64)
    with torch.no_grad():
        plain = net.unet(x, torch.tensor(0.3), context, ids).sample
        adapted = net.denoise(x, torch.tensor(0.3), context, ids, reference, flows, marks)
        assert plain.shape == (b, f, 3, 16, 16) and torch.allclose(plain, adapted, atol=1e-6)
        for conv in [*net.controlnet.controlnet_down_blocks, net.controlnet.controlnet_mid_block]:
            torch.nn.init.normal_(conv.weight, std=0.1)
        assert not torch.allclose(plain, net.denoise(x, torch.tensor(0.3), context, ids, reference, flows, marks))


@pytest.fixture(scope="module")
def pipe() -> MofaVideoPipeline:
    torch.manual_seed(0)
    return MofaVideoPipeline.fresh(tiny())


def _face(size: int = 64):
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    points = (rng.random((478, 2)) * 40 + 12).astype(np.float32)
    return reference, points


def test_the_driven_path_makes_one_frame_per_driving_mesh_over_several_windows(pipe):
    reference, points = _face()
    n = 8  # windows of num_frames - 1 = 3: three windows, the last padded
    driving = points[None] + np.linspace(0, 3, n, dtype=np.float32)[:, None, None]
    driving[4] = np.nan  # a frame without a face
    frames = pipe(reference, points, None, driving, steps=2, seed=1)
    assert frames.shape == (n, 64, 64, 3) and frames.dtype == np.uint8
    again = pipe(reference, points, None, driving, steps=2, seed=1)
    assert np.array_equal(frames, again)
    with pytest.raises(ValueError, match="reference"):
        pipe(reference[:32], points, None, driving)


def test_the_trajectory_path_follows_tracks(pipe):
    reference, _ = _face()
    tracks = np.full((3, 5, 2), 32.0, np.float32)
    tracks[0, :, 0] += np.arange(5)  # one point moves right
    tracks[2, 1:] = np.nan  # one is lost after the first frame
    frames = pipe.animate_tracks(reference, tracks, steps=2)
    assert frames.shape == (5, 64, 64, 3)
    with pytest.raises(ValueError, match="tracks"):
        pipe.animate_tracks(reference, tracks[:, :, :1])


def test_the_folder_round_trip(pipe, tmp_path):
    folder = tmp_path / "mofa"
    pipe.save_pretrained(str(folder))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "MofaVideoPipeline"
    assert set(index) == {"_class_name", "unet", "controlnet", "cmp", "image_encoder"}
    loaded = MofaVideoPipeline.from_pretrained(str(folder), device="cpu", dtype="fp32")
    ours = pipe.net.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in loaded.net.state_dict().items())
    reference, points = _face()
    driving = points[None] + np.zeros((3, 1, 1), np.float32)
    a = loaded(reference, points, None, driving, steps=2).astype(int)
    b = pipe(reference, points, None, driving, steps=2).astype(int)
    assert np.abs(a - b).max() <= 1  # the same weights: the same frames (up to float rounding)


def _official_folder(root, config: dict, traj: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """A synthetic release at `config`'s layout with the official names: ckpts/mofa/<controlnet>/,
    ckpts/mofa/stable-video-diffusion-img2vid-xt-1-1/unet/, and a CMP pickle with `module.` names plus
    ResNet-50 keys facefab does not have."""
    from safetensors.torch import save_file

    if traj:
        config = {**config, "controlnet": {**config["controlnet"], "landmarks": False, "flow_zeroconv": True,
                                           "occlusion": None}}
    torch.manual_seed(1)
    parts = build_parts(config, only=("unet", "controlnet", "cmp"))
    states = {name: {k: torch.randn(v.shape) if v.is_floating_point() else v for k, v in m.state_dict().items()}
              for name, m in parts.items()}
    mofa = root / "ckpts" / "mofa"
    for folder, name in ((mofa / ("traj_controlnet" if traj else "ldmk_controlnet"), "controlnet"),
                         (mofa / "stable-video-diffusion-img2vid-xt-1-1" / "unet", "unet")):
        folder.mkdir(parents=True)
        parts[name].save_config(str(folder))
        save_file({k: v.contiguous() for k, v in states[name].items()},
                  str(folder / "diffusion_pytorch_model.safetensors"))
    cmp_dir = root / "models" / "cmp" / "experiments" / "semiauto_annot" / "resnet50_vip+mpii_liteflow" / "checkpoints"
    cmp_dir.mkdir(parents=True)
    cmp_state = {f"module.{k}": v for k, v in states["cmp"].items() if k.startswith("flow_encoder.")}
    cmp_state["module.image_encoder.layer1.0.conv1.weight"] = torch.randn(64, 64, 1, 1)
    torch.save({"state_dict": cmp_state, "step": 42000}, str(cmp_dir / "ckpt_iter_42000.pth.tar"))
    return states


@pytest.mark.parametrize("traj", [False, True], ids=["ldmk", "traj"])
def test_convert_places_every_official_tensor(tmp_path, traj):
    from facefab.jobs.commands.convert import converter_of

    states = _official_folder(tmp_path / "release", tiny(), traj=traj)
    report = converter_of("mofa-video")(str(tmp_path / "release"), str(tmp_path / "dst"), tiny())
    assert report["unmapped"] == ["cmp:module.image_encoder.layer1.0.conv1.weight"]
    assert set(report["missing"]) == {"cmp", "image_encoder"}  # our CMP image encoder / decoder; no CLIP here
    assert report["variant"] == {"landmarks": not traj, "flow_zeroconv": traj, "occlusion": not traj}
    loaded = MofaVideoPipeline.from_pretrained(str(tmp_path / "dst"), device="cpu", dtype="fp32")
    for part in ("unet", "controlnet"):
        got = getattr(loaded.net, part).state_dict()
        assert set(got) == set(states[part]) and all(torch.equal(got[k], v) for k, v in states[part].items())
    cmp = loaded.net.cmp.state_dict()
    assert all(torch.equal(cmp[k], v) for k, v in states["cmp"].items() if k.startswith("flow_encoder."))
    assert hasattr(loaded.net.controlnet, "occlusions") is not traj


def test_the_training_loss_runs_backward_through_the_cmp():
    from facefab.training.mofa_video import MofaVideoSystem

    system = MofaVideoSystem()
    system.configure(tiny(), options={"uncond_ratio": 0.0})
    model = system.build_model(tiny())
    assert all(p.requires_grad for p in model.parameters())  # the default stage: every part
    f, rng = tiny()["num_frames"], np.random.default_rng(0)
    points = (rng.random((f, 68, 2)) * 50 + 5).astype(np.float32)
    sparse, mask = sparse_hints(points[0], points[1:], 64)
    batch = {"target": torch.from_numpy(rng.integers(0, 255, (2, f, 64, 64, 3), dtype=np.uint8)),
             "sparse": torch.from_numpy(np.stack([sparse] * 2)), "mask": torch.from_numpy(np.stack([mask] * 2)),
             "marks": torch.from_numpy(np.stack([keypoint_images(points, 64, 1)] * 2))}
    loss, logs = system.loss(model, batch)
    assert torch.isfinite(loss) and "denoised_mse" in logs
    loss.backward()
    assert model.cmp.flow_encoder.features[0].weight.grad is not None
    system.configure(tiny(), stage="adapter")  # the official stage: the adapter only
    assert {n.split(".")[0] for n, p in system.build_model(tiny()).named_parameters() if p.requires_grad} == {
        "controlnet"}
    system.configure(tiny(), options={"train": ["everything"]})
    with pytest.raises(ValueError, match="group"):
        system.build_model(tiny())


def test_registry_and_operator_wiring():
    from facefab.models import registry
    from facefab.operators.reenact import DRIVEN, TrajectoryJobConfig

    spec = registry.get("mofa-video")
    assert spec.status == "implemented" and spec.trainable == ("mofa-video",)
    assert "mofa-video" in DRIVEN and TrajectoryJobConfig.neural == ("mofa-video",)
    assert isinstance(FlowControlNet, type) and issubclass(ControlNetUNet, torch.nn.Module)
