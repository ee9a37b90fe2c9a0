"""NCLUE Task Runs: score every user of a Feature with a Task, into a TSV in the customer's bucket.

The file (naming: `outputs.result_object_key`) has the header `user_id<TAB>score` and one line per
user, score = the Task's probability of label 1 with 6 decimals. It streams: one Parquet row group of
vectors at a time is scored and written, so memory stays flat whatever the Feature's size. The Task
and the Feature must be of the same model (422 MODEL_MISMATCH), and both completed (409).
"""

from __future__ import annotations

from userlens.errors import DomainError
from userlens.jobs.engine import JobFailure
from userlens.storage.db import utcnow
from userlens.understanding import outputs
from userlens.understanding.features import FeatureService
from userlens.understanding.models import Feature, Task, TaskRun
from userlens.understanding.scoring import ScoreFileService, check_result_location
from userlens.understanding.tasks import TaskService, load_classifier
from userlens.understanding.validation import check_name

JOB_KIND = "nclue.task_run"


class RunService(ScoreFileService):
    model = TaskRun
    kind = JOB_KIND
    label = "Run"
    storage_folder = "runs"  # the attempt's TSV pieces, until they are composed into the result

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
            return self.add(s, run)

    def scorer(self, row: TaskRun, feature: Feature):
        with self.deps.db.session() as s:
            task = s.get(Task, row.task_id)
        if task is None or task.artifact_key is None:
            raise JobFailure("COMMON_ERROR", "the Task is no longer available")
        clf = load_classifier(self.deps.store, self.deps.internal_bucket, task.artifact_key)
        if clf.dim != feature.dim:
            raise JobFailure("COMMON_ERROR", f"the Task expects {clf.dim}-dimensional vectors, the Feature has {feature.dim}")
        return clf.predict_block
