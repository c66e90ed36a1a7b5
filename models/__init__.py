"""Generator networks and their inference pipelines, diffusers style (config + from_pretrained /
save_pretrained; no rows, no Ray), the one weights loader, and the parts several generators share."""
