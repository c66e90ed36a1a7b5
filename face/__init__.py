"""Pure face algorithms on arrays (no rows, no operators): detection and tracking, the 478-point
mesh and its index tables, the one alignment transform, head pose, parsing masks, flow, quality
scores and the one smoothing module."""
