"""NCLUE Tasks: train a binary classifier on a Feature's vectors and a correct-answer file.

Without test fields the labelled users are split 80/20, stratified, with seed 42 (TEST_SHARE, SEED).
With them, the test file (joined with the test Feature, which must be of the same model) is the test
set. The training answers (all of them, before an automatic split) need at least MIN_PER_LABEL (100)
rows of each label after joining with the Feature; a test file needs at least one of each (AUC is
undefined otherwise); both fail with NUM_OF_LABEL_INSUFFICIENT. Users that appear more than
once in a Feature count once (the first vector). Tasks of one account train one at a time, in the
order they were requested (a concurrency key per account); other job kinds run meanwhile.

`performance` (GET /tasks/{id}) holds the test metrics at threshold 0.5: auc, accuracy, precision,
recall, f1, positive_rate, predicted_positive_rate, train_count, test_count, train_positive_count,
test_positive_count, split, model, validation (the candidates tried) and roc_curve {fpr, tpr}.
"""

from __future__ import annotations

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import DomainError
from userlens.jobs.engine import JobContext, JobFailure, Outcome, TransientJobError
from userlens.storage.objectstore import ObjectStoreError
from userlens.understanding import answers, classifier, vectors
from userlens.understanding.features import FeatureService
from userlens.understanding.models import Feature, Task
from userlens.understanding.outputs import upload_failed
from userlens.understanding.resources import ResourceService, account_storage_used
from userlens.understanding.validation import check_name, check_path_characters, check_path_exists

JOB_KIND = "nclue.task"
MIN_PER_LABEL = 100
TEST_SHARE = 0.2
SEED = 42



def load_classifier(store, bucket: str, key: str) -> classifier.Classifier:
    try:
        return classifier.Classifier.from_bytes(store.read_bytes(bucket, key))
    except ObjectStoreError as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", f"reading the Task model: {exc}") from exc


class TaskService(ResourceService):
    model = Task
    kind = JOB_KIND
    storage_folder = "tasks"
    label = "Task"

    def __init__(self, deps, features: FeatureService):
        super().__init__(deps)
        self.features = features
        # A Feature cannot be deleted while a Task that reads it has not finished.
        features.dependent_checks.append(lambda s, fid: self.active_where(s, (Task.train_feature_id == fid) | (Task.test_feature_id == fid)))

    def create(self, account_id: str, body: dict) -> Task:
        d = self.deps
        name = check_name(body.get("name"))
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
        train_path = check_path_characters(body.get("train_file_path"), "train_file_path", "INVALID_CHARACTER_IN_TRAIN_PATH")
        test_fields = [body.get(k) for k in ("test_feature_id", "test_bucket", "test_file_path")]
        has_test = any(v not in (None, "") for v in test_fields)
        if has_test and not all(v not in (None, "") for v in test_fields):
            raise DomainError("test_feature_id, test_bucket and test_file_path go together: give all three or none", name="INVALID_PARAMETER")
        test_path = check_path_characters(body.get("test_file_path"), "test_file_path", "INVALID_CHARACTER_IN_TEST_PATH") if has_test else None
        check_path_exists(d.store, body.get("train_bucket"), train_path, "train_file_path", "TRAIN_PATH_NOT_FOUND", d.internal_bucket)
        if has_test:
            check_path_exists(d.store, body.get("test_bucket"), test_path, "test_file_path", "TEST_PATH_NOT_FOUND", d.internal_bucket)
        answers.scan_personal_data(d.store, body["train_bucket"], train_path, "train_file_path")
        if has_test:
            answers.scan_personal_data(d.store, body["test_bucket"], test_path, "test_file_path")
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            train_feature = self.features.require_completed(s, account_id, body.get("train_feature_id"), "train_feature_id")
            test_feature = self.features.require_completed(s, account_id, body.get("test_feature_id"), "test_feature_id") if has_test else None
            if test_feature is not None and test_feature.model_name != train_feature.model_name:
                raise DomainError(f"the test Feature was made by model {test_feature.model_name}, the train Feature by {train_feature.model_name}: they must be the same model", name="MODEL_MISMATCH")
            task_id = self.new_id()
            job = self.submit(s, account_id, task_id, concurrency_key=f"{JOB_KIND}:{account_id}")
            task = Task(
                id=task_id, account_id=account_id, name=name, job_id=job.id,
                train_feature_id=train_feature.id, train_feature_name=train_feature.name, train_bucket=body["train_bucket"], train_file_path=train_path,
                test_feature_id=test_feature.id if test_feature else None, test_feature_name=test_feature.name if test_feature else None,
                test_bucket=body.get("test_bucket") if has_test else None, test_file_path=test_path,
                model_name=train_feature.model_name, created_at=job.created_at,
            )
            s.add(task)
            s.flush()
            s.refresh(task)
            return task

    # -- the job -------------------------------------------------------------------------------
    def _join(self, feature: Feature, labels: dict[str, int], ctx: JobContext) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and labels of the labelled users found in the Feature (first vector of a user)."""
        rows: list[np.ndarray] = []
        ys: list[int] = []
        seen: set[str] = set()
        for block in vectors.iter_blocks(self.deps.store, self.deps.internal_bucket, feature.vectors_prefix):
            ctx.check()
            ids = block.user_ids
            pick = [i for i, u in enumerate(ids) if u in labels and u not in seen]
            for i in pick:
                seen.add(ids[i])
                ys.append(labels[ids[i]])
            if pick:
                rows.append(block.matrix(pick))  # only the labelled users' vectors are decoded
        X = np.concatenate(rows) if rows else np.empty((0, feature.dim or 1), dtype=np.float32)
        return X, np.asarray(ys, dtype=np.int64)

    @staticmethod
    def _check_counts(y: np.ndarray, what: str, minimum: int = MIN_PER_LABEL) -> None:
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        if pos < minimum or neg < minimum:
            raise JobFailure("NUM_OF_LABEL_INSUFFICIENT", f"{what}: {neg} rows labelled 0 and {pos} labelled 1 after joining with the Feature; each label needs at least {minimum}")

    def run_job(self, ctx: JobContext) -> Outcome:
        from sklearn.model_selection import train_test_split

        d = self.deps
        account_id, task_id = ctx.payload["account_id"], ctx.payload["id"]
        with d.db.session() as s:
            task = s.get(Task, task_id)
            if task is None:
                raise JobFailure("COMMON_ERROR", "the Task was deleted")
            train_feature = s.get(Feature, task.train_feature_id)
            test_feature = s.get(Feature, task.test_feature_id) if task.test_feature_id else None
            used = account_storage_used(s, account_id)
        if train_feature is None or train_feature.vectors_prefix is None or (task.test_feature_id and (test_feature is None or test_feature.vectors_prefix is None)):
            raise JobFailure("COMMON_ERROR", "an input Feature is no longer available")

        ctx.progress(0.05, "reading answers")
        train_labels = answers.read_labels(d.store, task.train_bucket, task.train_file_path)
        test_labels = answers.read_labels(d.store, task.test_bucket, task.test_file_path) if task.test_file_path else None
        ctx.progress(0.15, "joining with the Feature")
        X, y = self._join(train_feature, train_labels, ctx)
        if test_labels is None:
            self._check_counts(y, "answers")
            split = f"automatic: stratified {int((1 - TEST_SHARE) * 100)}/{int(TEST_SHARE * 100)}, seed {SEED}"
            X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=TEST_SHARE, stratify=y, random_state=SEED)
        else:
            self._check_counts(y, "train answers")
            X_train, y_train = X, y
            X_test, y_test = self._join(test_feature, test_labels, ctx)
            self._check_counts(y_test, "test answers", minimum=1)
            split = "test file"
        X = y = None  # the split made copies: let the joined matrix go before training
        ctx.progress(0.35, f"training on {len(y_train)} users")
        clf, selection = classifier.train(X_train, y_train, d.task_candidates)
        ctx.check()
        ctx.progress(0.9, "evaluating")
        performance = classifier.evaluate(clf, X_test, y_test)
        performance.update(
            train_count=int(len(y_train)), test_count=int(len(y_test)),
            train_positive_count=int(y_train.sum()), test_positive_count=int(y_test.sum()),
            split=split, model=selection["chosen"], validation=selection["candidates"], selection=selection["selection"],
        )
        key = f"{self.output_root(account_id, task_id)}/{ctx.attempt_tag}/model.npz"
        data = clf.to_bytes()
        if used + len(data) > d.quota_bytes:
            raise JobFailure("DISK_SPACE_SHORTAGE", f"storage quota of {d.quota_bytes} bytes exceeded ({used} used)")
        try:
            d.store.write_bytes(d.internal_bucket, key, data)
            disk_usage = d.store.size(d.internal_bucket, key)
        except ObjectStoreError as exc:
            raise upload_failed("writing the model", exc) from exc

        def publish(s: Session) -> None:
            s.execute(update(Task).where(Task.id == task_id).values(performance=performance, artifact_key=key, disk_usage=disk_usage))

        return Outcome(result={"auc": performance["auc"], "disk_usage": disk_usage}, publish=publish)
