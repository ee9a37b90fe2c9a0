"""What Task Runs and Custom Attributes share: every user of a Feature gets a score, streamed into a
TSV in the customer's bucket (outputs.py), and `line_count` is published when the job completes."""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import DomainError
from userlens.jobs.engine import JobContext, JobFailure, Outcome
from userlens.storage.objectstore import InvalidObjectPath, ObjectStoreError, check_bucket
from userlens.understanding import outputs, vectors
from userlens.understanding.models import Feature
from userlens.understanding.resources import ResourceService
from userlens.understanding.validation import check_path_characters


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


def score_batches(deps, feature: Feature, score: Callable[[vectors.VectorBlock], np.ndarray], ctx: JobContext):
    """(user_ids, scores) per row group of the Feature, in order, reporting progress.

    Blocks are scored `ctx.cores()` at a time on their own threads (NumPy releases the GIL in the
    products), so a Run alone on the worker keeps every core busy; at most that many blocks, plus
    the one read ahead, are in memory."""
    threads = max(1, ctx.cores())
    done = 0
    with ThreadPoolExecutor(threads, thread_name_prefix="scorer") as pool:
        pending: deque[tuple[list[str], Future]] = deque()

        def finished():
            nonlocal done
            ids, future = pending.popleft()
            scores = future.result()
            done += len(ids)
            if feature.user_count:
                ctx.progress(min(0.99, done / feature.user_count), f"{done} users scored")
            return ids, scores

        for block in vectors.iter_blocks(deps.store, deps.internal_bucket, feature.vectors_prefix):
            ctx.check()
            pending.append((block.user_ids, pool.submit(score, block)))
            if len(pending) >= threads:
                yield finished()
        while pending:
            yield finished()


class ScoreFileService(ResourceService):
    """A resource whose job writes one score per Feature user to `result_bucket`/`result_file_path`."""

    def add(self, s: Session, row):
        s.add(row)
        s.flush()
        s.refresh(row)
        return row

    def scorer(self, row, feature: Feature) -> Callable[[vectors.VectorBlock], np.ndarray]:
        """The function from a block of user vectors to their scores (called on several threads)."""
        raise NotImplementedError

    def run_job(self, ctx: JobContext) -> Outcome:
        d = self.deps
        row_id = ctx.payload["id"]
        with d.db.session() as s:
            row = s.get(self.model, row_id)
            if row is None:
                raise JobFailure("COMMON_ERROR", f"the {self.label} was deleted")
            feature = s.get(Feature, row.feature_id)
        if feature is None or feature.vectors_prefix is None:
            raise JobFailure("COMMON_ERROR", "the Feature is no longer available")
        score = self.scorer(row, feature)
        lines = outputs.write_scores_tsv(d.store, row.result_bucket, row.result_file_path, score_batches(d, feature, score, ctx))

        def publish(s: Session) -> None:
            s.execute(update(self.model).where(self.model.id == row_id).values(line_count=lines))

        return Outcome(result={"line_count": lines}, publish=publish)
