"""What the Python API and the ``grpo`` CLI raise: each carries the job's own words.

A notebook user sees one exception per way a job can go wrong, with the message the
job itself gives (the admission error naming the field, the Failed condition's
reason and message), not a traceback from a client library.
"""

from __future__ import annotations

from typing import Optional


class GRPOError(Exception):
    """Base of the client's errors."""


class BundleError(GRPOError, ValueError):
    """The student, its metric or its data cannot be shipped to the trainer; the message names what and the fix."""


class JobRejected(GRPOError):
    """The job was refused before it ran: by the API server's admission (schema, CEL), by validation, or
    locally by grpo-local's checks. ``problems`` are 'field: message' lines."""

    def __init__(self, message: str, problems: Optional[list[str]] = None) -> None:
        super().__init__(message)
        self.problems = problems or []


class JobFailed(GRPOError):
    """The job ran and failed (or was stopped); ``reason`` is its Failed condition's reason."""

    def __init__(self, job: str, reason: str, message: str) -> None:
        super().__init__(f"GRPOJob {job} failed ({reason}): {message}")
        self.job = job
        self.reason = reason
        self.message = message


class NotServed(GRPOError):
    """The finished job's result cannot be reached (not served, or the endpoint does not answer)."""
