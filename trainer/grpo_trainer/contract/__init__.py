"""What the operator and the trainer share: the job's hyperparameters, the trainer's config
file, its exit codes, the progress document and the vLLM command.

Imports only the standard library and pydantic, so the operator (no torch) can
depend on it; everything else in grpo_trainer may depend on it, never the reverse.
"""
