"""Bad files for every file input: malformed, truncated, binary, huge and wrongly encoded sequence
files (Features), answer files (Tasks), panel files (operator import) and AEP ingestion batches (JSON
lines, multi-line JSON, CSV, Parquet). Each gets its documented code, and the worker goes on: a good
input queued after the bad ones completes. Cases already covered elsewhere (EUC-KR and Shift-JIS
sequences, gzip/zip, wrong labels, header-only answer files, rejected XDM rows) are not repeated."""

from __future__ import annotations

import gzip
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_fsck import PROFILE, Aep, jsonl

from userlens.understanding import sequences

GOOD_SEQ = "".join(f"u{i}\tcoffee->shoes->sale\n" for i in range(5))
HUGE = 64 * 1024  # the line limit in these tests (16 MiB in production): a longer line is not text


@pytest.fixture
def small_lines(monkeypatch):
    monkeypatch.setattr(sequences, "MAX_LINE_BYTES", HUGE)


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


# Text inputs read by the NCLUE line reader (sequence, answer and panel files): (name, bytes, code).
def text_cases(good_line: str, header: str = "") -> list[tuple[str, bytes, str]]:
    body = header + "".join(good_line.format(i=i) for i in range(3))
    return [
        ("utf-16 with a byte order mark", body.encode("utf-16"), "UNEXPECTED_TXT_FORMAT"),
        ("utf-16 without a byte order mark", body.encode("utf-16-le"), "UNEXPECTED_TXT_FORMAT"),
        ("utf-16 big endian", body.encode("utf-16-be"), "UNEXPECTED_TXT_FORMAT"),
        ("latin-1", body.encode() + "caf\u00e9\tcr\u00e8me\n".encode("latin-1"), "UNEXPECTED_TXT_FORMAT"),
        ("truncated in a UTF-8 character", (body + "\uc2a4\ud0c0\ubc85\uc2a4").encode()[:-1], "UNEXPECTED_TXT_FORMAT"),
        ("truncated in a line", body.encode() + b"u99", "UNEXPECTED_TXT_FORMAT"),
        ("a line over the limit", body.encode() + b"u9\t" + b"x->" * (HUGE // 3 + 10) + b"\n", "UNEXPECTED_TXT_FORMAT"),
        ("a line that never ends", b"u9\t" + b"x" * (HUGE * 3), "UNEXPECTED_TXT_FORMAT"),
        ("NUL bytes past the first 4 KiB", (header + "".join(good_line.format(i=i) for i in range(1000))).encode() + b"u9\tx\x00y\n", "UNEXPECTED_FILE_TYPE"),
        ("a Parquet file", parquet_bytes(pa.table({"user_id": ["a"], "seq": ["x"]})), "UNEXPECTED_FILE_TYPE"),
        ("bzip2", b"BZh91AY&SY" + bytes(range(40)), "UNEXPECTED_FILE_TYPE"),
        ("random binary", bytes((i * 7919) % 251 + 1 for i in range(3000)) + b"\x00", "UNEXPECTED_FILE_TYPE"),
        ("only a UTF-8 byte order mark", b"\xef\xbb\xbf\n", "NOT_EXIST_FILE"),
    ]


def test_sequence_files(nclue, small_lines):
    c = nclue.client
    cases = text_cases("u{i}\tcoffee->shoes\n")
    ids = []
    for i, (name, data, _) in enumerate(cases):
        nclue.put(f"bad/{i}.csv", data)
        ids.append(c.post("/api/v1/features", {"name": f"bad{i}", "source_bucket": nclue.bucket, "source_file_path": f"bad/{i}.csv"})["feature_id"])
    nclue.put("good.csv", GOOD_SEQ)
    good = c.post("/api/v1/features", {"name": "good", "source_bucket": nclue.bucket, "source_file_path": "good.csv"})["feature_id"]
    nclue.run_jobs()
    got = {name: (c.get(f"/api/v1/features/{fid}")["fail_message"]) for (name, _, _), fid in zip(cases, ids)}
    assert got == {name: code for name, _, code in cases}
    f = c.get(f"/api/v1/features/{good}")
    assert (f["status"], f["user_count"]) == ("completed", 5)


def test_answer_files(nclue, small_lines):
    c = nclue.client
    nclue.put("good.csv", GOOD_SEQ)
    fid = c.post("/api/v1/features", {"name": "f", "source_bucket": nclue.bucket, "source_file_path": "good.csv"})["feature_id"]
    nclue.run_jobs()
    cases = text_cases("u{i}\t1\n") + [
        ("gzip", gzip.compress(b"u1\t1\n"), "UNEXPECTED_FILE_TYPE"),
        ("a label in another encoding", "u1\t1\nu2\t\uff11\n".encode("utf-8"), "UNEXPECTED_LABEL"),
    ]
    ids = []
    for i, (name, data, _) in enumerate(cases):
        nclue.put(f"answers/{i}.csv", data)
        r = c.raw("POST", "/api/v1/tasks", body={"name": f"t{i}", "train_feature_id": fid, "train_bucket": nclue.bucket, "train_file_path": f"answers/{i}.csv"})
        assert r.status_code == 200, (name, r.text)
        ids.append(r.json()["task_id"])
    nclue.run_jobs()
    got = {name: c.get(f"/api/v1/tasks/{tid}")["fail_message"] for (name, _, _), tid in zip(cases, ids)}
    assert got == {name: code for name, _, code in cases}


def test_panel_files(nclue, small_lines):
    from userlens.understanding.panels import HEADER, PanelImportError

    header = "\t".join(HEADER) + "\n"
    panels = nclue.svc.panels
    nclue.put("panel/seq.csv", GOOD_SEQ)
    nclue.put("panel/attrs.tsv", header + "".join(f"u{i}\tF\t20s\tshoes\n" for i in range(5)))
    cases = [("sequences: " + n, d, code, "seq") for n, d, code in text_cases("u{i}\tcoffee->shoes\n")]
    cases += [("attributes: " + n, d, code, "attrs") for n, d, code in text_cases("u{i}\tF\t20s\tshoes\n", header)]
    for i, (name, data, code, which) in enumerate(cases):
        nclue.put(f"panel/bad{i}", data)
        seq, attrs = ("panel/seq.csv", "panel/attrs.tsv")
        with pytest.raises(PanelImportError) as err:
            panels.import_panel(f"p{i}", nclue.bucket, f"panel/bad{i}" if which == "seq" else seq, f"panel/bad{i}" if which == "attrs" else attrs)
        assert str(err.value.details).startswith(code), (name, err.value.details)
    assert panels.import_panel("good", nclue.bucket, "panel/seq.csv", "panel/attrs.tsv").user_count == 5
    assert not [o for o in nclue.store.list(nclue.settings.internal_bucket, "panels") if "builtin" not in o.key and not o.key.startswith(panels.active(nclue.settings.nclue_model).prefix)]


def person(i: int) -> dict:
    return {"identityMap": {"crm": [{"id": f"p{i}", "primary": True}]}, "person": {"name": f"n{i}"}}


def csv_row(pid: str, name: str) -> str:
    return f'"{{""crm"": [{{""id"": ""{pid}"", ""primary"": true}}]}}",{name}\n'


def csv_rows(n: int) -> bytes:
    return ("identityMap,person.name\n" + "".join(csv_row(f"p{i}", f"n{i}") for i in range(n))).encode()


def good_parquet(n: int = 20) -> bytes:
    return parquet_bytes(pa.Table.from_pylist([person(i) for i in range(n)]))


def corrupt_pages(data: bytes) -> bytes:
    """Damages the column data behind a valid footer."""
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    start = min(meta.row_group(0).column(j).data_page_offset for j in range(meta.num_columns))
    b = bytearray(data)
    for k in range(start, min(start + 200, len(b) - meta.serialized_size - 8)):
        b[k] = 0xFF
    return bytes(b)


# AEP ingestion: (name, format, isMultiLineJson, bytes, batch status, error codes that must be listed)
def batch_cases() -> list[tuple[str, str, bool, bytes, str, set[str]]]:
    good = jsonl(person(i) for i in range(20))
    return [
        ("json: a latin-1 row", "json", False, good + '{"identityMap": {"crm": [{"id": "z", "primary": true}]}, "person": {"name": "Ren\u00e9e"}}\n'.encode("latin-1"), "success", {"INGEST-1207-400"}),
        ("json: utf-16", "json", False, good.decode().encode("utf-16"), "failed", {"INGEST-1299-400", "INGEST-1207-400"}),
        ("json: truncated", "json", False, good + b'{"identityMap": {"crm": [{"id": "z", "pri', "success", {"INGEST-1207-400"}),
        ("json: gzip", "json", False, gzip.compress(good), "failed", {"INGEST-1299-400", "INGEST-1207-400"}),
        ("json: a huge line", "json", False, good + json.dumps({**person(99), "blob": "x" * 200_000}).encode() + b"\n", "success", {"INGEST-1206-400"}),
        ("multi-line json: latin-1", "json", True, json.dumps([person(1), {"n": "Ren\u00e9e"}], ensure_ascii=False).encode("latin-1"), "failed", {"INGEST-1299-400", "INGEST-1207-400"}),
        ("multi-line json: truncated", "json", True, json.dumps([person(i) for i in range(5)]).encode()[:-7], "failed", {"INGEST-1299-400", "INGEST-1207-400"}),
        ("csv: a latin-1 row", "csv", False, csv_rows(20) + csv_row("z", "Ren\u00e9e").encode("latin-1"), "success", {"INGEST-1207-400"}),
        ("csv: a field over 128 KiB", "csv", False, csv_rows(20) + csv_row("z", "x" * 140_000).encode(), "failed", {"INGEST-1290-400"}),
        ("csv: utf-16", "csv", False, csv_rows(20).decode().encode("utf-16"), "failed", {"INGEST-1299-400"}),
        ("csv: binary", "csv", False, bytes(range(256)) * 8, "failed", {"INGEST-1299-400"}),
        ("parquet: truncated", "parquet", False, good_parquet()[:-100], "failed", {"INGEST-1290-400"}),
        ("parquet: not parquet", "parquet", False, good, "failed", {"INGEST-1290-400"}),
        ("parquet: damaged pages", "parquet", False, corrupt_pages(good_parquet(500)), "failed", {"INGEST-1290-400"}),
        ("parquet: empty file", "parquet", False, b"", "failed", {"INGEST-1290-400"}),
    ]


def test_ingestion_batches(nclue):
    aep = Aep(nclue)
    ds = aep.dataset("people", PROFILE)
    cases = batch_cases()
    ids = []
    for name, fmt, multi, data, _, _ in cases:
        bid = aep.call("POST", "/data/foundation/import/batches", {"datasetId": ds, "inputFormat": {"format": fmt, **({"isMultiLineJson": True} if multi else {})}})["id"]
        aep.call("PUT", f"/data/foundation/import/batches/{bid}/datasets/{ds}/files/f.{fmt}", content=data)
        aep.call("POST", f"/data/foundation/import/batches/{bid}", params={"action": "COMPLETE"}, expect=(200,))
        ids.append(bid)
    good = aep.batch(ds, jsonl(person(i) for i in range(100, 110)))
    nclue.run_jobs()
    got, want = {}, {}
    for (name, _, _, _, status, codes), bid in zip(cases, ids):
        b = aep.get_batch(bid)
        listed = {e["code"] for e in b.get("errors") or []}
        got[name] = (b["status"], codes <= listed, "COMMON_ERROR" in listed)
        want[name] = (status, True, False)
    assert got == want, {bid: aep.get_batch(bid).get("errors") for bid in ids}
    assert aep.get_batch(good)["status"] == "success"
    # The accepted rows of the partly bad batches are stored, with the bad rows counted.
    latin = aep.get_batch(ids[0])
    assert (latin["recordCount"], latin["failedRecordCount"]) == (20, 1)
