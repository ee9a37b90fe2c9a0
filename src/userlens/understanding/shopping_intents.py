"""NCLUE Shopping Intent profiles: describe the people of a reference panel who resemble a Task's
target group (their gender, age group and shopping interests, against the whole panel).

POST takes a completed Task (409 otherwise) and picks the newest reference panel of the Task's model
(panels.py; the built-in synthetic panel when the model has none, 422 MODEL_MISMATCH when there can
be none). The job scores every panel user with the Task's classifier and builds the report
(intent_report.py). The scoring runs on the executor (jobs/executor.py: threads, or Ray tasks), one
panel part a chunk: a chunk reads its part from the object store, scores it and returns the part's
summary (attribute counts and its own top group-size users' scores and codes, no vectors); the job
merges the summaries in panel order as they come, so the report is the same on every executor (and
equal to the report of the whole panel at once). The TSV is written under an attempt-unique folder
of the internal bucket and published with the JSON form, `line_count` (panel users scored) and
`disk_usage` (the TSV's bytes, counted in the account's storage quota) when the job completes.
The download serves that TSV as `{profile_id}.tsv`, only once the profile is completed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import Conflict
from userlens.jobs.engine import JobContext, JobFailure, Outcome, TransientJobError
from userlens.jobs.models import JobStatus
from userlens.storage.objectstore import ObjectStore, ObjectStoreError
from userlens.understanding import intent_report
from userlens.understanding.models import ReferencePanel, ShoppingIntent, Task
from userlens.understanding.outputs import upload_failed
from userlens.understanding.panels import SECTIONS, PanelService, iter_part
from userlens.understanding.resources import ResourceService, account_storage_used
from userlens.understanding.tasks import TaskService, load_classifier
from userlens.understanding.validation import check_name

JOB_KIND = "nclue.shopping_intent"


@dataclass(frozen=True)
class PanelJob:
    """What every chunk of one profile's scoring shares (picklable: sent once to Ray)."""

    predict: Callable[[np.ndarray], np.ndarray]  # the Task's Classifier.predict_proba (pickles without its caches)
    bucket: str  # the internal bucket
    prefix: str  # the panel's folder
    panel_name: str
    sizes: dict[str, int]  # codes per section
    group_size: int  # of the whole panel


def score_panel_part(store: ObjectStore, job: PanelJob, part: int) -> intent_report.PanelSummary:
    """One chunk: scores the users of one panel part and returns the part's summary."""
    summary = None
    # Store failures surface from iter_part as JobFailure / OBS_DOWNLOAD_FAILED (transient) already.
    for block in iter_part(store, job.bucket, job.prefix, job.panel_name, part):
        data = intent_report.PanelScores(
            scores=np.asarray(job.predict(block.vectors), dtype=np.float64),
            **{k: getattr(block, k).astype(np.int64) for k in ("gender", "age_group", "interest_counts", "interest_codes")},
        )
        block_summary = intent_report.summarize(data, job.sizes, job.group_size)
        summary = block_summary if summary is None else intent_report.merge(summary, block_summary)
    return summary if summary is not None else _empty(job)


def _empty(job: PanelJob) -> intent_report.PanelSummary:
    none = np.zeros(0, dtype=np.int64)
    return intent_report.PanelSummary(
        0, {s: np.zeros(n, dtype=np.int64) for s, n in job.sizes.items()},
        intent_report.PanelScores(np.zeros(0, dtype=np.float64), none, none, none, none), job.group_size,
    )


class ShoppingIntentService(ResourceService):
    model = ShoppingIntent
    kind = JOB_KIND
    storage_folder = "shopping-intents"
    label = "Shopping Intent profile"

    def __init__(self, deps, tasks: TaskService, panels: PanelService):
        super().__init__(deps)
        self.tasks, self.panels = tasks, panels
        # A Task (or a panel) cannot be deleted while a profile that reads it has not finished.
        tasks.dependent_checks.append(lambda s, tid: self.active_where(s, ShoppingIntent.task_id == tid))
        panels.dependent_checks.append(lambda s, pid: self.active_where(s, ShoppingIntent.panel_id == pid))

    def create(self, account_id: str, body: dict) -> ShoppingIntent:
        d = self.deps
        name = check_name(body.get("name"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            model_name = self.tasks.require_completed(s, account_id, body.get("task_id"), "task_id").model_name
        # Outside the transaction: the first profile of a model may import the built-in panel.
        panel = self.panels.for_model(model_name)
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            task = self.tasks.require_completed(s, account_id, body.get("task_id"), "task_id")
            profile_id = self.new_id()
            job = self.submit(s, account_id, profile_id)
            row = ShoppingIntent(
                id=profile_id, account_id=account_id, name=name, job_id=job.id, task_id=task.id, task_name=task.name,
                model_name=task.model_name, panel_id=panel.id, panel_name=panel.name, created_at=job.created_at,
            )
            s.add(row)
            s.flush()
            s.refresh(row)
            return row

    def download(self, account_id: str, profile_id: str) -> bytes:
        """The result TSV of a completed profile (409 before that)."""
        row = self.get(account_id, profile_id)
        if row.job.status != JobStatus.COMPLETED.value or row.result_key is None:
            raise Conflict(f"shopping intent profile {profile_id} is {row.job.status}; its result can be downloaded once it is completed")
        try:
            return self.deps.store.read_bytes(self.deps.internal_bucket, row.result_key)
        except FileNotFoundError as exc:
            raise Conflict(f"the result of shopping intent profile {profile_id} is missing from storage") from exc

    # -- the job -------------------------------------------------------------------------------
    def _score_panel(self, panel: ReferencePanel, predict, ctx: JobContext) -> intent_report.PanelSummary:
        """The summary of the whole panel, its parts scored by the executor and merged in panel order."""
        job = PanelJob(predict, self.deps.internal_bucket, panel.prefix, panel.name, {s: len(panel.categories[s]) for s in SECTIONS}, intent_report.group_size(panel.user_count))
        summary = _empty(job)

        def on_result(i: int, part: intent_report.PanelSummary) -> None:
            nonlocal summary
            summary = intent_report.merge(summary, part)  # called in input order: panel order
            part.candidates = None  # merged; the executor keeps every result until the map ends
            ctx.progress(min(0.95, 0.05 + 0.9 * summary.users / max(1, panel.user_count)), f"{summary.users} panel users scored")

        self.deps.executor.map(ctx, score_panel_part, list(range(panel.part_count)), shared=job, on_result=on_result)
        ctx.check()
        if summary.users != panel.user_count:
            raise JobFailure("COMMON_ERROR", f"reference panel {panel.name!r} holds {summary.users} users, {panel.user_count} expected")
        return summary

    def run_job(self, ctx: JobContext) -> Outcome:
        d = self.deps
        account_id, profile_id = ctx.payload["account_id"], ctx.payload["id"]
        with d.db.session() as s:
            row = s.get(ShoppingIntent, profile_id)
            if row is None:
                raise JobFailure("COMMON_ERROR", "the Shopping Intent profile was deleted")
            task = s.get(Task, row.task_id)
            panel = s.get(ReferencePanel, row.panel_id)
            used = account_storage_used(s, account_id)
        if task is None or task.artifact_key is None:
            raise JobFailure("COMMON_ERROR", "the Task is no longer available")
        if panel is None:
            raise JobFailure("COMMON_ERROR", f"reference panel {row.panel_name!r} is no longer available")
        # Nothing under the profile's folder is published yet: a dead attempt's file goes.
        try:
            d.store.delete_prefix(d.internal_bucket, self.output_root(account_id, profile_id))
        except ObjectStoreError as exc:
            raise TransientJobError("OBS_UPLOAD_FAILED", str(exc)) from exc
        ctx.progress(0.02, "loading the Task model")
        clf = load_classifier(d.store, d.internal_bucket, task.artifact_key)
        if clf.dim != panel.dim:
            raise JobFailure("COMMON_ERROR", f"the Task expects {clf.dim}-dimensional vectors, reference panel {panel.name!r} has {panel.dim}")
        summary = self._score_panel(panel, clf.predict_proba, ctx)
        report = {"panel_id": panel.id, "panel_name": panel.name, **intent_report.report_from_summary(summary, panel.categories)}
        tsv = intent_report.render_tsv(report)
        if used + len(tsv) > d.quota_bytes:
            raise JobFailure("DISK_SPACE_SHORTAGE", f"storage quota of {d.quota_bytes} bytes exceeded ({used} used)")
        key = f"{self.output_root(account_id, profile_id)}/{ctx.attempt_tag}/{profile_id}.tsv"
        try:
            d.store.write_bytes(d.internal_bucket, key, tsv)
            disk_usage = d.store.size(d.internal_bucket, key)
        except ObjectStoreError as exc:
            raise upload_failed("writing the result", exc) from exc
        lines = int(summary.users)

        def publish(s: Session) -> None:
            s.execute(update(ShoppingIntent).where(ShoppingIntent.id == profile_id).values(result=report, result_key=key, line_count=lines, disk_usage=disk_usage))

        return Outcome(result={"line_count": lines, "disk_usage": disk_usage}, publish=publish)
