"""Row index → document, memory-mapped, so serving 21M passages costs no Python objects per row.

The predecessor fetched each hit by indexing a ``datasets`` table row by row. Here the corpus is
written once as two UTF-8 blobs (ids, contents) plus ``int64`` offset arrays; a lookup gathers all
offsets of a batch with one vectorised ``take`` and slices the memory-mapped blobs. Row order is the
corpus order, which is also the dense index order and the BM25 document order.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from search_r1.data.corpus import Doc

FILES = ("ids.bin", "ids.off.npy", "contents.bin", "contents.off.npy")


def write_docstore(docs: Iterable[Doc], out_dir: Path) -> int:
    """Stream ``docs`` into ``out_dir``; returns the number of rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    id_off, c_off = [0], [0]
    with (out_dir / "ids.bin").open("wb") as fi, (out_dir / "contents.bin").open("wb") as fc:
        for d in docs:
            b_id, b_c = d.id.encode("utf-8"), d.contents.encode("utf-8")
            fi.write(b_id)
            fc.write(b_c)
            id_off.append(id_off[-1] + len(b_id))
            c_off.append(c_off[-1] + len(b_c))
    np.save(out_dir / "ids.off.npy", np.asarray(id_off, dtype=np.int64))
    np.save(out_dir / "contents.off.npy", np.asarray(c_off, dtype=np.int64))
    return len(id_off) - 1


def _map(path: Path) -> mmap.mmap | bytes:
    if path.stat().st_size == 0:  # mmap cannot map an empty file
        return b""
    with path.open("rb") as fh:
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


class DocStore:
    """Read-only view of a docstore folder."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        missing = [f for f in FILES if not (self.directory / f).exists()]
        if missing:
            raise FileNotFoundError(f"docstore in {self.directory} is incomplete (missing {missing})")
        self._ids = _map(self.directory / "ids.bin")
        self._contents = _map(self.directory / "contents.bin")
        self._id_off = np.load(self.directory / "ids.off.npy", mmap_mode="r")
        self._c_off = np.load(self.directory / "contents.off.npy", mmap_mode="r")

    def __len__(self) -> int:
        return len(self._id_off) - 1

    def get(self, rows: np.ndarray) -> list[tuple[str, str]]:
        """``(id, contents)`` for each row in a 1-D int array (rows must be in range)."""
        rows = np.asarray(rows, dtype=np.int64)
        i0, i1 = np.take(self._id_off, rows), np.take(self._id_off, rows + 1)
        c0, c1 = np.take(self._c_off, rows), np.take(self._c_off, rows + 1)
        ids, contents = self._ids, self._contents
        return [
            (ids[a:b].decode("utf-8"), contents[c:d].decode("utf-8"))
            for a, b, c, d in zip(i0.tolist(), i1.tolist(), c0.tolist(), c1.tolist(), strict=True)
        ]

    def ids(self, rows: np.ndarray) -> list[str]:
        rows = np.asarray(rows, dtype=np.int64)
        starts, ends = np.take(self._id_off, rows).tolist(), np.take(self._id_off, rows + 1).tolist()
        return [self._ids[a:b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]
