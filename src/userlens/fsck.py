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
  aep/{org}/{sandbox}/lake-plans/{job}/{attempt}/...              aep_lake_plans current/retired
                                                                  (lake export plans)

Three kinds of finding:

* orphan: an object no row references. Classified as `dead-attempt` (an attempt folder of a resource
  that exists, left by a worker that died or lost its lease: the engine's on_abort normally removes
  it, the next attempt or the claim of the dead job too), `temporary` (a hidden `.tmp-` file of a
  local-store write that was killed), `incomplete-upload` (an S3 multipart upload of the internal
  bucket never completed: its writer was killed; --repair aborts it), `deleted-resource` (the owning row is gone: a delete whose
  object removal failed) or `unknown` (outside every layout). All are safe to delete; `--repair`
  deletes those older than a grace period (default 1 h), never a referenced object.
* dangling: a row of a completed/successful resource whose objects are missing or incomplete
  (a Feature's parts are counted row by row against `user_count`, from the Parquet footers).
* status: a resource whose status disagrees with its job (e.g. a batch still `staging` whose job
  failed, a completed Feature with no vectors). A job `in_progress` with an expired lease is only
  noted: the next worker reclaims it.

Objects of jobs still active, and objects newer than the start of the check, are skipped (they
belong to work in flight). On the local store, the other buckets (customers') are searched for hidden
temporaries of killed writes too; only stale ones (writer gone, or untouched for the grace period) are
reported, and --repair removes them.

Memory stays bounded however large the store: pass 1 reads the metadata PAGE_SIZE rows at a time
(keyset order) and checks each page's referenced objects by listing just their folders; pass 2 walks
the bucket PAGE_SIZE objects at a time and asks the database about that page's keys, folders and
owners only.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator

import pyarrow.parquet as pq
from sqlalchemy import or_, select

from userlens.jobs.models import ACTIVE, Job, JobStatus
from userlens.storage.objectstore import TEMP_PREFIX, S3ObjectStore, temporary_is_stale

ACTIVE_WORDS = {s.value for s in ACTIVE}
COMPLETED = JobStatus.COMPLETED.value
FAILED = JobStatus.FAILED.value
CANCELLED = JobStatus.CANCELLED.value

PAGE_SIZE = 1000  # rows per metadata query and objects per listing page: what the check holds at once
NCLUE_FOLDERS = {"features": "Feature", "tasks": "Task", "shopping-intents": "ShoppingIntent"}
BUILTIN_SOURCE = "panels/builtin-source"


@dataclass
class Finding:
    kind: str  # orphan | dangling | status
    code: str  # orphan: dead-attempt | temporary | incomplete-upload | deleted-resource | unknown; dangling: missing-object | incomplete; status: status-mismatch
    detail: str
    key: str | None = None
    resource: str | None = None
    size: int = 0
    age_s: float | None = None
    repaired: bool = False
    bucket: str | None = None  # set when not the internal bucket (temporaries of killed writes)


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
                where = (f"{f.bucket}/{f.key}" if f.bucket else f.key) or f.resource or ""
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


Entry = tuple[str, int, "float | None"]  # (key, size, modification time)


def object_pages(store, bucket: str, prefix: str = "", page_size: int = PAGE_SIZE) -> Iterator[list[Entry]]:
    """Every object under a prefix, hidden temporaries included, in pages of at most page_size: the
    local store walks one folder at a time, S3 lists page_size keys per request (MaxKeys)."""
    prefix = prefix.strip("/")
    if isinstance(store, S3ObjectStore):
        token = None
        while True:
            kw = {"Bucket": bucket, "MaxKeys": page_size, **({"Prefix": prefix + "/"} if prefix else {}), **({"ContinuationToken": token} if token else {})}

            def _list(kw=kw):
                try:
                    return store.fs.call_s3("list_objects_v2", **kw)
                except FileNotFoundError:  # no such bucket
                    return {}

            out = store._guard(_list)
            page = [(o["Key"], int(o.get("Size") or 0), _mtime(o)) for o in out.get("Contents", []) if not o["Key"].endswith("/")]
            if page:
                yield page
            token = out.get("NextContinuationToken")
            if not out.get("IsTruncated") or not token:
                return
    base = store.path(bucket).rstrip("/")
    root = store.path(bucket, prefix) if prefix else base
    page: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:  # renamed or removed meanwhile
                continue
            page.append((full[len(base) + 1 :], st.st_size, st.st_mtime))
            if len(page) >= page_size:
                yield page
                page = []
    if page:
        yield page


def _ancestors(key: str) -> Iterable[str]:
    parts = key.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _parent(key: str) -> str:
    return key.rsplit("/", 1)[0] if "/" in key else ""


def keyset_pages(s, model, page_size: int, *where) -> Iterator[list]:
    """Rows of `model` in primary-key order, page_size at a time (keyset paging: no OFFSET, and rows
    of a finished page are expunged from the session, so memory holds one page)."""
    pk = model.__mapper__.primary_key[0]
    last = None
    while True:
        q = select(model).where(*where).order_by(pk).limit(page_size)
        if last is not None:
            q = q.where(pk > last)
        rows = list(s.execute(q).scalars())
        if not rows:
            return
        yield rows
        last = getattr(rows[-1], pk.key)
        s.expunge_all()


def _in_chunks(items, n: int = 500) -> Iterator[list]:
    items = list(items)
    for i in range(0, len(items), n):
        yield items[i : i + n]


class Fsck:
    def __init__(self, svc, page_size: int | None = None):
        self.svc = svc
        self.db, self.store, self.bucket = svc.db, svc.store, svc.settings.internal_bucket
        self.page_size = max(1, page_size or PAGE_SIZE)

    def _jobs(self, s, job_ids) -> dict[str, Job]:
        ids = {j for j in job_ids if j}
        out: dict[str, Job] = {}
        for chunk in _in_chunks(ids):
            out.update((j.id, j) for j in s.execute(select(Job).where(Job.id.in_(chunk))).scalars())
        return out

    # -- pass 1: the metadata, a page of rows at a time (status and dangling references) ----------
    def _check_metadata(self, r: Report) -> None:
        from userlens.profiles.models import Batch, BatchFile, EventGroup, StoreLoad
        from userlens.profiles.store import part_key
        from userlens.understanding import models as um

        n = self.page_size
        now = time.time()
        with self.db.session() as s:
            # NCLUE resources (their status is their job's, so only outputs can disagree).
            for folder, name in NCLUE_FOLDERS.items():
                for rows in keyset_pages(s, getattr(um, name), n):
                    jobs, expect = self._jobs(s, (row.job_id for row in rows)), []
                    for row in rows:
                        r.resources += 1
                        st = jobs[row.job_id].status if row.job_id in jobs else None
                        label = f"{name} {row.id}"
                        if st in ACTIVE_WORDS:
                            continue
                        if name == "Feature":
                            if st == COMPLETED and not row.vectors_prefix:
                                r.findings.append(Finding("status", "status-mismatch", "completed, but no vectors were published", resource=label))
                            if row.vectors_prefix and st == COMPLETED:
                                expect.append(("feature", label, row.vectors_prefix, row.user_count))
                        else:
                            key = row.artifact_key if name == "Task" else row.result_key
                            if st == COMPLETED and not key:
                                r.findings.append(Finding("status", "status-mismatch", "completed, but no output was published", resource=label))
                            if key and st == COMPLETED:
                                expect.append(("object", label, key, None))
                    self._check_expected(r, expect)
            for model in (um.TaskRun, um.CustomAttributes):
                for rows in keyset_pages(s, model, n):
                    jobs = self._jobs(s, (row.job_id for row in rows))
                    for row in rows:
                        r.resources += 1
                        j = jobs.get(row.job_id)
                        if j is not None and j.status == COMPLETED and row.line_count is None:
                            r.findings.append(Finding("status", "status-mismatch", "completed, but no line count was published", resource=f"{model.__name__} {row.id}"))
            for rows in keyset_pages(s, um.ReferencePanel, n):
                for p in rows:
                    r.resources += 1
                    label = f"panel {p.id}"
                    expect = []
                    for i in range(p.part_count):
                        expect.append(("object", label, f"{p.prefix}/vectors/{i:05d}/part.parquet", None))
                        expect.append(("object", label, f"{p.prefix}/attributes/{i:05d}.parquet", None))
                    self._check_expected(r, expect)

            # AEP batches: uploads, lake files and the status of the ingest job.
            for batches in keyset_pages(s, Batch, n):
                jobs, expect = self._jobs(s, (b.job_id for b in batches)), []
                staging = {b.id for b in batches if b.status in ("loading", "staging")}
                for chunk in _in_chunks(staging):
                    for f in s.execute(select(BatchFile).where(BatchFile.batch_id.in_(chunk))).scalars():
                        expect.append(("object", f"batch {f.batch_id}", f.key, None))
                for b in batches:
                    r.resources += 1
                    label = f"batch {b.id}"
                    if b.status == "success":
                        for part in b.lake_files or []:
                            expect.append(("object", label, part["key"], part.get("size")))
                            if part.get("pkeys"):  # a record part's primary identities (profile exports read them)
                                expect.append(("object", label, part["pkeys"], None))
                    j = jobs.get(b.job_id) if b.job_id else None
                    if j is not None and j.kind == "aep.batch_ingest":
                        self._batch_status(r, label, b.status, j)
                self._check_expected(r, expect)
            for loads in keyset_pages(s, StoreLoad, n, StoreLoad.visible.is_(True)):
                by_id = {l.id: l for l in loads if l.lake_prefix}
                expect = []
                for chunk in _in_chunks(by_id):
                    for load_id, part in s.execute(select(EventGroup.load_id, EventGroup.part).where(EventGroup.load_id.in_(chunk), EventGroup.part.is_not(None)).distinct()):
                        l = by_id[load_id]
                        expect.append(("object", f"store load {l.id} (batch {l.batch_id})", part_key(l.lake_prefix, part), None))
                self._check_expected(r, expect)

            self._aep_jobs(s, r)
            stale = (Job.status == JobStatus.IN_PROGRESS.value, Job.lease_expires_at.is_not(None))
            for jobs in keyset_pages(s, Job, n, *stale):
                for j in jobs:
                    if j.lease_expires_at.timestamp() < now:
                        r.notes.append(f"job {j.id} ({j.kind}) is in progress with a lease that expired at {j.lease_expires_at.isoformat(timespec='seconds')}: the next worker reclaims it")

    def _check_expected(self, r: Report, expect: list) -> None:
        """Referenced objects of one page of rows against the store: each folder they are in is
        listed once (one level), a Feature's vectors prefix once (recursively)."""
        folders: dict[str, list] = {}
        for item in expect:
            kind, label, ref, expected = item
            if kind == "feature":
                self._check_feature(r, label, ref, expected)
            else:
                folders.setdefault(_parent(ref), []).append(item)
        for folder, items in folders.items():
            present = self._ls(folder)
            for _kind, label, ref, expected in items:
                if ref not in present:
                    r.findings.append(Finding("dangling", "missing-object", "referenced object is missing", key=ref, resource=label))
                elif expected is not None and present[ref] != expected:
                    r.findings.append(Finding("dangling", "incomplete", f"{present[ref]} bytes, {expected} recorded", key=ref, resource=label))

    def _ls(self, folder: str) -> dict[str, int]:
        """key -> size of the objects directly in one folder."""
        base = self.store.path(self.bucket).rstrip("/")

        def _ls():
            try:
                return self.store.fs.ls(self.store.path(self.bucket, folder) if folder else base, detail=True)
            except (FileNotFoundError, NotADirectoryError):
                return []

        out = {}
        for info in self.store._guard(_ls):
            if info.get("type") != "file":
                continue
            name = info["name"]
            out[name[len(base) + 1 :] if name.startswith(base + "/") else name] = int(info.get("size") or 0)
        return out

    @staticmethod
    def _batch_status(r: Report, label: str, status: str, j: Job) -> None:
        want = {COMPLETED: ("success", "inactive"), FAILED: ("failed",), CANCELLED: ("aborted",)}.get(j.status)
        if want is None:
            # Active job: the batch waits for it (ABORT marks the batch before the job stops).
            if status not in ("staging", "aborted"):
                r.findings.append(Finding("status", "status-mismatch", f"batch is {status} while its job is {j.status}", resource=label))
        elif status not in want:
            r.findings.append(Finding("status", "status-mismatch", f"batch is {status}, its job {j.id} is {j.status}", resource=label))

    @staticmethod
    def _aep_job_rules() -> list:
        rules: list[tuple[Any, dict[str, tuple[str, ...]], tuple[str, ...], str]] = []
        try:
            from userlens.profiles.export import ExportJob

            rules.append((ExportJob, {COMPLETED: ("SUCCEEDED",), FAILED: ("FAILED",), CANCELLED: ("FAILED",)}, ("NEW", "PROCESSING"), "export job"))
        except ImportError:  # pragma: no cover - the module is optional in older trees
            pass
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
        return rules

    def _aep_jobs(self, s, r: Report) -> None:
        """Export, segment and delete jobs: their status word against their job's."""
        for model, want, active_words, label in self._aep_job_rules():
            for rows in keyset_pages(s, model, self.page_size):
                jobs = self._jobs(s, (getattr(row, "job_id", None) or row.id for row in rows))
                for row in rows:
                    r.resources += 1
                    j = jobs.get(getattr(row, "job_id", None) or row.id)
                    if j is None:
                        continue
                    name = f"{label} {row.id}"
                    if j.status in ACTIVE_WORDS:
                        if row.status not in active_words:
                            r.findings.append(Finding("status", "status-mismatch", f"{row.status} while its job {j.id} is {j.status}", resource=name))
                    elif row.status not in want[j.status]:
                        r.findings.append(Finding("status", "status-mismatch", f"{row.status}, its job {j.id} is {j.status}", resource=name))

    def _export_folders(self, s, batch_ids: set[str], active_only: bool) -> dict[str, tuple[str, bool]]:
        """Lake folder -> (export job name, job active) of the exports that write the given batches:
        the export jobs are read a page at a time (their batch ids are in their job's payload)."""
        from userlens.profiles.export import ExportJob, lake_folder

        out: dict[str, tuple[str, bool]] = {}
        if not batch_ids:
            return out
        for rows in keyset_pages(s, ExportJob, self.page_size):
            jobs = self._jobs(s, (row.job_id for row in rows))
            for row in rows:
                j = jobs.get(row.job_id)
                if j is None or (active_only and j.status not in ACTIVE_WORDS):
                    continue
                payload = j.payload or {}
                for bid in payload.get("batch_ids") or []:
                    if bid in batch_ids:
                        out[lake_folder(row.org_id, row.sandbox_id, payload.get("dataset_id", ""), bid)] = (f"export job {row.id}", j.status in ACTIVE_WORDS)
        return out

    # -- pass 2: the objects, a page at a time (orphans) -----------------------------------------
    def _page_refs(self, s, keys: list[str]) -> dict[str, Any]:
        """What the database says about one page of object keys: the keys and prefixes rows
        reference, the folders of work in flight (protected) and the owners of resource folders."""
        from userlens.profiles.ingest import lake_root, upload_prefix
        from userlens.profiles.models import Batch, BatchFile, StoreLoad
        from userlens.understanding import models as um

        refs: dict[str, Any] = {"keys": set(), "prefixes": set(), "protected": {BUILTIN_SOURCE}, "owners": {}, "export_batches": {}}
        keys_ref, prefixes, protected, owners = refs["keys"], refs["prefixes"], refs["protected"], refs["owners"]
        ancestors = {a for k in keys for a in _ancestors(k)}
        nclue_ids: dict[str, set[str]] = {}
        batch_ids: set[str] = set()
        plan_jobs: dict[str, str] = {}  # lake-plan folder of a job -> job id
        for k in keys:
            parts = k.split("/")
            if parts[0] == "aep" and len(parts) >= 7 and parts[3] == "lake-plans":
                plan_jobs["/".join(parts[:5])] = parts[4]
            if parts[0] == "nclue" and len(parts) >= 5 and parts[2] in NCLUE_FOLDERS:
                nclue_ids.setdefault(parts[2], set()).add(parts[3])
            elif parts[0] == "aep" and len(parts) >= 5 and parts[3] == "uploads":
                batch_ids.add(parts[4])
            elif parts[0] == "aep" and len(parts) >= 6 and parts[3] == "lake":
                batch_ids.add(parts[5])

        for folder, ids in nclue_ids.items():
            name = NCLUE_FOLDERS[folder]
            model = getattr(um, name)
            for chunk in _in_chunks(ids):
                rows = list(s.execute(select(model).where(model.id.in_(chunk))).scalars())
                jobs = self._jobs(s, (row.job_id for row in rows))
                for row in rows:
                    root = f"nclue/{row.account_id}/{folder}/{row.id}"
                    owners[root] = f"{name} {row.id}"
                    j = jobs.get(row.job_id)
                    if j is not None and j.status in ACTIVE_WORDS:
                        protected.add(root)
                    elif name == "Feature":
                        if row.vectors_prefix:
                            prefixes.add(row.vectors_prefix)
                    else:
                        key = row.artifact_key if name == "Task" else row.result_key
                        if key:
                            keys_ref.add(key)
        for chunk in _in_chunks(ancestors):
            for p in s.execute(select(um.ReferencePanel).where(um.ReferencePanel.prefix.in_(chunk))).scalars():
                prefixes.add(p.prefix)
                owners[p.prefix] = f"panel {p.id}"
            for (lp,) in s.execute(select(StoreLoad.lake_prefix).where(StoreLoad.visible.is_(True), StoreLoad.lake_prefix.in_(chunk))):
                prefixes.add(lp)
        for chunk in _in_chunks(keys):
            panel = um.ReferencePanel
            for p in s.execute(select(panel).where(panel.source_bucket == self.bucket, or_(panel.sequences_path.in_(chunk), panel.attributes_path.in_(chunk)))).scalars():
                keys_ref.update((p.sequences_path, p.attributes_path))
            keys_ref.update(s.execute(select(BatchFile.key).where(BatchFile.key.in_(chunk))).scalars())
        found: set[str] = set()
        for chunk in _in_chunks(batch_ids):
            batches = list(s.execute(select(Batch).where(Batch.id.in_(chunk))).scalars())
            jobs = self._jobs(s, (b.job_id for b in batches))
            for b in batches:
                found.add(b.id)
                label = f"batch {b.id}"
                owners[lake_root(b)] = label
                owners[upload_prefix(b)] = label
                j = jobs.get(b.job_id) if b.job_id else None
                if b.status in ("loading", "staging") or (j is not None and j.status in ACTIVE_WORDS):
                    protected.add(upload_prefix(b))
                    protected.add(lake_root(b))
                if b.status == "success":
                    for part in b.lake_files or []:
                        keys_ref.add(part["key"])
                        if part.get("pkeys"):
                            keys_ref.add(part["pkeys"])
        # Lake plans (profiles/lakeplan.py): the installed and retired ones are referenced; those of
        # running exports are in flight.
        if plan_jobs:
            from userlens.profiles import lakeplan

            prefixes.update(lakeplan.referenced(s, sorted({f.split("/")[2] for f in plan_jobs})))
            jobs = self._jobs(s, set(plan_jobs.values()))
            protected.update(f for f, jid in plan_jobs.items() if jid in jobs and jobs[jid].status in ACTIVE_WORDS)
        # Lake folders of batches with no row yet (or any more) may be an export's: running ones are
        # protected; the others name the export in the finding.
        for folder, (name, active) in self._export_folders(s, batch_ids - found, active_only=False).items():
            refs["export_batches"][folder] = name
            if active:
                protected.add(folder)
        s.expunge_all()
        return refs

    def _check_objects(self, r: Report, started: float, repair: bool, grace_seconds: float) -> None:
        for page in object_pages(self.store, self.bucket, page_size=self.page_size):
            r.objects += len(page)
            r.bytes += sum(size for _, size, _ in page)
            with self.db.session() as s:
                refs = self._page_refs(s, [k for k, _, _ in page])
            keys, prefixes, protected = refs["keys"], refs["prefixes"], refs["protected"]
            for key, size, mtime in page:
                temporary = key.rsplit("/", 1)[-1].startswith(TEMP_PREFIX)  # never an object, even in a published folder
                if not temporary and (key in keys or any(a in prefixes for a in _ancestors(key))):
                    continue
                if any(a in protected for a in _ancestors(key)) or (mtime is not None and mtime >= started):
                    r.skipped_in_flight += 1
                    continue
                code, detail = self._classify(key, refs)
                f = Finding("orphan", code, detail, key=key, size=size, age_s=None if mtime is None else round(started - mtime, 1))
                r.findings.append(f)
                if repair and self._stale(key, mtime, started, grace_seconds):
                    self.store._guard(lambda k=key: self.store.fs.rm_file(self.store.path(self.bucket, k)))
                    f.repaired = True

    @staticmethod
    def _stale(key: str, mtime: float | None, now: float, grace_seconds: float) -> bool:
        """Old enough to delete: past the grace period, or a temporary whose writer is known dead."""
        name = key.rsplit("/", 1)[-1]
        if name.startswith(TEMP_PREFIX):
            return temporary_is_stale(name, mtime, now, grace_seconds)
        return mtime is not None and now - mtime >= grace_seconds

    # -- pass 3: temporaries of killed writes in the other buckets (local store) -----------------
    def _check_other_buckets(self, r: Report, started: float, repair: bool, grace_seconds: float) -> None:
        buckets = getattr(self.store, "buckets", None)
        if buckets is None:  # S3: a killed upload leaves no object (its parts expire with the bucket's lifecycle rules)
            return
        for bucket in buckets():
            if bucket == self.bucket:
                continue
            for key, size, mtime in self.store.temporaries(bucket):
                if not temporary_is_stale(key.rsplit("/", 1)[-1], mtime, started, grace_seconds):
                    r.skipped_in_flight += 1  # a write in flight (or one that may still be)
                    continue
                f = Finding("orphan", "temporary", "partial write of a killed writer", key=key, size=size, age_s=None if mtime is None else round(started - mtime, 1), bucket=bucket)
                r.findings.append(f)
                if repair:
                    self.store._guard(lambda b=bucket, k=key: self.store.fs.rm_file(self.store.path(b, k)))
                    f.repaired = True

    # -- pass 4: multipart uploads never completed (S3: writers killed mid-upload) --------------
    def _check_uploads(self, r: Report, started: float, repair: bool, grace_seconds: float) -> None:
        # The internal bucket only: customers' buckets may hold other applications' uploads in flight.
        for key, upload_id, initiated in self.store.incomplete_uploads(self.bucket):
            if initiated is None or started - initiated < grace_seconds:
                r.skipped_in_flight += 1  # may be a write in flight (a multipart upload has no writer tag)
                continue
            f = Finding("orphan", "incomplete-upload", f"multipart upload {upload_id} never completed (its writer was killed)", key=key, age_s=round(started - initiated, 1))
            r.findings.append(f)
            if repair:
                self.store.abort_upload(self.bucket, key, upload_id)
                f.repaired = True

    # -- the check ------------------------------------------------------------------------------
    def run(self, repair: bool = False, grace_seconds: float = 3600.0) -> Report:
        r = Report(self.bucket)
        started = time.time()
        self._check_metadata(r)
        self._check_objects(r, started, repair, grace_seconds)
        self._check_other_buckets(r, started, repair, grace_seconds)
        self._check_uploads(r, started, repair, grace_seconds)
        if repair:
            young = [f for f in r.of("orphan") if not f.repaired]
            if young:
                r.notes.append(f"{len(young)} orphan(s) younger than the grace period of {grace_seconds:g} s were kept")
        return r

    def _check_feature(self, r: Report, label: str, prefix: str, user_count: int | None) -> None:
        """One Feature's parts, listed a page at a time: numbering without gaps, readable footers, and
        as many users as recorded."""
        numbers: set[int] = set()
        rows, unreadable = 0, None
        for page in object_pages(self.store, self.bucket, prefix, page_size=self.page_size):
            for k, _size, _mtime in page:
                name = k.rsplit("/", 1)[-1]
                if _parent(k) != prefix or not name.startswith("part-") or not k.endswith(".parquet"):
                    continue
                numbers.add(int(name[5:10]))
                if unreadable is not None:
                    continue
                try:
                    with self.store.open_read(self.bucket, k, block_size=256 * 1024) as f:
                        rows += pq.read_metadata(f).num_rows
                except Exception as exc:  # unreadable footer: the part is damaged
                    unreadable = Finding("dangling", "incomplete", f"vector part unreadable: {type(exc).__name__}: {exc}", key=k, resource=label)
        if not numbers:
            r.findings.append(Finding("dangling", "missing-object", "no vector part is left", key=prefix, resource=label))
            return
        missing = [f"{prefix}/part-{i:05d}.parquet" for i in range(max(numbers) + 1) if i not in numbers]
        for k in missing:
            r.findings.append(Finding("dangling", "missing-object", "vector part is missing", key=k, resource=label))
        if unreadable is not None:
            r.findings.append(unreadable)
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
        if parts[0] == "aep" and len(parts) >= 7 and parts[3] == "lake-plans":
            return "dead-attempt", f"lake plan of attempt {parts[5]} of export job {parts[4]} that was neither installed nor removed"
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


def run_fsck(svc, repair: bool = False, grace_seconds: float = 3600.0, page_size: int | None = None) -> Report:
    return Fsck(svc, page_size=page_size or PAGE_SIZE).run(repair=repair, grace_seconds=grace_seconds)
