"""ReferenceNet attention injection ("mutual self-attention" of AnimateAnyone, used by Hallo and V-Express).

A reference UNet (a plain 2D UNet of the denoiser's shape) runs once on the reference image's latents; the
input of every spatial self-attention (`attn1`, after its layer norm) is stored in a `ReferenceBank`. The
denoiser's spatial self-attention of the same name then attends over its own tokens AND those stored
tokens (they are concatenated to its keys/values), which carries the reference's appearance into every
generated frame. Temporal (motion-module) attention is untouched.

    bank = install_reference_attention(reference_unet, denoiser)
    with bank.writing(frames_per_sample=1):
        reference_unet(ref_latents, timestep_zero, encoder_hidden_states=ctx)
    noise = denoiser(latents, t, encoder_hidden_states=...).sample   # reads the bank
    bank.clear()

Batches: the reference batch is B * K (K reference images per sample, e.g. the reference and motion
frames); their tokens are joined per sample to (B, K*N, C). A denoiser batch of B*F frames (or 2B*F under
guidance when the reference batch is doubled too) receives its sample's tokens: the bank batch must
divide the attention batch, each bank entry serving that many consecutive rows.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor2_0


def spatial_self_attention_names(unet) -> list[str]:
    """Processor names of a UNet's spatial self-attentions (`...attentions.i.transformer_blocks.j.attn1`),
    the same in a UNet2DConditionModel and in a UNetMotionModel of the same layout."""
    return [name for name in unet.attn_processors
            if ".attentions." in name and name.endswith("attn1.processor") and "motion_modules" not in name]


class ReferenceBank:
    """The reference tokens of one forward of the reference UNet, keyed by attention name."""

    def __init__(self) -> None:
        self.tokens: dict[str, torch.Tensor] = {}
        self._write_group: int | None = None  # frames per sample while writing, else None

    @contextmanager
    def writing(self, frames_per_sample: int = 1):
        """Within: the reference UNet's attentions store their tokens (replacing what was there)."""
        self.tokens.clear()
        self._write_group = frames_per_sample
        try:
            yield self
        finally:
            self._write_group = None

    def clear(self) -> None:
        self.tokens.clear()

    def store(self, name: str, hidden: torch.Tensor) -> None:
        k = self._write_group
        if k is None:
            return
        if hidden.shape[0] % k:
            raise ValueError(f"reference batch {hidden.shape[0]} is not a multiple of frames_per_sample={k}")
        self.tokens[name] = hidden.reshape(hidden.shape[0] // k, k * hidden.shape[1], hidden.shape[2])

    def lookup(self, name: str, batch: int) -> torch.Tensor | None:
        tokens = self.tokens.get(name)
        if tokens is None:
            return None
        if batch % tokens.shape[0]:
            raise ValueError(f"attention batch {batch} is not a multiple of the reference batch {tokens.shape[0]}")
        return tokens.repeat_interleave(batch // tokens.shape[0], dim=0)


class _Write:
    def __init__(self, bank: ReferenceBank, name: str) -> None:
        self.bank, self.name, self.inner = bank, name, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        self.bank.store(self.name, hidden_states)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class _Read:
    def __init__(self, bank: ReferenceBank, name: str) -> None:
        self.bank, self.name, self.inner = bank, name, AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        reference = self.bank.lookup(self.name, hidden_states.shape[0])
        if reference is not None:
            encoder_hidden_states = torch.cat([hidden_states, reference.to(hidden_states.dtype)], dim=1)
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def install_reference_attention(reference_unet, denoising_unet, bank: ReferenceBank | None = None) -> ReferenceBank:
    """Make `reference_unet` write and `denoising_unet` read a (new or given) ReferenceBank.

    The two UNets must have the same spatial attention layout (the names must match). Processors hold no
    weights: state dicts, save_pretrained and training are unaffected."""
    bank = bank or ReferenceBank()
    ref_names, den_names = spatial_self_attention_names(reference_unet), spatial_self_attention_names(denoising_unet)
    missing = sorted(set(ref_names) - set(den_names))
    if missing or not ref_names:
        raise ValueError(f"reference and denoising UNets differ in spatial attention layout: {missing[:3] or 'none'}")
    for unet, names, cls in ((reference_unet, ref_names, _Write), (denoising_unet, ref_names, _Read)):
        processors = dict(unet.attn_processors)
        processors.update({name: cls(bank, name) for name in names})
        unet.set_attn_processor(processors)
    return bank


__all__ = ["ReferenceBank", "install_reference_attention", "spatial_self_attention_names"]
