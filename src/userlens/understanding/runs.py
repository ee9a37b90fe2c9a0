"""NCLUE Task Runs: score every user of a Feature with a Task, into a TSV in the customer's bucket.

The file (naming: `outputs.result_object_key`) has the header `user_id<TAB>score` and one line per
user, score = the Task's probability of label 1 with 6 decimals. It streams: one Parquet row group of
vectors at a time is scored and written, so memory stays flat whatever the Feature's size. The Task
and the Feature must be of the same model (422 MODEL_MISMATCH), and both completed (409).
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import DomainError
from userlens.jobs.engine import JobContext, JobFailure, JobRegistry, Outcome
from userlens.storage.db import utcnow
from userlens.understanding import outputs, vectors
from userlens.understanding.features import FeatureService
from userlens.understanding.models import Feature, Task, TaskRun
from userlens.understanding.resources import ResourceService
from userlens.understanding.tasks import TaskService, load_classifier
from userlens.storage.objectstore import InvalidObjectPath, ObjectStoreError, check_bucket
from userlens.understanding.validation import check_name, check_path_characters

JOB_KIND = "nclue.task_run"


def check_result_location(deps, bucket: object, path: object) -> str:
    """The result path's characters (422 / 10103) and bucket (404 / 10106); the file need not exist."""
    path = check_path_characters(path, "result_file_path", "INVALID_PATH_CHARACTER")
    try:
        check_bucket(bucket if isinstance(bucket, str) else "")
        exists = bucket != deps.internal_bucket and deps.store.bucket_exists(bucket)
    except InvalidObjectPath:
        exists = False
    except ObjectStoreError as exc:
        raise DomainError(f"object storage unavailable: {exc}", name="OBS_UNAVAILABLE") from exc
    if not exists:
        raise DomainError(f"result bucket {bucket!r} does not exist", name="PATH_NOT_FOUND")
    return path


def score_batches(deps, feature: Feature, score, ctx: JobContext, total: int | None):
    """(user_ids, scores) per row group of the Feature, reporting progress."""
    done = 0
    for ids, mat in vectors.iter_vectors(deps.store, deps.internal_bucket, feature.vectors_prefix):
        ctx.check()
        yield ids, score(mat)
        done += len(ids)
        if total:
            ctx.progress(min(0.99, done / total), f"{done} users scored")


class RunService(ResourceService):
    model = TaskRun
    kind = JOB_KIND
    label = "Run"

    def __init__(self, deps, features: FeatureService, tasks: TaskService):
        super().__init__(deps)
        self.features, self.tasks = features, tasks
        features.dependent_checks.append(lambda s, fid: self.active_where(s, TaskRun.feature_id == fid))
        tasks.dependent_checks.append(lambda s, tid: self.active_where(s, TaskRun.task_id == tid))

    def create(self, account_id: str, body: dict) -> TaskRun:
        d = self.deps
        name = check_name(body.get("name"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
        path = check_result_location(d, body.get("result_bucket"), body.get("result_file_path"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            task = self.tasks.require_completed(s, account_id, body.get("task_id"), "task_id")
            feature = self.features.require_completed(s, account_id, body.get("feature_id"), "feature_id")
            if task.model_name != feature.model_name:
                raise DomainError(f"the Task was trained on model {task.model_name}, the Feature was made by {feature.model_name}: they must be the same model", name="MODEL_MISMATCH")
            run_id = self.new_id()
            job = self.submit(s, account_id, run_id)
            run = TaskRun(
                id=run_id, account_id=account_id, name=name, job_id=job.id, task_id=task.id, task_name=task.name,
                feature_id=feature.id, feature_name=feature.name, result_bucket=body["result_bucket"],
                result_file_path=outputs.result_object_key(path, utcnow()), created_at=job.created_at,
            )
            s.add(run)
            s.flush()
            s.refresh(run)
            return run

    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(JOB_KIND, self.run_job)

    def run_job(self, ctx: JobContext) -> Outcome:
        d = self.deps
        run_id = ctx.payload["id"]
        with d.db.session() as s:
            run = s.get(TaskRun, run_id)
            if run is None:
                raise JobFailure("COMMON_ERROR", "the Run was deleted")
            task = s.get(Task, run.task_id)
            feature = s.get(Feature, run.feature_id)
        if task is None or task.artifact_key is None or feature is None or feature.vectors_prefix is None:
            raise JobFailure("COMMON_ERROR", "the Task or the Feature is no longer available")
        clf = load_classifier(d.store, d.internal_bucket, task.artifact_key)
        if clf.dim != feature.dim:
            raise JobFailure("COMMON_ERROR", f"the Task expects {clf.dim}-dimensional vectors, the Feature has {feature.dim}")
        lines = outputs.write_scores_tsv(d.store, run.result_bucket, run.result_file_path, score_batches(d, feature, clf.predict_proba, ctx, feature.user_count))

        def publish(s: Session) -> None:
            s.execute(update(TaskRun).where(TaskRun.id == run_id).values(line_count=lines))

        return Outcome(result={"line_count": lines}, publish=publish)
