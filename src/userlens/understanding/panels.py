"""Reference panels: the population a Shopping Intent profile describes (NCLUE uses NAVER's own users).

A panel is imported by the operator (`userlens panel import`) from two files in object storage:

- a sequence file or folder in the Feature input format (`user_id<TAB>b1->b2->...`), read, validated
  and encoded exactly as a Feature is (`sequences.iter_chunks`, the model's `encode`,
  `vectors.write_part`), so panel vectors share the model space of every Feature of that model;
- an attribute file (one file, UTF-8, tab-separated, header line `user_id<TAB>gender<TAB>age_group<TAB>interests`):
  `gender` and `age_group` are free labels (non-empty, at most 32 characters; the shipped panel uses
  F/M and 10s/20s/.../60s+), `interests` is zero or more shopping-interest categories separated by
  `|` (each at most 100 characters; repeats count once).

Every user must be in both files, once. Panels are global (not per account), immutable, and keyed by
model: the newest panel of a model is the one new profiles use. When a model has no panel, the
synthetic panel shipped in `samples/panel.py` is imported for it on first use.

Stored in the internal bucket under `panels/{panel_id}/`: part i is `vectors/{i:05d}/part.parquet`
(user_id, vector) and `attributes/{i:05d}.parquet` (user_id, gender, age_group, interests as integer
codes into the panel's `categories`), the same users in both, so a job reads one part at a time.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from userlens.errors import Conflict, DomainError, InvalidParameter, NotFound
from userlens.jobs.engine import JobFailure
from userlens.storage.objectstore import ObjectStore, ObjectStoreError
from userlens.understanding import sequences, vectors
from userlens.understanding.model_registry import available_models, get_model
from userlens.understanding.models import ReferencePanel
from userlens.understanding.validation import check_name, check_path_characters, check_path_exists

HEADER = ("user_id", "gender", "age_group", "interests")
SECTIONS = ("gender", "age_group", "interest")
MAX_LABEL = 32
MAX_INTEREST = 100
MAX_CATEGORIES = 32767  # codes are int16
BUILTIN_SOURCE = "panels/builtin-source"


class PanelImportError(DomainError):
    """A panel's files are missing or invalid (the detail names the file, the line and the rule)."""

    name = "INVALID_PARAMETER"


@dataclass
class PanelBlock:
    """A block of panel users: their vectors and attribute codes, in the same order."""

    user_ids: list[str]
    vectors: np.ndarray
    gender: np.ndarray  # int16 codes into categories["gender"]
    age_group: np.ndarray
    interest_counts: np.ndarray  # interests per user
    interest_codes: np.ndarray  # flat, users in order


class _Vocabulary:
    """Attribute values -> integer codes, in order of first appearance."""

    def __init__(self) -> None:
        self.codes: dict[str, dict[str, int]] = {s: {} for s in SECTIONS}

    def code(self, section: str, value: str) -> int:
        table = self.codes[section]
        if value not in table:
            if len(table) >= MAX_CATEGORIES:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"more than {MAX_CATEGORIES} distinct {section} values")
            table[value] = len(table)
        return table[value]

    def lists(self) -> dict[str, list[str]]:
        return {s: list(t) for s, t in self.codes.items()}


def _label(key: str, lineno: int, field: str, value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_LABEL:
        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: {field} must be 1-{MAX_LABEL} characters (got {value!r})")
    return value


def read_attributes(store: ObjectStore, bucket: str, key: str) -> tuple[dict[str, tuple[int, int, tuple[int, ...]]], dict[str, list[str]]]:
    """Every user's (gender, age_group, interests) codes, and the code lists. Held in memory: the
    import needs each sequence user's attributes while it streams the sequences."""
    vocab = _Vocabulary()
    rows: dict[str, tuple[int, int, tuple[int, ...]]] = {}
    header_seen = False
    for lineno, raw in sequences.iter_lines(store, bucket, key):
        raw = raw.removesuffix(b"\r")
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: not UTF-8 text") from exc
        cells = text.split("\t")
        if not header_seen:
            if tuple(c.strip().lower() for c in cells) != HEADER:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: the first line must be the header {'<TAB>'.join(HEADER)}")
            header_seen = True
            continue
        if len(cells) != len(HEADER):
            raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: expected {len(HEADER)} tab-separated columns, found {len(cells)}")
        user_id = cells[0].strip()
        if not user_id:
            raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: empty user_id")
        if len(user_id) > sequences.MAX_USER_ID_LENGTH:
            raise JobFailure("LIMIT_ERROR_MID_LENGTH", f"{key} line {lineno}: user_id of {len(user_id)} characters (maximum {sequences.MAX_USER_ID_LENGTH})")
        if user_id in rows:
            raise JobFailure("DUPLICATE_USERID", f"{key} line {lineno}: user_id {user_id!r} appears more than once")
        interests: list[int] = []
        for item in cells[3].split("|"):
            item = item.strip()
            if not item:
                continue
            if len(item) > MAX_INTEREST:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: interest of {len(item)} characters (maximum {MAX_INTEREST})")
            c = vocab.code("interest", item)
            if c not in interests:
                interests.append(c)
        rows[user_id] = (vocab.code("gender", _label(key, lineno, "gender", cells[1])), vocab.code("age_group", _label(key, lineno, "age_group", cells[2])), tuple(interests))
    if not rows:
        raise JobFailure("NOT_EXIST_FILE", f"{key} holds no user")
    return rows, vocab.lists()


def _write_attributes_part(store: ObjectStore, bucket: str, key: str, user_ids: list[str], rows: list[tuple[int, int, tuple[int, ...]]]) -> None:
    table = pa.table({
        "user_id": pa.array(user_ids, pa.string()),
        "gender": pa.array([r[0] for r in rows], pa.int16()),
        "age_group": pa.array([r[1] for r in rows], pa.int16()),
        "interests": pa.array([list(r[2]) for r in rows], pa.list_(pa.int16())),
    })
    with store.open_write(bucket, key) as f:
        pq.write_table(table, f, compression="zstd")


def iter_blocks(store: ObjectStore, bucket: str, panel: ReferencePanel) -> Iterator[PanelBlock]:
    """The panel's users part by part, in order (see `iter_part`)."""
    for i in range(panel.part_count):
        yield from iter_part(store, bucket, panel.prefix, panel.name, i)


def iter_part(store: ObjectStore, bucket: str, prefix: str, name: str, i: int) -> Iterator[PanelBlock]:
    """Part i of the panel stored under `prefix`: vectors (via `vectors.iter_vectors`) joined with
    their attributes by user id within the part, so memory is bounded by one part whatever the order.
    Plain arguments, not the panel row: an executor chunk (a Ray task) reads one part."""
    try:
        with store.open_read(bucket, f"{prefix}/attributes/{i:05d}.parquet") as f:
            attrs = pq.read_table(f)
    except (FileNotFoundError, ObjectStoreError, OSError, pa.ArrowException) as exc:
        raise JobFailure("COMMON_ERROR", f"reference panel {name!r}: attributes of part {i} unreadable ({exc})") from exc
    position = {u: j for j, u in enumerate(attrs.column("user_id").to_pylist())}
    for ids, mat in vectors.iter_vectors(store, bucket, f"{prefix}/vectors/{i:05d}"):
        try:
            take = pa.array([position[u] for u in ids], pa.int64())
        except KeyError as exc:
            raise JobFailure("COMMON_ERROR", f"reference panel {name!r}: user {exc.args[0]!r} has a vector but no attributes") from None
        rows = attrs.take(take)
        interests = rows.column("interests").combine_chunks()
        yield PanelBlock(
            user_ids=ids,
            vectors=mat,
            gender=rows.column("gender").to_numpy(),
            age_group=rows.column("age_group").to_numpy(),
            interest_counts=pc.list_value_length(interests).to_numpy(zero_copy_only=False).astype(np.int64),
            interest_codes=pc.list_flatten(interests).to_numpy(zero_copy_only=False).astype(np.int64),
        )


# A check names the active resources that read a given panel (they block its deletion).
DependentCheck = Callable[[Session, str], list[str]]


class PanelService:
    def __init__(self, deps):
        self.deps = deps
        self.dependent_checks: list[DependentCheck] = []
        self._builtin_lock = threading.Lock()

    # -- import --------------------------------------------------------------------------------
    def import_panel(self, name: object, bucket: object, sequences_path: object, attributes_path: object, model_name: str | None = None,
                     progress: Callable[[int], None] | None = None, *, builtin: bool = False) -> ReferencePanel:
        """Validates and encodes a panel and records it; raises PanelImportError on bad files.

        Synchronous (an operator's command): it holds the attributes in memory (~100 bytes a user)
        and streams the sequences. Nothing is recorded unless everything was written."""
        d = self.deps
        name = check_name(name)
        model_name = model_name or d.model_name
        if model_name not in available_models():
            raise InvalidParameter(f"model must be one of {', '.join(available_models())} (got {model_name!r})")
        seq_path = check_path_characters(sequences_path, "sequences", "INVALID_PATH_CHARACTER")
        attr_path = check_path_characters(attributes_path, "attributes", "INVALID_PATH_CHARACTER")
        if not builtin:  # the built-in panel's files live in the internal bucket, closed to the API
            check_path_exists(d.store, bucket, seq_path, "sequences", "PATH_NOT_FOUND", d.internal_bucket)
            check_path_exists(d.store, bucket, attr_path, "attributes", "PATH_NOT_FOUND", d.internal_bucket)
            if attr_path.endswith("/") or not d.store.exists(bucket, attr_path):
                raise PanelImportError(f"attributes must be one file, not a folder: {attr_path!r}")
        panel_id = str(uuid.uuid4())
        prefix = f"panels/{panel_id}"
        try:
            users, parts, dim, categories = self._write(bucket, seq_path, attr_path, model_name, prefix, progress)
            disk_usage = d.store.usage(d.internal_bucket, prefix)
            with d.db.session() as s:
                panel = ReferencePanel(
                    id=panel_id, name=name, model_name=model_name, builtin=builtin, source_bucket=bucket, sequences_path=seq_path,
                    attributes_path=attr_path, dim=dim, user_count=users, part_count=parts, categories=categories, prefix=prefix, disk_usage=disk_usage,
                )
                s.add(panel)
                s.flush()
                s.refresh(panel)
                return panel
        except JobFailure as exc:
            self._remove(prefix)
            raise PanelImportError(f"{exc.code}: {exc.detail}") from exc
        except BaseException:
            self._remove(prefix)
            raise

    def _write(self, bucket: str, seq_path: str, attr_path: str, model_name: str, prefix: str, progress) -> tuple[int, int, int, dict]:
        d = self.deps
        attrs, categories = read_attributes(d.store, bucket, attr_path)
        keys = sequences.list_input_files(d.store, bucket, seq_path)
        if not keys:
            raise JobFailure("NOT_EXIST_FILE", f"no file at {bucket}/{seq_path}")
        encoder = get_model(model_name)
        seen: set[str] = set()
        parts = 0
        try:
            for i, chunk in enumerate(sequences.iter_chunks(d.store, bucket, keys, d.chunk_rows)):
                rows = []
                for u in chunk.user_ids:
                    if u in seen:
                        raise JobFailure("DUPLICATE_USERID", f"sequences: user_id {u!r} appears more than once")
                    seen.add(u)
                    if u not in attrs:
                        raise JobFailure("UNEXPECTED_TXT_FORMAT", f"user {u!r} has a sequence but no line in the attribute file {attr_path}")
                    rows.append(attrs[u])
                vecs, _ = encoder.encode(chunk.sequences)
                vectors.write_part(d.store, d.internal_bucket, f"{prefix}/vectors/{i:05d}/part.parquet", chunk.user_ids, vecs)
                _write_attributes_part(d.store, d.internal_bucket, f"{prefix}/attributes/{i:05d}.parquet", chunk.user_ids, rows)
                parts += 1
                if progress:
                    progress(len(seen))
        except ObjectStoreError as exc:
            raise JobFailure("OBS_UPLOAD_FAILED", f"writing the panel: {exc}") from exc
        if not seen:
            raise JobFailure("NOT_EXIST_FILE", f"{bucket}/{seq_path} holds no user")
        if len(seen) != len(attrs):
            missing = [u for u in attrs if u not in seen]
            raise JobFailure("UNEXPECTED_TXT_FORMAT", f"users of the attribute file without a sequence: {len(missing)}, e.g. {missing[0]!r}")
        return len(seen), parts, int(encoder.dim), categories

    def _remove(self, prefix: str) -> None:
        try:
            self.deps.store.delete_prefix(self.deps.internal_bucket, prefix)
        except ObjectStoreError:
            pass  # leaves an orphan folder, never a panel row without data

    # -- the built-in panel --------------------------------------------------------------------
    def install_builtin(self, model_name: str) -> ReferencePanel:
        """Imports the shipped synthetic panel for `model_name` (its files are generated once into
        the internal bucket). Another process doing the same at the same time makes a second,
        identical copy: harmless, the newer one is used."""
        from userlens.samples import panel as synthetic

        d = self.deps
        root = f"{BUILTIN_SOURCE}/{synthetic.NAME}"
        with self._builtin_lock:
            existing = self.active(model_name)
            if existing is not None:
                return existing
            if not d.store.exists(d.internal_bucket, f"{root}/attributes.tsv"):
                seq_text, attr_text = synthetic.generate()
                d.store.write_bytes(d.internal_bucket, f"{root}/sequences.csv", seq_text.encode("utf-8"))
                d.store.write_bytes(d.internal_bucket, f"{root}/attributes.tsv", attr_text.encode("utf-8"))
            return self.import_panel(synthetic.NAME, d.internal_bucket, f"{root}/sequences.csv", f"{root}/attributes.tsv", model_name, builtin=True)

    # -- read ----------------------------------------------------------------------------------
    def active(self, model_name: str) -> ReferencePanel | None:
        """The newest panel of a model."""
        with self.deps.db.session() as s:
            q = select(ReferencePanel).where(ReferencePanel.model_name == model_name).order_by(ReferencePanel.created_at.desc(), ReferencePanel.id.desc()).limit(1)
            return s.execute(q).scalar_one_or_none()

    def for_model(self, model_name: str) -> ReferencePanel:
        """The panel a new profile of this model uses: the newest one, or the built-in one."""
        panel = self.active(model_name)
        if panel is None and model_name in available_models():
            panel = self.install_builtin(model_name)
        if panel is None:
            raise DomainError(
                f"no reference panel for model {model_name!r}: import one with `userlens panel import --model {model_name}`",
                name="MODEL_MISMATCH",
            )
        return panel

    def get(self, panel_id: str) -> ReferencePanel:
        with self.deps.db.session() as s:
            panel = s.get(ReferencePanel, panel_id)
            if panel is None:
                raise NotFound(f"panel {panel_id} not found")
            return panel

    def list(self) -> list[ReferencePanel]:
        with self.deps.db.session() as s:
            return list(s.execute(select(ReferencePanel).order_by(ReferencePanel.created_at.desc(), ReferencePanel.id.desc())).scalars())

    # -- delete --------------------------------------------------------------------------------
    def delete(self, panel_id: str) -> str:
        """Removes a panel unless a profile that has not finished reads it."""
        with self.deps.db.session() as s:
            panel = s.get(ReferencePanel, panel_id)
            if panel is None:
                raise NotFound(f"panel {panel_id} not found")
            users = [dep for check in self.dependent_checks for dep in check(s, panel_id)]
            if users:
                raise Conflict(f"panel {panel_id} is used by jobs that have not finished: {', '.join(users)}", name="RESOURCE_IN_USE")
            prefix = panel.prefix
            s.delete(panel)
        self._remove(prefix)
        return panel_id
