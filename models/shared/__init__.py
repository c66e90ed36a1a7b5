"""Parts several generator families share: temporal windows with cross-faded overlaps (and, as
the diffusion families land, reference-net attention, temporal layers, audio attention, guidance)."""
