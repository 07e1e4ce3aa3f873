"""The trainer process's exit codes, read by the local runner and (from the pod status) by the operator."""

DONE = 0
FAILED = 1
# A signal stopped the run after a checkpoint, before its last step; a rerun resumes.
# Not 0 (sysexits' EX_TEMPFAIL): in a pod, an early stop that exited 0 would make the
# pod Succeeded and read as a finished job.
INTERRUPTED = 75
# The job itself is wrong (program, metric or data; grpo_trainer.dspy.task): a rerun fails the
# same way, so the operator fails the job at once, spending no retry (sysexits' EX_CONFIG).
INVALID_JOB = 78
