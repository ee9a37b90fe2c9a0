"""Correct-answer files (`user_id<TAB>label`, labels 0 or 1, tab-delimited `.csv`, UTF-8).

A file or a folder of part files, like sequence datasets. An optional first line
`user_id<TAB>label` is taken as a header. When a user appears twice, the first label counts.
Failures: NOT_EXIST_FILE (no file, or no row), UNEXPECTED_FILE_TYPE (binary or compressed),
UNEXPECTED_TXT_FORMAT (not two tab-separated columns, empty id, not UTF-8), UNEXPECTED_LABEL (a
label other than 0 or 1).

`scan_personal_data` runs synchronously at POST /tasks (422 / 10109): it reads the files in blocks
cut at line ends and reports the first finding with its kind, file and line.
"""

from __future__ import annotations

from userlens.errors import DomainError
from userlens.jobs.engine import JobFailure, TransientJobError
from userlens.storage.objectstore import ObjectStore, ObjectStoreError
from userlens.understanding import personal_data, sequences

SCAN_BLOCK = 4 * 1024 * 1024


def input_files(store: ObjectStore, bucket: str, path: str) -> list[str]:
    return sequences.list_input_files(store, bucket, path)


def scan_personal_data(store: ObjectStore, bucket: str, path: str, field: str) -> None:
    try:
        keys = input_files(store, bucket, path)
    except TransientJobError as exc:
        raise DomainError(exc.detail, name="OBS_UNAVAILABLE") from exc
    for key in keys:
        line = 1
        rest = b""
        try:
            with store.open_read(key=key, bucket=bucket) as f:
                while True:
                    block = f.read(SCAN_BLOCK)
                    data = rest + block
                    if block:
                        cut = data.rfind(b"\n") + 1
                        if cut == 0 and len(data) <= 4 * SCAN_BLOCK:
                            rest = data
                            continue
                        if cut == 0:  # a line that does not end: scan it in pieces, memory stays bounded
                            cut = len(data) - 256  # the overlap keeps a datum that straddles the cut
                        data, rest = data[:cut], data[cut:]
                    text = data.decode("utf-8", errors="replace")
                    found = personal_data.scan_text(text, line)
                    if found:
                        raise DomainError(f"{found.describe(f'{field} {key}')}: files with personal data cannot be used", name="PERSONAL_DATA_NOT_ALLOWED")
                    line += text.count("\n")
                    if not block:
                        break
        except ObjectStoreError as exc:
            raise DomainError(f"object storage unavailable: {exc}", name="OBS_UNAVAILABLE") from exc
        except FileNotFoundError:
            continue  # vanished since listed: the job reports NOT_EXIST_FILE


def read_labels(store: ObjectStore, bucket: str, path: str) -> dict[str, int]:
    """user_id -> label for every row of the answer file(s)."""
    keys = input_files(store, bucket, path)
    if not keys:
        raise JobFailure("NOT_EXIST_FILE", f"no file at {bucket}/{path}")
    labels: dict[str, int] = {}
    first_row = True
    for key in keys:
        for lineno, raw in sequences.iter_lines(store, bucket, key):
            if raw.endswith(b"\r"):
                raw = raw[:-1]
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: not UTF-8 text") from exc
            parts = text.split("\t")
            if first_row and [p.strip().lower() for p in parts] == ["user_id", "label"]:
                first_row = False
                continue
            first_row = False
            if len(parts) != 2:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: expected user_id<TAB>label, found {len(parts)} columns")
            user_id, label = parts[0].strip(), parts[1].strip()
            if not user_id:
                raise JobFailure("UNEXPECTED_TXT_FORMAT", f"{key} line {lineno}: empty user_id")
            if label not in ("0", "1"):
                raise JobFailure("UNEXPECTED_LABEL", f"{key} line {lineno}: label {label[:20]!r} (labels must be 0 or 1)")
            labels.setdefault(user_id, int(label))
    if not labels:
        raise JobFailure("NOT_EXIST_FILE", f"{bucket}/{path} holds no row")
    return labels
