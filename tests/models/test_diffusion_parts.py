"""The shared diffusion parts of the talking-head generators (models/shared), at the tiny layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from facefab.media import read_audio
from facefab.models.shared.audio_projection import AudioProjModel
from facefab.models.shared.latents import PixelCodec, to_uint8, to_unit
from facefab.models.shared.motion_unet import AudioUNetMotionModel, audio_conditioning, build_denoiser, unet2d_config
from facefab.models.shared.reference_attention import install_reference_attention, spatial_self_attention_names
from facefab.models.shared.sampling import make_scheduler, noisy_batch, sample_continued, sample_overlapping
from facefab.models.shared.speech import frame_windows, speech_windows


@pytest.fixture
def unets():
    torch.manual_seed(0)
    cfg = unet2d_config("tiny")
    return UNet2DConditionModel(**cfg), build_denoiser(cfg, "tiny", audio_attention_dim=16, audio_regions=3)


def _inputs(frames=4):
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 3, frames, 8, 8, generator=g), torch.randn(frames, 4, 32, generator=g)


def test_reference_attention_carries_the_reference_into_every_frame(unets):
    ref, den = unets
    bank = install_reference_attention(ref, den)
    x, ctx = _inputs()
    plain = den(x, 10, encoder_hidden_states=ctx).sample
    outs = []
    for seed in (2, 3):
        with bank.writing():
            ref(torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), 0,
                encoder_hidden_states=ctx[:1])
        outs.append(den(x, 10, encoder_hidden_states=ctx).sample)
    assert (outs[0] - plain).abs().mean() > 1e-3  # the reference is read
    assert (outs[0] - outs[1]).abs().mean() > 1e-3  # and a different reference gives a different output
    bank.clear()
    assert torch.allclose(den(x, 10, encoder_hidden_states=ctx).sample, plain)
    # two references x two frames each: the bank batch serves consecutive rows
    with bank.writing(frames_per_sample=2):
        ref(torch.randn(4, 3, 8, 8), 0, encoder_hidden_states=torch.randn(4, 4, 32))
    assert bank.lookup(next(iter(bank.tokens)), 8).shape[0] == 8
    with pytest.raises(ValueError, match="multiple"):
        bank.lookup(next(iter(bank.tokens)), 3)


def test_audio_modules_start_neutral_follow_the_tokens_and_round_trip(unets, tmp_path):
    _, den = unets
    x, ctx = _inputs()
    tokens = torch.randn(4, 5, 16)
    base = den(x, 10, encoder_hidden_states=ctx).sample
    with audio_conditioning(den, tokens):
        assert torch.allclose(den(x, 10, encoder_hidden_states=ctx).sample, base)  # zero-initialised output
    for p in den.audio_parameters():
        if p.dim() == 2:
            torch.nn.init.normal_(p, std=0.05)
    masks = torch.zeros(4, 3, 64, 64)
    masks[:, 0, 32:, 16:48] = 1  # a "lip" region
    with audio_conditioning(den, tokens, masks):
        a = den(x, 10, encoder_hidden_states=ctx).sample
    with audio_conditioning(den, torch.randn(4, 5, 16), masks):
        b = den(x, 10, encoder_hidden_states=ctx).sample
    assert (a - b).abs().mean() > 1e-4  # other speech, other output
    with audio_conditioning(den, tokens, torch.zeros_like(masks)):
        assert torch.allclose(den(x, 10, encoder_hidden_states=ctx).sample, base, atol=1e-6)  # no region: no audio
    assert den.motion_parameters() and den.audio_parameters()
    den.save_pretrained(tmp_path)
    loaded = AudioUNetMotionModel.from_pretrained(tmp_path)
    with audio_conditioning(loaded, tokens, masks):
        assert torch.allclose(loaded(x, 10, encoder_hidden_states=ctx).sample, a, atol=1e-5)


def test_separate_reference_attention_is_v_express_formula():
    """V-Express' read (modules/mutual_self_attention.py): h += attn1(norm1(h)); h += w * attn1_5(norm1_5(h),
    the reference net's norm2 output); then attn2, ff as usual."""
    torch.manual_seed(0)
    cfg = unet2d_config("tiny")
    ref, den = UNet2DConditionModel(**cfg), build_denoiser(cfg, "tiny", reference_attention="separate")
    name = spatial_self_attention_names(den)[0]
    assert name == "down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"
    block = den.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0")
    assert {"attn1_5.to_q.weight", "norm1_5.weight"} <= set(block.state_dict())
    with pytest.raises(ValueError, match="attn1_5"):
        install_reference_attention(ref, build_denoiser(cfg, "tiny"), mode="separate")
    bank = install_reference_attention(ref, den, mode="separate")
    seen = {}
    ref_block = ref.get_submodule("down_blocks.0.attentions.0.transformer_blocks.0")
    ref_block.norm2.register_forward_hook(lambda _m, _a, out: seen.setdefault("norm2", out))
    with bank.writing():
        ref(torch.randn(1, 3, 8, 8), 0, encoder_hidden_states=torch.randn(1, 4, 32))
    assert torch.equal(bank.tokens[name], seen["norm2"])  # the writer stores its attn2 input
    bank.weight = 0.95
    h, ctx = torch.randn(4, 64, 32), torch.randn(4, 4, 32)
    with torch.no_grad():
        got = block(h, encoder_hidden_states=ctx)
        h = h + AttnProcessor2_0()(block.attn1, block.norm1(h))  # attn1 alone (its processor adds attn1_5)
        h = h + 0.95 * block.attn1_5(block.norm1_5(h), encoder_hidden_states=seen["norm2"].expand(4, -1, -1))
        h = h + block.attn2(block.norm2(h), encoder_hidden_states=ctx)
        want = h + block.ff(block.norm3(h))
    assert torch.allclose(got, want, atol=1e-5)


def test_hallo_audio_modules_have_the_official_widths():
    """hallo/models/unet_3d_blocks.py builds each audio module with heads of `in_channels // heads`: the
    layer's input width in a down block, the block's `in_channels` (not its output) in an up block."""
    cfg = unet2d_config("tiny", down_block_types=["CrossAttnDownBlock2D"] * 2,
                        up_block_types=["CrossAttnUpBlock2D"] * 2)
    den = build_denoiser(cfg, "tiny", audio_attention_dim=16, audio_regions=3, audio_block="hallo")
    shapes = {k: tuple(v.shape) for k, v in den.state_dict().items() if ".audio_modules." in k}
    assert shapes["down_blocks.1.audio_modules.0.proj_in.weight"] == (32, 64, 1, 1)  # in 32 -> out 64
    assert shapes["down_blocks.1.audio_modules.0.transformer_blocks.0.attn2_0.to_k.weight"] == (32, 16)
    assert shapes["up_blocks.0.audio_modules.1.proj_out.weight"] == (64, 32, 1, 1)  # out 64, in_channels 32
    assert shapes["mid_block.audio_modules.0.transformer_blocks.0.zero_conv_face.weight"] == (64, 64, 1, 1)
    assert not any(".attn2." in k for k in shapes)  # every block stacked: attn2_0/1/2 only
    x, ctx = torch.randn(1, 3, 2, 8, 8), torch.randn(2, 4, 32)
    base = den(x, 10, encoder_hidden_states=ctx).sample
    tokens, masks = torch.randn(2, 5, 16), torch.zeros(2, 3, 64, 64)
    with audio_conditioning(den, tokens, masks):
        assert torch.allclose(den(x, 10, encoder_hidden_states=ctx).sample, base)  # zero-initialised output
    for p in den.audio_parameters():
        torch.nn.init.normal_(p, std=0.05)
    with audio_conditioning(den, tokens, masks), torch.no_grad():
        no_region = den(x, 10, encoder_hidden_states=ctx).sample
        masks[:, 2, 32:, 16:48] = 1  # a lip region
        lip = den(x, 10, encoder_hidden_states=ctx).sample
    with audio_conditioning(den, torch.randn(2, 5, 16), masks), torch.no_grad():
        other = den(x, 10, encoder_hidden_states=ctx).sample
    assert (lip - no_region).abs().mean() > 1e-4 and (lip - other).abs().mean() > 1e-4


def test_audio_projection_and_speech_windows_on_real_speech(shared_data):
    audio = read_audio(str(shared_data / "audio" / "speech_eng.wav"), sample_rate=16000)[: 16000 * 2]
    feats = speech_windows(audio, 25.0, 50, seq_len=5)
    assert feats.shape == (50, 5, 4, 80) and np.isfinite(feats).all()
    # the centre block of frame t is frame t's own mel: neighbouring frames' windows are shifted copies
    assert np.allclose(feats[10, 3], feats[11, 2])
    proj = AudioProjModel(seq_len=5, blocks=4, channels=80, intermediate_dim=32, output_dim=16, context_tokens=3)
    assert proj(torch.from_numpy(feats)[None]).shape == (1, 50, 3, 16)
    assert sorted(k.split(".")[0] for k in proj.state_dict())[::2] == ["norm", "proj1", "proj2", "proj3"]
    assert frame_windows(np.arange(4), 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]]


def test_pixel_codec_round_trips_a_smooth_image():
    yy, xx = np.mgrid[0:64, 0:64]
    image = np.stack([xx * 4, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)[None]
    codec = PixelCodec(8)
    latents = codec.encode(to_unit(image))
    assert latents.shape == (1, 3, 8, 8)
    back = to_uint8(codec.decode(latents))
    assert np.abs(back.astype(int) - image).mean() < 6


def test_samplers_cover_every_frame_and_denoise_towards_the_prediction():
    target = torch.full((1, 3, 10, 4, 4), 0.5)
    scheduler = make_scheduler({"prediction_type": "epsilon", "rescale_betas_zero_snr": False})

    def eps_towards_target(x, t, *_):
        alpha = scheduler.alphas_cumprod[int(t)]
        return (x - alpha.sqrt() * target[:, :, : x.shape[2]]) / (1 - alpha).sqrt()

    noise = torch.randn(1, 3, 10, 4, 4, generator=torch.Generator().manual_seed(0))
    assert (noise - target).abs().mean() > 0.5
    out = sample_overlapping(eps_towards_target, scheduler, noise, steps=10, window=4, overlap=2)
    # (DDIM's last step keeps sqrt(1 - alpha_0) of the noise: near, not at, the target)
    assert (out - target).abs().mean() < 0.05
    seen = []

    def record(x, t, motion, frames):
        seen.append((frames.start, motion.shape[2]))
        return eps_towards_target(x, t)

    out = sample_continued(record, scheduler, (1, 3, 10, 4, 4), torch.zeros(1, 3, 2, 4, 4), steps=5, window=4, seed=0)
    assert out.shape == (1, 3, 10, 4, 4) and (out - target).abs().mean() < 0.05
    assert sorted({s for s, _ in seen}) == [0, 4, 8] and {k for _, k in seen} == {2}
    noisy, t, v = noisy_batch(make_scheduler(), target)
    assert noisy.shape == v.shape == target.shape and t.shape == (1,)
