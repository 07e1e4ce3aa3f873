"""One training run: the loop and its entry point, processes, checkpoints, progress
reporting (board, HTTP server) and experiment tracking."""
