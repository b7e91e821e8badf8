"""The batch job: a file of texts to a file of vectors, bounded and resumable."""

from embedloom.batch.job import JobOptions, JobSummary, run_job

__all__ = ["JobOptions", "JobSummary", "run_job"]
