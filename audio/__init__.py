"""Pure audio algorithms on arrays: framing to video frames, log-mel and its per-frame windows,
RMS, silero voice activity."""
