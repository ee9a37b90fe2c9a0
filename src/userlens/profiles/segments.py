"""Segment definitions (§8.1), segment jobs (§8.3) and segment membership (§8.4).

A definition holds a PQL expression (the subset of ``pql.py``; anything else is a 400 at creation that
names the unsupported part) and an optional merge policy. A segment job ("aep.segment_evaluate")
evaluates its definitions over every profile of the sandbox (``scan.ProfileScan``, grouped by merge
policy: one scan per policy) and records the new membership of each profile, which the job publishes
in the transaction that completes it (one table, ``aep_segment_members``: sandbox, segment, profile
XID, status, lastQualificationTime, version):

* ``realized``: qualifies now and did not before (absent or ``exited``): lastQualificationTime = now;
* ``existing``: qualified before (``realized``/``existing``) and still does: lastQualificationTime = now
  (the last evaluation that qualified it);
* ``exited``: qualified before and does not any more (time of the exit; an ``exited`` profile that
  still does not qualify keeps its exit time). A member whose profile is gone (deleted, or its graph
  merged into another XID) exits too.

A profile shows its memberships as ``segmentMembership`` ({"ups": {segmentId: {status,
lastQualificationTime, version}}}) in look-ups and exports. The job keeps the new state of each
segment column-wise (Arrow arrays of XIDs) until it publishes: memory grows with the number of members,
not with the profiles' data.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
import uuid
from collections import deque
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import JSON, BigInteger, Index, Integer, String, Text, UniqueConstraint, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from userlens.errors import DomainError, InvalidParameter, NotFound
from userlens.jobs.engine import JobContext, JobFailure, JobQueue, JobRegistry, Outcome
from userlens.jobs.executor import LocalExecutor
from userlens.jobs.models import Job, JobStatus
from userlens.orgs.service import Tenant
from userlens.profiles.catalog import now_ms
from userlens.profiles.merge import MergePolicyService, check_named_profile_body
from userlens.profiles.pql import Compiled, PqlError, compile_expression
from userlens.profiles.scan import ProfileScan, ScanPage, attributes_dicts
from userlens.profiles.store import ProfileStore, bulk_insert
from userlens.profiles.xdm import PROFILE_SCHEMA_NAME
from userlens.storage.db import Base, Database
from userlens.storage.objectstore import ObjectStore

log = logging.getLogger("userlens.aep.segments")

JOB_KIND = "aep.segment_evaluate"
ACTIVE_STATUSES = ("realized", "existing")
CHUNK_PROFILES = 20_000  # profiles per executor chunk of a segment job
MAX_ACTIVE_JOBS = 5  # per sandbox: more are refused with 429, as AEP does ("too many segmentation jobs")


class SegmentDefinition(Base):
    __tablename__ = "aep_segment_definitions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(512))
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    schema_name: Mapped[str] = mapped_column(String(64))
    expression: Mapped[dict[str, Any]] = mapped_column(JSON)
    merge_policy_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    evaluation_info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (UniqueConstraint("sandbox_id", "name", name="uq_aep_segdef_name"), Index("ix_aep_segdef_scope", "sandbox_id", "created_ms"))


class SegmentJob(Base):
    __tablename__ = "aep_segment_jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    org_id: Mapped[str] = mapped_column(String(64))
    sandbox_id: Mapped[str] = mapped_column(String(36))
    job_id: Mapped[str] = mapped_column(String(36))
    segments: Mapped[list[Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    errors: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    request_id: Mapped[str] = mapped_column(String(40))
    created_ms: Mapped[int] = mapped_column(BigInteger)
    updated_ms: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_aep_segjob_scope", "sandbox_id", "created_ms"),)


class SegmentMember(Base):
    __tablename__ = "aep_segment_members"

    sandbox_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    segment_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    xid: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    qual_ms: Mapped[int] = mapped_column(BigInteger)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_aep_segmembers_xid", "sandbox_id", "xid"),)


class TooManyJobs(DomainError):
    name = "TOO_MANY_REQUESTS"


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def membership_map(store: ProfileStore, sandbox_id: str, xid: str) -> dict:
    """A profile's `segmentMembership` ({"ups": {segmentId: {...}}}); {} when it has none."""
    from userlens.profiles.store import read_session

    with read_session(store.db) as s:
        rows = store._rows(s, "SELECT segment_id, status, qual_ms, version FROM aep_segment_members WHERE sandbox_id = ? AND xid = ?", (sandbox_id, xid))
    if not rows:
        return {}
    return {"ups": {r[0]: {"status": r[1], "lastQualificationTime": iso(int(r[2])), "version": int(r[3])} for r in sorted(rows)}}


def match_profiles(store: ObjectStore, shared: dict, item: dict) -> dict[str, np.ndarray]:
    """An executor chunk of a segment job (a local thread or a Ray task): which profiles of a slice
    qualify for each segment. `item` holds what the predicates read, the slice of the scan's page (merged
    attributes as JSON text) and, when a segment reads events, their events: no database access."""
    if shared.get("slow_ms"):  # fault injection (tests): a chunk that takes a while
        time.sleep(shared["slow_ms"] / 1000)
    compiled = [(sid, compile_expression(expr)) for sid, expr in shared["segments"]]
    docs = attributes_dicts(item["page"])
    evs = item["events"]
    now = shared["now"]
    return {sid: np.fromiter((c.matches(d, evs[i] if evs is not None else None, now) for i, d in enumerate(docs)), bool, len(docs)) for sid, c in compiled}


class _NoJob:
    """evaluate() outside a job: nothing to cancel, this process's threads."""

    services = None

    def check(self) -> None:
        pass

    def cores(self) -> int:
        return 1


class SegmentService:
    def __init__(self, db: Database, queue: JobQueue, store: ProfileStore, policies: MergePolicyService, chunk_profiles: int = CHUNK_PROFILES):
        self.db, self.queue, self.store, self.policies = db, queue, store, policies
        self.chunk_profiles = chunk_profiles
        self.local = LocalExecutor(store.lake.objects)

    # -- definitions ---------------------------------------------------------------------------
    def create_definition(self, t: Tenant, body: Any) -> SegmentDefinition:
        name = check_named_profile_body(body)
        expr = body.get("expression")
        try:
            compile_expression(expr)
        except PqlError as exc:
            raise InvalidParameter(str(exc)) from None
        mp_id = body.get("mergePolicyId")
        if mp_id is not None:
            if not isinstance(mp_id, str):
                raise InvalidParameter("mergePolicyId must be a string")
            self.policies.get(t.sandbox_id, mp_id)  # 404 -> 400 below
        ev = body.get("evaluationInfo") if isinstance(body.get("evaluationInfo"), dict) else {"batch": {"enabled": True}, "continuous": {"enabled": False}, "synchronous": {"enabled": False}}
        extra = {k: v for k, v in body.items() if k in ("ttlInDays", "payloadSchema", "profileInstanceId", "labels")}
        ms = now_ms()
        d = SegmentDefinition(
            id=str(uuid.uuid4()), org_id=t.org_id, sandbox_id=t.sandbox_id, name=name.strip(), description=body.get("description"), schema_name=PROFILE_SCHEMA_NAME,
            expression={"type": "PQL", "format": "pql/text", "value": expr["value"]}, merge_policy_id=mp_id, evaluation_info=ev, extra=extra, version=1, created_ms=ms, updated_ms=ms,
        )
        try:
            with self.db.session() as s:
                if s.execute(select(SegmentDefinition.id).where(SegmentDefinition.sandbox_id == t.sandbox_id, SegmentDefinition.name == d.name)).first():
                    raise DomainError(f"A segment definition named '{d.name}' already exists", name="ALREADY_EXISTS")
                s.add(d)
        except IntegrityError:
            raise DomainError(f"A segment definition named '{d.name}' already exists", name="ALREADY_EXISTS") from None
        return d

    def get_definition(self, sandbox_id: str, seg_id: str) -> SegmentDefinition:
        with self.db.read_session() as s:
            d = s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == sandbox_id, SegmentDefinition.id == seg_id)).scalar_one_or_none()
            if d is None:
                raise NotFound(f"Segment definition '{seg_id}' not found")
            return d

    def list_definitions(self, sandbox_id: str, start: int, limit: int, sort: tuple[str, bool]) -> tuple[int, list[SegmentDefinition]]:
        cols = {"name": SegmentDefinition.name, "creationTime": SegmentDefinition.created_ms, "updateTime": SegmentDefinition.updated_ms, "updateEpoch": SegmentDefinition.updated_ms}
        col = cols[sort[0]]
        with self.db.read_session() as s:
            q = select(SegmentDefinition).where(SegmentDefinition.sandbox_id == sandbox_id)
            total = s.execute(select(func.count()).select_from(q.subquery())).scalar_one()
            rows = list(s.execute(q.order_by(col.desc() if sort[1] else col, SegmentDefinition.id).offset(start).limit(limit)).scalars())
            return total, rows

    def delete_definition(self, sandbox_id: str, seg_id: str) -> None:
        with self.db.session() as s:
            d = s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == sandbox_id, SegmentDefinition.id == seg_id)).scalar_one_or_none()
            if d is None:
                raise NotFound(f"Segment definition '{seg_id}' not found")
            s.execute(delete(SegmentMember).where(SegmentMember.sandbox_id == sandbox_id, SegmentMember.segment_id == seg_id))
            s.delete(d)

    # -- jobs ----------------------------------------------------------------------------------
    def create_job(self, t: Tenant, body: Any) -> SegmentJob:
        items = body.get("segments") if isinstance(body, dict) else body
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) and isinstance(i.get("segmentId"), str) for i in items):
            raise InvalidParameter('the body must be an array of {"segmentId": "..."} (or {"segments": [{"segmentId": "*"}]} for every segment)')
        with self.db.session() as s:
            if any(i["segmentId"] == "*" for i in items):
                defs = list(s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == t.sandbox_id).order_by(SegmentDefinition.created_ms)).scalars())
                if not defs:
                    raise InvalidParameter("the sandbox has no segment definitions")
            else:
                ids = list(dict.fromkeys(i["segmentId"] for i in items))
                found = {d.id: d for d in s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == t.sandbox_id, SegmentDefinition.id.in_(ids))).scalars()}
                missing = [i for i in ids if i not in found]
                if missing:
                    raise InvalidParameter(f"unknown segment definition(s): {', '.join(missing)}")
                defs = [found[i] for i in ids]
            active = s.execute(select(func.count()).select_from(SegmentJob).where(SegmentJob.sandbox_id == t.sandbox_id, SegmentJob.status.in_(["NEW", "QUEUED", "PROCESSING", "CANCELLING"]))).scalar_one()
            if active >= MAX_ACTIVE_JOBS:
                raise TooManyJobs("too many segmentation jobs in processing; try again later")
            segs = [self._snapshot(d) for d in defs]
            return self._submit(s, t, segs)

    def _snapshot(self, d: SegmentDefinition) -> dict:
        policy = self.policies.resolve(d.sandbox_id, d.merge_policy_id)
        return {"segmentId": d.id, "segment": {"id": d.id, "version": d.version, "expression": d.expression, "mergePolicyId": policy.id, "mergePolicy": {"id": policy.id, "version": 1}}}

    def _submit(self, s: Session, t: Tenant, segs: list[dict]) -> SegmentJob:
        ms = now_ms()
        jid = str(uuid.uuid4())
        job = self.queue.submit(s, JOB_KIND, f"aep:{t.sandbox_id}", {"segment_job_id": jid, "sandbox_id": t.sandbox_id})
        row = SegmentJob(id=jid, org_id=t.org_id, sandbox_id=t.sandbox_id, job_id=job.id, segments=segs, status="NEW", metrics={"totalTime": {"startTimeInMs": ms}}, errors=None, request_id=uuid.uuid4().hex, created_ms=ms, updated_ms=ms)
        s.add(row)
        s.flush()
        return row

    def get_job(self, sandbox_id: str, job_id: str) -> SegmentJob:
        with self.db.session() as s:
            j = s.execute(select(SegmentJob).where(SegmentJob.sandbox_id == sandbox_id, SegmentJob.id == job_id)).scalar_one_or_none()
            if j is None:
                raise NotFound(f"Segment job '{job_id}' not found")
            return j

    def list_jobs(self, sandbox_id: str, start: int, limit: int, status: str | None, desc: bool) -> tuple[int, list[SegmentJob]]:
        with self.db.session() as s:
            q = select(SegmentJob).where(SegmentJob.sandbox_id == sandbox_id)
            if status:
                q = q.where(SegmentJob.status == status)
            total = s.execute(select(func.count()).select_from(q.subquery())).scalar_one()
            order = (SegmentJob.created_ms.desc(), SegmentJob.id.desc()) if desc else (SegmentJob.created_ms, SegmentJob.id)
            return total, list(s.execute(q.order_by(*order).offset(start).limit(limit)).scalars())

    def cancel_job(self, sandbox_id: str, job_id: str) -> None:
        j = self.get_job(sandbox_id, job_id)
        if j.status in ("SUCCEEDED", "FAILED", "CANCELLED"):
            return
        after = self.queue.request_cancel(j.job_id)
        with self.db.session() as s:
            row = s.get(SegmentJob, j.id)
            if after == JobStatus.CANCELLED.value:
                self._mark_cancelled(row)
            elif row.status not in ("SUCCEEDED", "FAILED", "CANCELLED"):
                row.status, row.updated_ms = "CANCELLING", now_ms()

    @staticmethod
    def _mark_cancelled(row: SegmentJob) -> None:
        ms = now_ms()
        row.status, row.updated_ms = "CANCELLED", ms
        m = dict(row.metrics or {})
        tt = dict(m.get("totalTime") or {})
        tt.update(endTimeInMs=ms, totalTimeInMs=ms - tt.get("startTimeInMs", ms))
        m["totalTime"] = tt
        row.metrics = m

    def register_jobs(self, registry: JobRegistry) -> None:
        registry.register(JOB_KIND, self.run_job, on_fail=self._on_fail)

    def _on_fail(self, s: Session, job: Job) -> None:
        row = s.get(SegmentJob, (job.payload or {}).get("segment_job_id"))
        if row is None:
            return
        if job.status == JobStatus.CANCELLED.value:
            self._mark_cancelled(row)
            return
        ms = now_ms()
        row.status, row.updated_ms = "FAILED", ms
        row.errors = [{"code": job.fail_message or "COMMON_ERROR", "msg": job.fail_detail or "", "callStack": "userlens.profiles.segments"}]

    def run_job(self, ctx: JobContext) -> Outcome:
        jid = ctx.payload["segment_job_id"]
        with self.db.session() as s:
            row = s.get(SegmentJob, jid)
            if row is None:
                raise JobFailure("SEGMENT-404", f"segment job {jid} is gone")
            row.status, row.updated_ms = "PROCESSING", now_ms()
            sandbox_id, segs, metrics = row.sandbox_id, list(row.segments), dict(row.metrics or {})
        t0 = now_ms()
        result = self.evaluate(ctx, sandbox_id, segs)
        t1 = now_ms()

        def publish(s: Session) -> None:
            self.publish_members(s, sandbox_id, result)
            r = s.get(SegmentJob, jid)
            ms = now_ms()
            tt = dict(metrics.get("totalTime") or {"startTimeInMs": r.created_ms})
            tt.update(endTimeInMs=ms, totalTimeInMs=ms - tt["startTimeInMs"])
            r.metrics = {
                "totalTime": tt,
                "profileSegmentationTime": {"startTimeInMs": t0, "endTimeInMs": t1, "totalTimeInMs": t1 - t0},
                "totalProfiles": result["total_profiles"],
                "segmentedProfileCounter": {k: v["qualified"] for k, v in result["segments"].items()},
                "segmentedProfileByNamespaceCounter": {k: v["by_ns"] for k, v in result["segments"].items()},
                "segmentedProfileByStatusCounter": {k: v["by_status"] for k, v in result["segments"].items()},
                "totalProfilesByMergePolicy": result["by_policy"],
            }
            r.status, r.updated_ms = "SUCCEEDED", ms

        return Outcome(result={"profiles": result["total_profiles"]}, publish=publish)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, ctx: JobContext | None, sandbox_id: str, segs: list[dict]) -> dict:
        """Evaluates segment snapshots over every profile; returns the new membership state of each
        segment (Arrow arrays) and the counters. One scan per merge policy; the predicates run on the
        executor (``match_profiles``, slices of ``chunk_profiles`` profiles), the rest here."""
        now = now_ms()
        ctx = ctx if ctx is not None else _NoJob()
        executor = getattr(ctx.services, "executor", None) or self.local
        slow_ms = int(getattr(getattr(ctx.services, "settings", None), "fault_slow_chunk_ms", 0) or 0)
        compiled: dict[str, Compiled] = {}
        exprs = {sg["segmentId"]: sg["segment"]["expression"] for sg in segs}
        for sg in segs:
            try:
                compiled[sg["segmentId"]] = compile_expression(sg["segment"]["expression"])
            except PqlError as exc:
                raise JobFailure("SEGMENT-400", f"segment {sg['segmentId']}: {exc}") from None
        by_policy: dict[str | None, list[str]] = {}
        for sg in segs:
            by_policy.setdefault(sg["segment"].get("mergePolicyId"), []).append(sg["segmentId"])
        state: dict[str, dict] = {}
        counters: dict[str, dict] = {}
        totals: dict[str, int] = {}
        total_profiles = 0
        for mp_id, seg_ids in by_policy.items():
            try:
                policy = self.policies.resolve(sandbox_id, mp_id)
            except NotFound:
                raise JobFailure("SEGMENT-400", f"merge policy {mp_id} no longer exists") from None
            events = any(compiled[s].uses_events for s in seg_ids)
            scan = ProfileScan(self.store, sandbox_id, policy, events=events, memberships=True)
            parts = {sid: {"xid": [], "status": [], "ms": [], "version": []} for sid in seg_ids}
            seen: list[pa.Array] = []
            cnt = {sid: {"qualified": 0, "by_ns": {}, "by_status": {"realized": 0, "existing": 0, "exited": 0}} for sid in seg_ids}
            n_policy = 0
            slices: deque[ScanPage] = deque()  # the slices handed to the executor, not yet decided

            def chunks(pages: Iterator[ScanPage]) -> Iterator[dict]:
                # In the job thread (the scan reads SQL and the lake): profiles in slices for the executor.
                for page in pages:
                    evs = scan.read_events(page) if events else None
                    for a in range(0, len(page), self.chunk_profiles):
                        b = min(len(page), a + self.chunk_profiles)
                        piece = page if (a, b) == (0, len(page)) else page.take(np.arange(a, b))
                        slices.append(piece)
                        yield {"page": dataclasses.replace(piece, groups=None, memberships=None), "events": evs[a:b] if evs is not None else None}

            def on_result(_: int, matched: dict[str, np.ndarray]) -> None:
                # In the job thread, in scan order: each profile's new status from its old one.
                nonlocal n_policy
                piece = slices.popleft()
                keys = piece.keys.to_pylist()
                members = piece.members.to_pylist()
                n_policy += len(keys)
                seen.append(piece.keys)
                for sid in seg_ids:
                    p = parts[sid]
                    k = cnt[sid]
                    for i, (xid, q) in enumerate(zip(keys, matched.pop(sid).tolist())):
                        prev = piece.memberships[i].get(sid)
                        if q:
                            st = "existing" if prev is not None and prev[0] in ACTIVE_STATUSES else "realized"
                            p["xid"].append(xid), p["status"].append(st), p["ms"].append(now), p["version"].append(1)
                            k["qualified"] += 1
                            k["by_status"][st] += 1
                            for ns in {m.split(":", 1)[0] for m in members[i]}:
                                k["by_ns"][ns] = k["by_ns"].get(ns, 0) + 1
                        elif prev is not None:
                            exit_ms = now if prev[0] in ACTIVE_STATUSES else prev[1]
                            p["xid"].append(xid), p["status"].append("exited"), p["ms"].append(exit_ms), p["version"].append(prev[2])
                            k["by_status"]["exited"] += 1

            shared = {"segments": [(sid, exprs[sid]) for sid in seg_ids], "now": now, "slow_ms": slow_ms}
            pages = scan.pages()
            try:
                executor.map(ctx, match_profiles, chunks(pages), shared=shared, on_result=on_result, local_threads=1)  # PQL is Python: the GIL
            finally:
                pages.close()  # stops the scan's reader thread, also on a cancel
            total_profiles += n_policy
            totals[mp_id or "none"] = n_policy
            seen_all = pa.chunked_array(seen, pa.string()) if seen else pa.chunked_array([], pa.string())
            for sid in seg_ids:
                p = parts[sid]
                # Members whose profile the scan did not produce (deleted, or merged into another XID) exit.
                with self.db.session() as s:
                    prev_rows = self.store._rows(s, "SELECT xid, status, qual_ms, version FROM aep_segment_members WHERE sandbox_id = ? AND segment_id = ?", (sandbox_id, sid))
                if prev_rows:
                    px = pa.array([r[0] for r in prev_rows], pa.string())
                    gone = np.flatnonzero(~pc.is_in(px, value_set=seen_all.combine_chunks()).to_numpy(zero_copy_only=False)) if len(seen_all) else np.arange(len(prev_rows))
                    for i in gone:
                        r = prev_rows[i]
                        p["xid"].append(r[0]), p["status"].append("exited"), p["ms"].append(now if r[1] in ACTIVE_STATUSES else int(r[2])), p["version"].append(int(r[3]))
                        cnt[sid]["by_status"]["exited"] += 1
                state[sid] = {k: pa.array(v) for k, v in p.items()}
                counters[sid] = cnt[sid]
        return {"state": state, "segments": counters, "total_profiles": total_profiles, "by_policy": totals}

    def publish_members(self, s: Session, sandbox_id: str, result: dict) -> None:
        """Replaces the membership of the evaluated segments (in the caller's transaction)."""
        for sid, st in result["state"].items():
            s.execute(delete(SegmentMember).where(SegmentMember.sandbox_id == sandbox_id, SegmentMember.segment_id == sid))
            rows = list(zip([sandbox_id] * len(st["xid"]), [sid] * len(st["xid"]), st["xid"].to_pylist(), st["status"].to_pylist(), st["ms"].to_pylist(), st["version"].to_pylist()))
            if not rows:
                continue
            bulk_insert(s, "aep_segment_members", ("sandbox_id", "segment_id", "xid", "status", "qual_ms", "version"), rows)

    def evaluate_now(self, ctx: JobContext | None, sandbox_id: str, seg_ids: list[str]) -> None:
        """Evaluates segments and publishes their membership at once (an export job's
        evaluationInfo.segmentation)."""
        with self.db.session() as s:
            defs = list(s.execute(select(SegmentDefinition).where(SegmentDefinition.sandbox_id == sandbox_id, SegmentDefinition.id.in_(seg_ids))).scalars())
        result = self.evaluate(ctx, sandbox_id, [self._snapshot(d) for d in defs])
        with self.db.session() as s:
            self.publish_members(s, sandbox_id, result)


def definition_body(d: SegmentDefinition, sandbox: dict) -> dict:
    return {
        "id": d.id,
        "name": d.name,
        "description": d.description or "",
        "imsOrgId": d.org_id,
        "sandbox": sandbox,
        "profileInstanceId": "ups",
        "schema": {"name": d.schema_name},
        "expression": d.expression,
        "mergePolicyId": d.merge_policy_id,
        "evaluationInfo": d.evaluation_info,
        "dataGovernancePolicy": {"excludeOptOut": True},
        "creationTime": d.created_ms,
        "updateTime": d.updated_ms,
        "updateEpoch": d.updated_ms // 1000,
        "version": d.version,
        **(d.extra or {}),
    }


def job_body(j: SegmentJob, sandbox: dict, base: str = "/data/core/ups") -> dict:
    return {
        "id": j.id,
        "imsOrgId": j.org_id,
        "sandbox": sandbox,
        "profileInstanceId": "ups",
        "source": "api",
        "status": j.status,
        "computeJobId": j.job_id,
        "computeGatewayJobId": j.job_id,
        "segments": j.segments,
        "metrics": j.metrics or {},
        **({"errors": j.errors} if j.errors else {}),
        "requestId": j.request_id,
        "schema": {"name": PROFILE_SCHEMA_NAME},
        "_links": {"cancel": {"href": f"{base}/segment/jobs/{j.id}", "method": "DELETE"}, "checkStatus": {"href": f"{base}/segment/jobs/{j.id}", "method": "GET"}},
        "creationTime": j.created_ms,
        "updateTime": j.updated_ms,
        "updateEpoch": j.updated_ms // 1000,
    }
