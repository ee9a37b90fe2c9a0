"""Shared NCLUE response pieces: timestamps and job status fields."""

from __future__ import annotations

import datetime as dt

from userlens.jobs.models import Job, JobStatus


def iso(value: dt.datetime | None) -> str | None:
    """ISO 8601 with offset, to the second (e.g. 2026-11-22T07:30:05+00:00)."""
    return None if value is None else value.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


def job_fields(job: Job) -> dict:
    finished = job.status in (JobStatus.COMPLETED.value, JobStatus.FAILED.value)
    return {
        "status": job.status,
        "completed_at": iso(job.finished_at) if finished else None,
        "fail_message": job.fail_message if job.status == JobStatus.FAILED.value else None,
    }


def job_extensions(job: Job) -> dict:
    """userlens extensions (ignored by NCLUE clients): progress while running, the failure detail."""
    return {
        "progress": job.progress,
        "fail_detail": job.fail_detail if job.status == JobStatus.FAILED.value else None,
    }
