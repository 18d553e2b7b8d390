"""A team's tracking server under load: `clrpipe server` on PostgreSQL against on SQLite.

For each backend, `--writers` processes at once (default 8; a DVC queue with `-j 2` plus a
`compare` fanning trials out on Ray is that many) each create a run, log `--points` values of
one metric one call at a time (a training loop's per-epoch logging) and end it FINISHED; then
every point is read back. Printed per backend: logging throughput (points per second over the
whole burst, process start excluded), per-call latency (median, 95th percentile, max), lost or
duplicated points and runs not FINISHED. The same writer is `tests/test_team_load.py`'s.

    python3 -m uv run --frozen python bench/tracking_load.py            # ~2 min on 2 cores
    python3 -m uv run --frozen python bench/tracking_load.py --writers 16 --points 100
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import team_store


def _warm(url: str) -> None:
    """Import mlflow in a pool worker before the clock starts."""
    from mlflow.tracking import MlflowClient

    MlflowClient(url).search_experiments(max_results=1)


def burst(url: str, writers: int, points: int) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment_id = client.create_experiment(f"load-{time.time_ns()}")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(writers, mp_context=context) as pool:
        list(pool.map(_warm, [url] * writers))
        start = time.perf_counter()
        done = list(pool.map(team_store.writer, [url] * writers, [experiment_id] * writers,
                             range(writers), [points] * writers))
        seconds = time.perf_counter() - start
    latencies = sorted(x for d in done for x in d["latencies"])
    runs = client.search_runs([experiment_id])
    lost = 0
    for run in runs:
        index = int(run.data.params["writer"])
        got = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
        want = [(step, team_store.value(index, step)) for step in range(points)]
        lost += len(set(want) ^ set(got)) + len(got) - len(set(got))
    return {
        "points_per_s": writers * points / seconds,
        "latency_median_ms": 1000 * statistics.median(latencies),
        "latency_p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "latency_max_ms": 1000 * latencies[-1],
        "lost_or_duplicated": lost,
        "not_finished": sum(run.info.status != "FINISHED" for run in runs) + writers - len(runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--points", type=int, default=50)
    parser.add_argument("--server-workers", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp, team_store.postgres() as pg:
        stores = {"postgresql": pg.uri, "sqlite": f"sqlite:///{Path(tmp) / 'mlflow.db'}"}
        for backend, uri in stores.items():
            with team_store.tracking_server(uri, Path(tmp) / backend,
                                            workers=args.server_workers) as url:
                results[backend] = burst(url, args.writers, args.points)
    print(f"{args.writers} writers x {args.points} points, server --workers "
          f"{args.server_workers}, {os.cpu_count()} cores, load average {load:.1f} at start")
    print("| store | points/s | latency median ms | p95 ms | max ms | lost or duplicated | "
          "runs not FINISHED |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for backend, r in results.items():
        print(f"| {backend} | {r['points_per_s']:.0f} | {r['latency_median_ms']:.1f} | "
              f"{r['latency_p95_ms']:.1f} | {r['latency_max_ms']:.0f} | "
              f"{r['lost_or_duplicated']} | {r['not_finished']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
