"""FAISS Flat indexes are memory-mapped when served, not read into RAM.

The wiki-18 e5 index is a 61 GB Flat file. It used to be read with ``IO_FLAG_MMAP``, which maps only
inverted lists, so a Flat index was copied into anonymous memory whole (RSS grew by the file size).
Here a ~90 MB Flat index is opened through our loading path in a fresh process, and its RSS growth
must stay far below the file size, both after loading and after a search has touched every vector
(then the pages are file-backed, shared page cache, not anonymous memory).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

from search_r1.paths import REPO_ROOT
from search_r1.retrieval.dense import INDEX_FILE

N, DIM, K = 60_000, 384, 5

CHILD = r"""
import json, sys
from pathlib import Path
import numpy as np

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
from search_r1.retrieval.dense import open_engine  # imported first: its own memory is not the index's

rss0, anon0 = status("VmRSS"), status("RssAnon")
engine = open_engine(Path(sys.argv[1]), engine=sys.argv[2], gpu_devices=[], search_params="")
rss1 = status("VmRSS")
queries = np.load(sys.argv[3])
scores, rows = engine.search(queries, int(sys.argv[4]))
anon2 = status("RssAnon")
print(json.dumps({"load": rss1 - rss0, "anon_after_search": anon2 - anon0, "ntotal": engine.ntotal,
                  "rows": rows.tolist(), "scores": scores.tolist()}))
"""


def _open_in_child(dense_dir: Path, queries_file: Path, engine: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(dense_dir), engine, str(queries_file), str(K)],
        cwd=REPO_ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_flat_index_is_memory_mapped_and_searches_like_a_loaded_one(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    dense_dir = tmp_path / "dense"
    dense_dir.mkdir()
    faiss.write_index(index, str(dense_dir / INDEX_FILE))
    size = (dense_dir / INDEX_FILE).stat().st_size
    assert size > 90e6
    queries = vectors[rng.choice(N, 8, replace=False)] + 0.1 * rng.standard_normal((8, DIM)).astype(
        np.float32
    )
    np.save(tmp_path / "q.npy", queries)
    expected_scores, expected_rows = faiss.read_index(str(dense_dir / INDEX_FILE)).search(queries, K)

    got = _open_in_child(dense_dir, tmp_path / "q.npy", "faiss")
    assert got["ntotal"] == N
    assert got["load"] < 0.1 * size, (
        f"RSS grew by {got['load'] / 1e6:.0f} MB loading a {size / 1e6:.0f} MB index"
    )
    assert got["anon_after_search"] < 0.1 * size, "the vectors were copied into anonymous memory"
    np.testing.assert_array_equal(got["rows"], expected_rows)
    np.testing.assert_allclose(got["scores"], expected_scores, rtol=1e-5)

    # The torch engine over a Flat file (the GPU path without faiss-gpu) reads through the mapping too.
    got = _open_in_child(dense_dir, tmp_path / "q.npy", "torch")
    np.testing.assert_array_equal(got["rows"], expected_rows)
    np.testing.assert_allclose(got["scores"], expected_scores, rtol=1e-4)
