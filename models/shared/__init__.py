"""Parts several generator families share, each written once:

- `windows`: temporal windows with cross-faded overlaps.
- `speech`: per-frame log-mel speech features (`audio_mel_windows`, `speech_windows`).
- `audio_projection`: speech features -> per-frame context tokens (Hallo's AudioProjModel).
- `reference_attention`: ReferenceNet attention injection (reference UNet -> denoiser: joined to its
  self-attention, Hallo's form, or V-Express' separate reference attention).
- `motion_unet`: the video denoiser (SD1.5 spatial + AnimateDiff temporal modules + audio attention:
  a simple one or Hallo's official audio modules).
- `latents`: SD VAE or pixel latents.
- `sampling`: DDIM scheduler, training targets, classifier-free guidance, windowed sampling with
  overlap (V-Express), motion frames (Hallo) or known (inpainted) frames (Follow-Your-Emoji).
- `guider`: the AnimateAnyone pose/landmark guider (V-Express' V-kps guider, Follow-Your-Emoji's
  lmk_guider) and its features added after the denoiser's conv_in.
- `checkpoints`: helpers of the released-checkpoint converters (tensors-only pickles, AnimateDiff names).
- `driven`: the inference interface of the video-driven (reenactment) pipelines.
- `net_pipeline`: what a pipeline around one network has by itself (size, device, dtype, placement, its
  folder's vae/ and image_encoder/, latents -> frames), for the pipelines to share (MegActor's uses it).
- `talking`: the inference interface of the audio-driven talking-head pipelines.
"""
