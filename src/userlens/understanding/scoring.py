"""What Task Runs and Custom Attributes share: every user of a Feature gets a score, written into a
TSV in the customer's bucket (outputs.py), and `line_count` is published when the job completes.
The scoring runs on the executor (jobs/executor.py: threads, or Ray tasks), one vector part a chunk."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import DomainError
from userlens.jobs.engine import JobContext, JobFailure, Outcome, TransientJobError
from userlens.storage.objectstore import InvalidObjectPath, ObjectStore, ObjectStoreError, check_bucket
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


@dataclass(frozen=True)
class ScoreJob:
    """What every chunk of one scoring job shares (picklable: sent once to Ray)."""

    scorer: Callable[[vectors.VectorBlock], np.ndarray]  # module-level or a picklable object
    vectors_bucket: str
    pieces_prefix: str  # the attempt's folder of TSV pieces (internal bucket)


def score_part(store: ObjectStore, job: ScoreJob, item: tuple[int, str]) -> dict:
    """One chunk: scores the users of one vector part and writes their TSV lines as piece `index`."""
    index, part_key = item
    pieces: list[bytes] = []
    lines = 0
    try:
        for block in vectors.read_part(store, job.vectors_bucket, part_key):
            pieces.append(outputs.format_lines(block.user_ids, job.scorer(block)))
            lines += len(block.user_ids)
    except (ObjectStoreError, OSError) as exc:
        raise TransientJobError("OBS_DOWNLOAD_FAILED", f"reading vectors {part_key}: {exc}") from exc
    key = f"{job.pieces_prefix}/piece-{index:05d}.tsv"
    data = b"".join(pieces)
    try:
        store.write_bytes(job.vectors_bucket, key, data)
    except ObjectStoreError as exc:
        raise outputs.upload_failed(f"writing {key}", exc) from exc
    return {"lines": lines, "key": key, "bytes": len(data)}


class ScoreFileService(ResourceService):
    """A resource whose job writes one score per Feature user to `result_bucket`/`result_file_path`.

    The Feature's vector parts are the executor's chunks: each is scored and formatted into a TSV
    piece in the internal bucket (under the attempt's folder), then the pieces are written, in
    order, after the header as the one result file, and removed."""

    def add(self, s: Session, row):
        s.add(row)
        s.flush()
        s.refresh(row)
        return row

    def scorer(self, row, feature: Feature) -> Callable[[vectors.VectorBlock], np.ndarray]:
        """The function from a block of user vectors to their scores (picklable: Ray runs it)."""
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
        outputs.require_bucket(d.store, row.result_bucket)
        try:
            parts = vectors.part_keys(d.store, d.internal_bucket, feature.vectors_prefix)
        except ObjectStoreError as exc:
            raise TransientJobError("OBS_DOWNLOAD_FAILED", f"listing vectors: {exc}") from exc
        job = ScoreJob(self.scorer(row, feature), d.internal_bucket, f"{self.output_root(row.account_id, row_id)}/{ctx.attempt_tag}")
        done = 0

        def on_result(i: int, r: dict) -> None:
            nonlocal done
            done += r["lines"]
            if feature.user_count:
                ctx.progress(min(0.95, done / feature.user_count), f"{done} users scored")

        pieces = d.executor.map(ctx, score_part, list(enumerate(parts)), shared=job, on_result=on_result)
        ctx.check()
        outputs.write_tsv(d.store, row.result_bucket, row.result_file_path, self._read_pieces(pieces))
        lines = sum(p["lines"] for p in pieces)
        try:
            d.store.delete_prefix(d.internal_bucket, job.pieces_prefix)
        except ObjectStoreError:
            pass  # the attempt's folder goes with the resource; fsck reports it meanwhile

        def publish(s: Session) -> None:
            s.execute(update(self.model).where(self.model.id == row_id).values(line_count=lines))

        return Outcome(result={"line_count": lines}, publish=publish)

    def _read_pieces(self, pieces: list[dict]):
        for p in pieces:
            try:
                yield self.deps.store.read_bytes(self.deps.internal_bucket, p["key"])
            except ObjectStoreError as exc:
                raise TransientJobError("OBS_DOWNLOAD_FAILED", f"reading {p['key']}: {exc}") from exc
