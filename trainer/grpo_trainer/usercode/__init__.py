"""The job's own code: fetched (git, pip) before the trainer starts, then put on its import path."""
