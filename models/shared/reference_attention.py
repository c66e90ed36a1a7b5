"""ReferenceNet attention injection ("mutual self-attention" of AnimateAnyone, used by Hallo and V-Express).

A reference UNet (a plain 2D UNet of the denoiser's shape) runs once on the reference image's latents and
stores tokens of every spatial transformer block in a `ReferenceBank`; the denoiser's transformer block of
the same name reads them. Two modes, one per official model:

- "joined" (AnimateAnyone, Hallo): the input of the reference's self-attention (`attn1`, after `norm1`) is
  stored; the denoiser's `attn1` attends over its own tokens AND those (concatenated to its keys/values).
- "separate" (V-Express' TemporalBasicTransformerBlock + its mutual_self_attention "read"): the input of
  the reference's cross-attention (`attn2`, after `norm2`) is stored; the denoiser's `attn1` stays a plain
  self-attention and every spatial transformer block has its own reference attention after it:
  `h = h + weight * attn1_5(norm1_5(h), reference)` (`add_separate_reference_modules` creates `norm1_5` /
  `attn1_5` with the official names; `bank.weight` is the official reference_attention_weight).

Temporal (motion-module) attention is untouched.

    bank = install_reference_attention(reference_unet, denoiser)   # mode="joined"
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

import copy
from contextlib import contextmanager

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

MODES = ("joined", "separate")


def spatial_self_attention_names(unet) -> list[str]:
    """Processor names of a UNet's spatial self-attentions (`...attentions.i.transformer_blocks.j.attn1`),
    the same in a UNet2DConditionModel and in a UNetMotionModel of the same layout."""
    return [name for name in unet.attn_processors
            if ".attentions." in name and name.endswith("attn1.processor") and "motion_modules" not in name]


class ReferenceBank:
    """The reference tokens of one forward of the reference UNet, keyed by attention name."""

    def __init__(self) -> None:
        self.tokens: dict[str, torch.Tensor] = {}
        self.weight = 1.0  # scales the separate reference attention's output ("separate" mode only)
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


class _ReadSeparate:
    """The denoiser's `attn1` in "separate" mode: plain self-attention, then the block's own reference
    attention on the residual stream, returned together so the block's `h + attn1(...)` gives
    `h + a + weight * attn1_5(norm1_5(h + a), reference)`. The block input `h` is caught by a pre-hook on
    `norm1`."""

    def __init__(self, bank: ReferenceBank, name: str, block) -> None:
        self.bank, self.name, self.inner, self.block = bank, name, AttnProcessor2_0(), block
        self.block_input: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        reference, residual = self.bank.lookup(self.name, hidden_states.shape[0]), self.block_input
        self.block_input = None
        if reference is None or residual is None:
            return out
        stream = residual.reshape(out.shape) + out
        extra = self.block.attn1_5(self.block.norm1_5(stream), encoder_hidden_states=reference.to(out.dtype))
        return out + self.bank.weight * extra


def _block_name(processor_name: str) -> str:
    return processor_name.removesuffix(".attn1.processor")


def add_separate_reference_modules(unet) -> None:
    """Give every spatial transformer block of `unet` V-Express' separate reference attention: `norm1_5` and
    `attn1_5`, of `norm1` / `attn1`'s kind and size (the official TemporalBasicTransformerBlock builds them
    with the same arguments), so official `...transformer_blocks.0.attn1_5.*` keys load as they are."""
    for name in spatial_self_attention_names(unet):
        block = unet.get_submodule(_block_name(name))
        block.norm1_5, block.attn1_5 = copy.deepcopy(block.norm1), copy.deepcopy(block.attn1)
        block.attn1_5.set_processor(AttnProcessor2_0())


def install_reference_attention(reference_unet, denoising_unet, bank: ReferenceBank | None = None,
                                mode: str = "joined") -> ReferenceBank:
    """Make `reference_unet` write and `denoising_unet` read a (new or given) ReferenceBank, in `mode`
    ("joined" | "separate", see the module docstring; "separate" needs `add_separate_reference_modules`
    on the denoiser first).

    The two UNets must have the same spatial attention layout (the names must match). Processors hold no
    weights: state dicts, save_pretrained and training are unaffected."""
    if mode not in MODES:
        raise ValueError(f"unknown reference attention mode {mode!r}; choose from {MODES}")
    bank = bank or ReferenceBank()
    ref_names, den_names = spatial_self_attention_names(reference_unet), spatial_self_attention_names(denoising_unet)
    missing = sorted(set(ref_names) - set(den_names))
    if missing or not ref_names:
        raise ValueError(f"reference and denoising UNets differ in spatial attention layout: {missing[:3] or 'none'}")
    writers = {name: _Write(bank, name) for name in ref_names}
    if mode == "joined":
        readers = {name: _Read(bank, name) for name in ref_names}
    else:
        blocks = {name: denoising_unet.get_submodule(_block_name(name)) for name in ref_names}
        if not all(hasattr(block, "attn1_5") for block in blocks.values()):
            raise ValueError("separate reference attention needs attn1_5 / norm1_5 in the denoiser's blocks "
                             "(add_separate_reference_modules, or the denoiser's reference_attention config)")
        readers = {name: _ReadSeparate(bank, name, block) for name, block in blocks.items()}
        for reader, block in zip(readers.values(), blocks.values()):
            block.norm1.register_forward_pre_hook(lambda _m, args, r=reader: setattr(r, "block_input", args[0]))
        # the reference's tokens: the input of its cross-attention (the official writer's norm2 output)
        writers = {name.replace(".attn1.processor", ".attn2.processor"): w for name, w in writers.items()}
    for unet, new in ((reference_unet, writers), (denoising_unet, readers)):
        processors = dict(unet.attn_processors)
        processors.update(new)
        unet.set_attn_processor(processors)
    return bank


__all__ = ["MODES", "ReferenceBank", "add_separate_reference_modules", "install_reference_attention",
           "spatial_self_attention_names"]
