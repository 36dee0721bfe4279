"""One run in its folder: the folder and its lock, resume, metrics.json, the sweep summary, which callbacks run."""
