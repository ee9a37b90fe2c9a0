"""`userlens fsck`: does the metadata database agree with the object store?

Everything userlens stores lives in its internal bucket, in folders named after the rows that own
them (a job attempt writes under an attempt-unique folder, and only the transaction that completes
the job records which folder is the published one):

  nclue/{account}/features/{id}/{attempt}/part-NNNNN.parquet     Feature.vectors_prefix
  nclue/{account}/tasks/{id}/{attempt}/model.npz                  Task.artifact_key
  nclue/{account}/shopping-intents/{id}/{attempt}/{id}.tsv        ShoppingIntent.result_key
  panels/{id}/vectors/NNNNN/part.parquet, attributes/NNNNN.parquet ReferencePanel.prefix, part_count
  panels/builtin-source/...                                       generated input of built-in panels
  aep/{org}/{sandbox}/uploads/{batch}/{path}                      aep_batch_files.key
  aep/{org}/{sandbox}/lake/{dataset}/{batch}/{attempt}/part-*      aep_batches.lake_files (ingested
                                                                  batches, with the .pkeys.parquet
                                                                  sidecars of record parts, and
                                                                  exported batches), and
                                                                  aep_store_loads.lake_prefix + event
                                                                  groups' part numbers

Three kinds of finding:

* orphan: an object no row references. Classified as `dead-attempt` (an attempt folder of a resource
  that exists, left by a worker that died or lost its lease: the engine's on_abort normally removes
  it, the next attempt or the claim of the dead job too), `temporary` (a hidden `.tmp-` file of a
  local-store write that was killed), `deleted-resource` (the owning row is gone: a delete whose
  object removal failed) or `unknown` (outside every layout). All are safe to delete; `--repair`
  deletes those older than a grace period (default 1 h), never a referenced object.
* dangling: a row of a completed/successful resource whose objects are missing or incomplete
  (a Feature's parts are counted row by row against `user_count`, from the Parquet footers).
* status: a resource whose status disagrees with its job (e.g. a batch still `staging` whose job
  failed, a completed Feature with no vectors). A job `in_progress` with an expired lease is only
  noted: the next worker reclaims it.

Objects of jobs still active, and objects newer than the start of the check, are skipped (they
belong to work in flight). The check reads the database first, then lists the bucket once.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import pyarrow.parquet as pq
from sqlalchemy import select

from userlens.jobs.models import ACTIVE, Job, JobStatus

ACTIVE_WORDS = {s.value for s in ACTIVE}
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value

NCLUE_FOLDERS = {"features": "Feature", "tasks": "Task", "shopping-intents": "ShoppingIntent"}
BUILTIN_SOURCE = "panels/builtin-source"


@dataclass
class Finding:
    kind: str  # orphan | dangling | status
    code: str  # orphan: dead-attempt | temporary | deleted-resource | unknown; dangling: missing-object | incomplete; status: status-mismatch
    detail: str
    key: str | None = None
    resource: str | None = None
    size: int = 0
    age_s: float | None = None
    repaired: bool = False


@dataclass
class Report:
    bucket: str
    objects: int = 0
    bytes: int = 0
    resources: int = 0
    skipped_in_flight: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of(self, kind: str) -> list[Finding]:
        return [f for f in self.findings if f.kind == kind]

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if not f.repaired]

    @property
    def clean(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket, "clean": self.clean, "objects": self.objects, "bytes": self.bytes, "resources": self.resources,
            "skipped_in_flight": self.skipped_in_flight,
            "counts": {k: len(self.of(k)) for k in ("orphan", "dangling", "status")},
            "repaired": sum(1 for f in self.findings if f.repaired),
            "findings": [asdict(f) for f in self.findings], "notes": self.notes,
        }

    def render(self) -> str:
        lines = [f"fsck of bucket {self.bucket!r}: {self.objects} objects ({self.bytes} bytes), {self.resources} resources checked"]
        if self.skipped_in_flight:
            lines.append(f"  {self.skipped_in_flight} objects of jobs in flight skipped")
        for kind, title in (("orphan", "Orphans (objects no row references)"), ("dangling", "Dangling references (rows whose objects are missing)"), ("status", "Status disagreements")):
            items = self.of(kind)
            if not items:
                continue
            lines.append(f"{title}: {len(items)}")
            for f in items:
                where = f.key or f.resource or ""
                extra = " [repaired]" if f.repaired else ""
                lines.append(f"  {f.code:17} {where}  {f.detail}{extra}")
        for n in self.notes:
            lines.append(f"note: {n}")
        lines.append("clean" if self.clean else f"{len(self.problems)} problem(s) found")
        return "\n".join(lines)


def _mtime(info: dict) -> float | None:
    for k in ("mtime", "LastModified", "last_modified", "created"):
        v = info.get(k)
        if isinstance(v, dt.datetime):
            return (v if v.tzinfo else v.replace(tzinfo=dt.timezone.utc)).timestamp()
        if isinstance(v, (int, float)):
            return float(v)
    return None


def list_objects(store, bucket: str) -> dict[str, tuple[int, float | None]]:
    """key -> (size, modification time) of every object, hidden temporaries included."""
    base = store.path(bucket).rstrip("/")

    def _find():
        try:
            return store.fs.find(base, detail=True)
        except (FileNotFoundError, NotADirectoryError):
            return {}

    out: dict[str, tuple[int, float | None]] = {}
    for p, info in store._guard(_find).items():
        if info.get("type") != "file":
            continue
        key = p[len(base) + 1 :] if p.startswith(base + "/") else p
        out[key] = (int(info.get("size") or 0), _mtime(info))
    return out


def _ancestors(key: str) -> Iterable[str]:
    parts = key.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


class Fsck:
    def __init__(self, svc):
        self.svc = svc
        self.db, self.store, self.bucket = svc.db, svc.store, svc.settings.internal_bucket

    # -- the database snapshot ------------------------------------------------------------------
    def _snapshot(self, r: Report) -> dict[str, Any]:
        from userlens.profiles.ingest import lake_root, upload_prefix, sandbox_root
        from userlens.profiles.models import Batch, BatchFile, EventGroup, StoreLoad
        from userlens.profiles.store import part_key
        from userlens.understanding import models as um

        snap: dict[str, Any] = {"keys": {}, "prefixes": {}, "protected": set(), "owners": {}, "expect": []}
        keys, prefixes, protected, expect = snap["keys"], snap["prefixes"], snap["protected"], snap["expect"]
        now = time.time()
        with self.db.session() as s:
            jobs = {j.id: j for j in s.execute(select(Job)).scalars()}
            s.expunge_all()

            def job_status(job_id: str | None) -> str | None:
                j = jobs.get(job_id) if job_id else None
                return j.status if j else None

            # NCLUE resources (their status is their job's, so only outputs can disagree).
            for folder, name in NCLUE_FOLDERS.items():
                model = getattr(um, name)
                for row in s.execute(select(model)).scalars():
                    r.resources += 1
                    root = f"nclue/{row.account_id}/{folder}/{row.id}"
                    snap["owners"][root] = f"{name} {row.id}"
                    st = job_status(row.job_id)
                    label = f"{name} {row.id}"
                    if st in ACTIVE_WORDS:
                        protected.add(root)
                        continue
                    if name == "Feature":
                        if st == COMPLETED and not row.vectors_prefix:
                            r.findings.append(Finding("status", "status-mismatch", "completed, but no vectors were published", resource=label))
                        if row.vectors_prefix:
                            prefixes[row.vectors_prefix] = label
                            if st == COMPLETED:
                                expect.append(("feature", label, row.vectors_prefix, row.user_count))
                    else:
                        key = row.artifact_key if name == "Task" else row.result_key
                        if st == COMPLETED and not key:
                            r.findings.append(Finding("status", "status-mismatch", "completed, but no output was published", resource=label))
                        if key:
                            keys[key] = label
                            if st == COMPLETED:
                                expect.append(("object", label, key, None))
            for model in (um.TaskRun, um.CustomAttributes):
                for row in s.execute(select(model)).scalars():
                    r.resources += 1
                    if job_status(row.job_id) == COMPLETED and row.line_count is None:
                        r.findings.append(Finding("status", "status-mismatch", "completed, but no line count was published", resource=f"{model.__name__} {row.id}"))
            for p in s.execute(select(um.ReferencePanel)).scalars():
                r.resources += 1
                label = f"panel {p.id}"
                prefixes[p.prefix] = label
                snap["owners"][p.prefix] = label
                if p.source_bucket == self.bucket:
                    keys[p.sequences_path] = label
                    keys[p.attributes_path] = label
                for i in range(p.part_count):
                    expect.append(("object", label, f"{p.prefix}/vectors/{i:05d}/part.parquet", None))
                    expect.append(("object", label, f"{p.prefix}/attributes/{i:05d}.parquet", None))
            protected.add(BUILTIN_SOURCE)  # regenerated on demand; the panels made from it point at it

            # AEP batches: uploads, lake files and the status of the ingest job.
            batches = {b.id: b for b in s.execute(select(Batch)).scalars()}
            snap["batches"] = {bid: lake_root(b) for bid, b in batches.items()}
            for f in s.execute(select(BatchFile)).scalars():
                keys[f.key] = f"batch {f.batch_id} file {f.path}"
                b = batches.get(f.batch_id)
                if b is not None and b.status in ("loading", "staging"):
                    expect.append(("object", f"batch {f.batch_id}", f.key, None))
            for b in batches.values():
                r.resources += 1
                label = f"batch {b.id}"
                snap["owners"][lake_root(b)] = label
                snap["owners"][upload_prefix(b)] = label
                j = jobs.get(b.job_id) if b.job_id else None
                if b.status in ("loading", "staging") or (j is not None and j.status in ACTIVE_WORDS):
                    protected.add(upload_prefix(b))
                    protected.add(lake_root(b))
                if b.status == "success":
                    for part in b.lake_files or []:
                        keys[part["key"]] = label
                        expect.append(("object", label, part["key"], part.get("size")))
                        if part.get("pkeys"):  # a record part's primary identities (profile exports read them)
                            keys[part["pkeys"]] = label
                            expect.append(("object", label, part["pkeys"], None))
                if j is not None and j.kind == "aep.batch_ingest":
                    self._batch_status(r, label, b.status, j)
            loads = {l.id: l for l in s.execute(select(StoreLoad).where(StoreLoad.visible.is_(True))).scalars()}
            for l in loads.values():
                if l.lake_prefix:
                    prefixes[l.lake_prefix] = f"store load {l.id} (batch {l.batch_id})"
            parts = s.execute(select(EventGroup.load_id, EventGroup.part).where(EventGroup.part.is_not(None)).distinct()).all()
            for load_id, part in parts:
                l = loads.get(load_id)
                if l is not None and l.lake_prefix:
                    expect.append(("object", f"store load {l.id} (batch {l.batch_id})", part_key(l.lake_prefix, part), None))

            self._aep_jobs(s, r, jobs, protected, snap, sandbox_root)
            for j in jobs.values():
                if j.status == JobStatus.IN_PROGRESS.value and j.lease_expires_at is not None and j.lease_expires_at.timestamp() < now:
                    r.notes.append(f"job {j.id} ({j.kind}) is in progress with a lease that expired at {j.lease_expires_at.isoformat(timespec='seconds')}: the next worker reclaims it")
        return snap

    @staticmethod
    def _batch_status(r: Report, label: str, status: str, j: Job) -> None:
        want = {COMPLETED: ("success", "inactive"), FAILED: ("failed",), CANCELLED: ("aborted",)}.get(j.status)
        if want is None:
            # Active job: the batch waits for it (ABORT marks the batch before the job stops).
            if status not in ("staging", "aborted"):
                r.findings.append(Finding("status", "status-mismatch", f"batch is {status} while its job is {j.status}", resource=label))
        elif status not in want:
            r.findings.append(Finding("status", "status-mismatch", f"batch is {status}, its job {j.id} is {j.status}", resource=label))

    def _aep_jobs(self, s, r: Report, jobs: dict, protected: set, snap: dict, sandbox_root) -> None:
        """Export, segment and delete jobs: their status word against their job's."""
        rules: list[tuple[Any, dict[str, tuple[str, ...]], tuple[str, ...], str]] = []
        try:
            from userlens.profiles.export import ExportJob, lake_folder

            rules.append((ExportJob, {COMPLETED: ("SUCCEEDED",), FAILED: ("FAILED",), CANCELLED: ("FAILED",)}, ("NEW", "PROCESSING"), "export job"))
        except ImportError:  # pragma: no cover - the module is optional in older trees
            ExportJob = None
        try:
            from userlens.profiles.segments import SegmentJob

            rules.append((SegmentJob, {COMPLETED: ("SUCCEEDED",), FAILED: ("FAILED",), CANCELLED: ("CANCELLED",)}, ("NEW", "QUEUED", "PROCESSING", "CANCELLING"), "segment job"))
        except ImportError:  # pragma: no cover
            pass
        try:
            from userlens.profiles.system_jobs import SystemJob

            rules.append((SystemJob, {COMPLETED: ("COMPLETED",), FAILED: ("ERROR",), CANCELLED: ("ERROR",)}, ("NEW", "PROCESSING"), "delete request"))
        except ImportError:  # pragma: no cover
            pass
        snap["export_batches"] = {}
        for model, want, active_words, label in rules:
            for row in s.execute(select(model)).scalars():
                r.resources += 1
                job_id = getattr(row, "job_id", None) or row.id
                j = jobs.get(job_id)
                if j is None:
                    continue
                name = f"{label} {row.id}"
                if j.status in ACTIVE_WORDS:
                    if row.status not in active_words:
                        r.findings.append(Finding("status", "status-mismatch", f"{row.status} while its job {j.id} is {j.status}", resource=name))
                elif row.status not in want[j.status]:
                    r.findings.append(Finding("status", "status-mismatch", f"{row.status}, its job {j.id} is {j.status}", resource=name))
                if model is ExportJob:
                    payload = j.payload or {}
                    for bid in payload.get("batch_ids") or []:
                        folder = lake_folder(row.org_id, row.sandbox_id, payload.get("dataset_id", ""), bid)
                        snap["export_batches"][folder] = name
                        if j.status in ACTIVE_WORDS:
                            protected.add(folder)

    # -- the check ------------------------------------------------------------------------------
    def run(self, repair: bool = False, grace_seconds: float = 3600.0) -> Report:
        r = Report(self.bucket)
        started = time.time()
        snap = self._snapshot(r)
        objects = list_objects(self.store, self.bucket)
        r.objects, r.bytes = len(objects), sum(v[0] for v in objects.values())
        keys, prefixes, protected = snap["keys"], snap["prefixes"], snap["protected"]

        for kind, label, ref, expected in snap["expect"]:
            if kind == "feature":
                self._check_feature(r, objects, label, ref, expected)
            elif ref not in objects:
                r.findings.append(Finding("dangling", "missing-object", "referenced object is missing", key=ref, resource=label))
            elif expected is not None and objects[ref][0] != expected:
                r.findings.append(Finding("dangling", "incomplete", f"{objects[ref][0]} bytes, {expected} recorded", key=ref, resource=label))

        for key, (size, mtime) in sorted(objects.items()):
            temporary = key.rsplit("/", 1)[-1].startswith(".tmp-")  # never an object, even in a published folder
            if not temporary and (key in keys or any(a in prefixes for a in _ancestors(key))):
                continue
            if any(a in protected for a in _ancestors(key)) or (mtime is not None and mtime >= started):
                r.skipped_in_flight += 1
                continue
            code, detail = self._classify(key, snap)
            r.findings.append(Finding("orphan", code, detail, key=key, size=size, age_s=None if mtime is None else round(started - mtime, 1)))

        if repair:
            for f in r.of("orphan"):
                if f.age_s is not None and f.age_s >= grace_seconds:
                    self.store._guard(lambda k=f.key: self.store.fs.rm_file(self.store.path(self.bucket, k)))
                    f.repaired = True
            young = [f for f in r.of("orphan") if not f.repaired]
            if young:
                r.notes.append(f"{len(young)} orphan(s) younger than the grace period of {grace_seconds:g} s were kept")
        return r

    def _check_feature(self, r: Report, objects: dict, label: str, prefix: str, user_count: int | None) -> None:
        parts = sorted(k for k in objects if k.startswith(prefix + "/") and k.rsplit("/", 1)[-1].startswith("part-") and k.endswith(".parquet"))
        if not parts:
            r.findings.append(Finding("dangling", "missing-object", "no vector part is left", key=prefix, resource=label))
            return
        numbers = {int(k.rsplit("/", 1)[-1][5:10]) for k in parts}
        missing = [f"{prefix}/part-{i:05d}.parquet" for i in range(max(numbers) + 1) if i not in numbers]
        for k in missing:
            r.findings.append(Finding("dangling", "missing-object", "vector part is missing", key=k, resource=label))
        rows = 0
        for k in parts:
            try:
                with self.store.open_read(self.bucket, k, block_size=256 * 1024) as f:
                    rows += pq.read_metadata(f).num_rows
            except Exception as exc:  # unreadable footer: the part is damaged
                r.findings.append(Finding("dangling", "incomplete", f"vector part unreadable: {type(exc).__name__}: {exc}", key=k, resource=label))
                return
        if not missing and user_count is not None and rows != user_count:
            r.findings.append(Finding("dangling", "incomplete", f"the parts hold {rows} users, {user_count} recorded (a last part is missing?)", key=prefix, resource=label))

    @staticmethod
    def _classify(key: str, snap: dict) -> tuple[str, str]:
        name = key.rsplit("/", 1)[-1]
        if name.startswith(".tmp-"):
            return "temporary", "partial write of an interrupted attempt"
        owners = snap["owners"]
        parts = key.split("/")
        if parts[0] == "nclue" and len(parts) >= 5 and parts[2] in NCLUE_FOLDERS:
            root = "/".join(parts[:4])
            if root in owners:
                return "dead-attempt", f"attempt {parts[4]} of {owners[root]} that was not published"
            return "deleted-resource", f"{NCLUE_FOLDERS[parts[2]]} {parts[3]} no longer exists"
        if parts[0] == "panels" and len(parts) >= 3:
            return "deleted-resource", f"panel {parts[1]} no longer exists"
        if parts[0] == "aep" and len(parts) >= 5 and parts[3] in ("uploads", "lake"):
            if parts[3] == "uploads":
                root = "/".join(parts[:5])
                if root in owners:
                    return "dead-attempt", f"upload of {owners[root]} that was never recorded"
                return "deleted-resource", f"batch {parts[4]} no longer exists"
            if len(parts) >= 7:
                root = "/".join(parts[:6])
                if root in owners:
                    return "dead-attempt", f"attempt {parts[6]} of {owners[root]} that was not published"
                if root in snap.get("export_batches", {}):
                    return "dead-attempt", f"attempt {parts[6]} of {snap['export_batches'][root]} that was not published"
                return "deleted-resource", f"batch {parts[5]} of dataset {parts[4]} no longer exists"
        return "unknown", "outside every layout userlens writes"


def run_fsck(svc, repair: bool = False, grace_seconds: float = 3600.0) -> Report:
    return Fsck(svc).run(repair=repair, grace_seconds=grace_seconds)
