"""Peak resident memory of the real `prepare` and `split` processes on a generated 2M-row
Parquet table (20 numeric columns, a 40-level and a 200k-level text column, a binary target;
379 MB on disk, written in 250k-row groups so the test never holds the whole table): issue
#23's acceptance bound, loose, against a regression back to whole-table loading.

Measured on the 2-core machine (peak RSS of each process, `os.wait4`): reading the table
whole is 1.0 GB with pyarrow (`pq.read_table`) and 1.3 GB with pandas, before any work;
today's `prepare` peaks at 1.98 GB (113 s) and `split` at 4.12 GB (107 s), both loading the
whole table. A stage streaming row groups holds a batch (~50 MB at 250k rows) plus its
per-column state and its imports (`clrpipe params` alone: 45 MB), so `BOUND` (1 GiB) is
loose for that and below any whole-table load. Streaming is not built yet (#23 item 5): the
test is skipped until it is (a strict xfail cost CI a minute), and then guards it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROWS = 2_000_000
GROUP = 250_000
STREETS = 200_000
BOUND = 1024**3  # bytes of peak resident memory per process
HANG = 900  # seconds: a loose guard against a hang, not a timing


def write_table(path: Path, rows: int = ROWS, seed: int = 0) -> None:
    """The generated table, one row group at a time (only one group is ever in memory)."""
    rng = np.random.default_rng(seed)
    cities = pa.array([f"city {i}" for i in range(40)])
    streets = pa.array([f"street {i}" for i in range(STREETS)])
    fields = [pa.field(f"x{i}", pa.float64()) for i in range(20)]
    schema = pa.schema([*fields, pa.field("city", pa.string()),
                        pa.field("street", pa.string()), pa.field("y", pa.int64())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, GROUP):
            n = min(GROUP, rows - start)
            x = rng.normal(size=(n, 20))
            city = rng.integers(0, 40, n)
            y = (x[:, 0] + 0.5 * x[:, 1] + (city < 10) > 0.5).astype(np.int64)
            writer.write_table(pa.table(
                {**{f"x{i}": x[:, i] for i in range(20)}, "city": cities.take(city),
                 "street": streets.take(rng.integers(0, STREETS, n)), "y": y},
                schema=schema))


WRAPPER = (  # runs one process and prints its own peak RSS (RUSAGE_CHILDREN is a running max)
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "print(f'peak_rss_kb={usage.ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def stage_peak(exe: Path, stage: str, cwd: Path) -> int:
    """Peak resident bytes of one real `clrpipe <stage>` process (ru_maxrss is in KiB)."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, str(exe), stage], cwd=cwd,
                          capture_output=True, text=True, timeout=HANG)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("peak_rss_kb=")]
    return int(line.split("=")[1]) * 1024


@pytest.mark.slow
@pytest.mark.skip(reason=(
    "#23 item 5 not built: prepare (1.98 GB) and split (4.12 GB) load the whole 2M-row table; "
    "skipped, not xfailed, to spare CI the minute it takes to fail"))
def test_prepare_and_split_stream_a_2m_row_table_in_bounded_memory(project):
    raw = project / "data" / "raw" / "big.parquet"
    raw.parent.mkdir(parents=True)
    write_table(raw)
    assert pq.ParquetFile(raw).metadata.num_row_groups == ROWS // GROUP
    exe = Path(sys.executable).with_name("clrpipe")
    done = subprocess.run([str(exe), "params", "data=table", "data.raw=data/raw/big.parquet",
                           "data.target=y"], cwd=project, capture_output=True, text=True,
                          timeout=HANG)
    assert done.returncode == 0, done.stderr
    for stage in ("prepare", "split"):
        peak = stage_peak(exe, stage, project)
        assert peak < BOUND, f"{stage}: peak resident memory {peak / 2**20:.0f} MiB"
    split = project / "data" / "split"
    assert pq.ParquetFile(split / "train.parquet").metadata.num_rows == ROWS * 0.8
    assert pq.ParquetFile(split / "test.parquet").metadata.num_rows == ROWS * 0.2
    dataset = json.loads((split / "dataset.json").read_text())
    assert len(dataset["features"]) == 20 + 32 + 32  # street's 200k levels capped at 32
