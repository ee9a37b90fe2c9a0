"""NCLUE Features: create (validate, register a job), list, get, delete, and the job that makes them.

The job streams the sequence dataset in chunks of `feature_chunk_rows` users: parse and validate,
tokenise and encode, write one Parquet part per chunk under an attempt-unique folder of the internal
bucket. Only the transaction that completes the job sets `vectors_prefix`, so the vectors become
visible all at once; a failed or lost attempt's folder is removed (or later found by fsck).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import InvalidParameter
from userlens.jobs.engine import JobContext, JobFailure, Outcome, TransientJobError
from userlens.storage.objectstore import ObjectStoreError
from userlens.understanding import sequences, vectors
from userlens.understanding.model_registry import available_models, get_model
from userlens.understanding.models import Feature
from userlens.understanding.outputs import upload_failed
from userlens.understanding.resources import ResourceService, account_storage_used
from userlens.understanding.validation import check_name, check_path_characters, check_path_exists

JOB_KIND = "nclue.feature"


class FeatureService(ResourceService):
    model = Feature
    kind = JOB_KIND
    storage_folder = "features"
    label = "Feature"

    # -- create --------------------------------------------------------------------------------
    def create(self, account_id: str, body: dict) -> Feature:
        d = self.deps
        name = check_name(body.get("name"))
        source_bucket, source_file_path = body.get("source_bucket"), body.get("source_file_path")
        model_name = body.get("nclue_model") or d.model_name
        if model_name not in available_models():
            raise InvalidParameter(f"nclue_model must be one of {', '.join(available_models())} (got {model_name!r})")
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
        path = check_path_characters(source_file_path, "source_file_path", "INVALID_PATH_CHARACTER")
        check_path_exists(d.store, source_bucket, path, "source_file_path", "PATH_NOT_FOUND", d.internal_bucket)
        with d.db.session() as s:
            self.check_unique(s, account_id, name)
            feature_id = self.new_id()
            job = self.submit(s, account_id, feature_id)
            feature = Feature(id=feature_id, account_id=account_id, name=name, job_id=job.id, source_bucket=source_bucket, source_file_path=path, model_name=model_name, created_at=job.created_at)
            s.add(feature)
            s.flush()
            s.refresh(feature)
            return feature

    # -- the job -------------------------------------------------------------------------------
    def run_job(self, ctx: JobContext) -> Outcome:
        d = self.deps
        account_id, feature_id = ctx.payload["account_id"], ctx.payload["id"]
        with d.db.session() as s:
            feature = s.get(Feature, feature_id)
            if feature is None:
                raise JobFailure("COMMON_ERROR", "the Feature was deleted")
            bucket, path, model_name = feature.source_bucket, feature.source_file_path, feature.model_name
            used = account_storage_used(s, account_id)
        encoder = get_model(model_name)
        root = self.output_root(account_id, feature_id)
        prefix = f"{root}/{ctx.attempt_tag}"
        self._remove_stale_attempts(root, keep=ctx.attempt_tag)

        keys = sequences.list_input_files(d.store, bucket, path)
        if not keys:
            raise JobFailure("NOT_EXIST_FILE", f"no file at {bucket}/{path}")
        try:
            total_bytes = sum(d.store.size(bucket, k) for k in keys) or 1
        except FileNotFoundError as exc:
            raise JobFailure("NOT_EXIST_FILE", str(exc)) from exc
        except ObjectStoreError as exc:
            raise TransientJobError("OBS_DOWNLOAD_FAILED", str(exc)) from exc

        dup = sequences.DuplicateDetector()
        users = tokens = written = 0
        # Part i is written on a second thread while chunk i+1 is parsed and encoded (pyarrow and
        # NumPy release the GIL), with at most one write in flight so memory stays bounded.
        pending: Future | None = None

        def settle(future: Future) -> None:
            nonlocal written
            try:
                written += future.result()
            except ObjectStoreError as exc:
                raise upload_failed("writing vectors", exc) from exc
            if used + written > d.quota_bytes:
                raise JobFailure("DISK_SPACE_SHORTAGE", f"storage quota of {d.quota_bytes} bytes exceeded ({used} used, this Feature needs more than {written})")

        with ThreadPoolExecutor(1, thread_name_prefix="feature-writer") as writer:
            for i, chunk in enumerate(sequences.iter_chunks(d.store, bucket, keys, d.chunk_rows)):
                ctx.check()
                if len(set(chunk.user_ids)) != len(chunk.user_ids):
                    seen: set[str] = set()
                    first = next(u for u in chunk.user_ids if u in seen or seen.add(u))
                    raise JobFailure("DUPLICATE_USERID", f"user_id {first!r} appears more than once")
                dup.add(chunk.user_ids)
                vecs, counts = encoder.encode(chunk.sequences)
                if pending is not None:
                    settle(pending)
                pending = writer.submit(vectors.write_part, d.store, d.internal_bucket, f"{prefix}/part-{i:05d}.parquet", chunk.user_ids, vecs)
                users += len(chunk.user_ids)
                tokens += int(counts.sum())
                ctx.progress(min(0.99, chunk.consumed_bytes / total_bytes), f"{users} users, {tokens} tokens")
                if d.fault_slow_chunk_ms:
                    time.sleep(d.fault_slow_chunk_ms / 1000)
            if pending is not None:
                settle(pending)
        if users == 0:
            raise JobFailure("NOT_EXIST_FILE", f"{bucket}/{path} holds no user")
        self._check_duplicates(dup, prefix)
        disk_usage = d.store.usage(d.internal_bucket, prefix)

        def publish(s: Session) -> None:
            s.execute(
                update(Feature)
                .where(Feature.id == feature_id)
                .values(user_count=users, token_count=tokens, disk_usage=disk_usage, dim=encoder.dim, vectors_prefix=prefix)
            )

        return Outcome(result={"user_count": users, "token_count": tokens, "disk_usage": disk_usage}, publish=publish)

    def _check_duplicates(self, dup: sequences.DuplicateDetector, prefix: str) -> None:
        candidates = dup.candidate_hashes()
        if candidates.size == 0:
            return
        # Exact check of the few ids whose 64-bit hashes collide.
        wanted = set(int(h) for h in candidates)
        seen: set[str] = set()
        for block in vectors.iter_blocks(self.deps.store, self.deps.internal_bucket, prefix, with_vectors=False):
            for u in block.user_ids:
                if sequences.DuplicateDetector.hash_of(u) in wanted:
                    if u in seen:
                        raise JobFailure("DUPLICATE_USERID", f"user_id {u!r} appears more than once")
                    seen.add(u)

    def _remove_stale_attempts(self, root: str, keep: str) -> None:
        d = self.deps
        try:
            for obj in d.store.list(d.internal_bucket, root):
                attempt = obj.key[len(root) + 1 :].split("/", 1)[0]
                if attempt != keep:
                    d.store.delete_prefix(d.internal_bucket, f"{root}/{attempt}")
        except ObjectStoreError as exc:
            raise TransientJobError("OBS_UPLOAD_FAILED", str(exc)) from exc
