"""NCLUE Features: create (validate, register a job), list, get, delete, and the job that makes them.

The job splits the sequence dataset into byte ranges of about `feature_chunk_rows` users (at most
`feature_chunk_bytes`) that the executor runs (jobs/executor.py: threads, or Ray tasks): each parses
and validates its lines, tokenises and encodes them, and writes Parquet parts under an attempt-unique
folder of the internal bucket; repeated user ids are found across chunks from the hashes they return. Only the transaction that completes the job sets `vectors_prefix`, so the vectors become
visible all at once; a failed or lost attempt's folder is removed (or later found by fsck).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sqlalchemy import update
from sqlalchemy.orm import Session

from userlens.errors import InvalidParameter
from userlens.jobs.engine import JobContext, JobFailure, Outcome, TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError
from userlens.understanding import sequences, vectors
from userlens.understanding.model_registry import available_models, get_model
from userlens.understanding.models import Feature
from userlens.understanding.outputs import upload_failed
from userlens.understanding.resources import ResourceService, account_storage_used
from userlens.understanding.validation import check_name, check_path_characters, check_path_exists

JOB_KIND = "nclue.feature"


@dataclass(frozen=True)
class EncodeJob:
    """What every chunk of one Feature job shares (picklable: sent once to Ray)."""

    model_name: str
    bucket: str
    out_bucket: str
    prefix: str  # the attempt's folder of vector parts
    chunk_rows: int
    fault_slow_chunk_ms: int = 0


def part_name(chunk: int, n: int) -> str:
    """`part-{chunk}.parquet`, then `part-{chunk}_{n}.parquet` for a chunk's further parts: keys
    sort in input order, and the first five digits are the chunk's number (fsck counts them)."""
    return f"part-{chunk:05d}.parquet" if n == 0 else f"part-{chunk:05d}_{n:04d}.parquet"


def encode_range(store: ObjectStore, job: EncodeJob, item: tuple[int, sequences.ByteRange]) -> dict:
    """One chunk: parse and validate a byte range of the input, encode it, write its vector parts
    (`part_name`). Returns counts, bytes written and the
    users' 64-bit hashes for the duplicate check across chunks."""
    index, rng = item
    encoder = get_model(job.model_name)
    # A range holds about chunk_rows users (an estimate): one part, unless it holds many more.
    max_part = max(1, job.chunk_rows * 3 // 2)
    ids: list[str] = []
    seqs: list[str] = []
    hashes: list[np.ndarray] = []
    out = {"users": 0, "tokens": 0, "bytes": 0}
    parts = 0

    def flush() -> None:
        nonlocal ids, seqs, parts
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            first = next(u for u in ids if u in seen or seen.add(u))
            raise JobFailure("DUPLICATE_USERID", f"user_id {first!r} appears more than once")
        hashes.append(sequences.DuplicateDetector.hashes(ids))
        vecs, counts = encoder.encode(seqs)
        try:
            out["bytes"] += vectors.write_part(store, job.out_bucket, f"{job.prefix}/{part_name(index, parts)}", ids, vecs)
        except ObjectStoreError as exc:
            raise upload_failed("writing vectors", exc) from exc
        out["users"] += len(ids)
        out["tokens"] += int(counts.sum())
        ids, seqs, parts = [], [], parts + 1
        if job.fault_slow_chunk_ms:
            time.sleep(job.fault_slow_chunk_ms / 1000)

    try:
        for lineno, raw in sequences.iter_lines(store, job.bucket, rng.key, rng.start, rng.end):
            parsed = sequences.parse_line(rng.key, lineno, raw)
            if parsed is None:
                continue
            ids.append(parsed[0])
            seqs.append(parsed[1])
            if len(ids) >= max_part:
                flush()
        if ids or parts == 0:  # an empty range writes an empty part: part numbers have no gap
            flush()
    except TransientJobError:
        raise
    except JobFailure as exc:
        raise sequences.absolute_line(store, job.bucket, rng.key, rng.start, exc) from exc
    out["hashes"] = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
    return out


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
        # Chunks of about `chunk_rows` users each (one vector part), run by the executor: threads
        # here, or Ray tasks that read the input and write their parts to the store themselves.
        ranges = sequences.plan_ranges(d.store, bucket, keys, d.chunk_rows, d.chunk_bytes)
        total_bytes = sum(r.end - r.start for r in ranges) or 1
        shared = EncodeJob(model_name, bucket, d.internal_bucket, prefix, d.chunk_rows, d.fault_slow_chunk_ms)
        dup = sequences.DuplicateDetector()
        users = tokens = written = done_bytes = 0

        def on_result(i: int, r: dict) -> None:
            nonlocal users, tokens, written, done_bytes
            dup.add_hashes(r["hashes"])
            users, tokens, written = users + r["users"], tokens + r["tokens"], written + r["bytes"]
            done_bytes += ranges[i].end - ranges[i].start
            if used + written > d.quota_bytes:
                raise JobFailure("DISK_SPACE_SHORTAGE", f"storage quota of {d.quota_bytes} bytes exceeded ({used} used, this Feature needs more than {written})")
            ctx.progress(min(0.99, done_bytes / total_bytes), f"{users} users, {tokens} tokens")

        # One chunk at a time on the local executor: tokenising holds the GIL, and two chunks on two
        # threads ran slower than one (measured: 20-26 s against 18-21 s for 60k users on a busy
        # machine). Ray runs chunks in processes, one per CPU.
        d.executor.map(ctx, encode_range, [(i, r) for i, r in enumerate(ranges)], shared=shared, on_result=on_result, local_threads=1)
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
