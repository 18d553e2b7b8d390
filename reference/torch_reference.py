"""Run the PyTorch reference optimizers on given weights and gradients: npz in, npz out.

    reference/.venv/bin/python reference/torch_reference.py IN.npz OUT.npz

IN holds `cases`, a JSON list of {"optimizer": "schedulefree" | "prodigy", "options": {...}},
and for case c its initial weights `c{c}_w{i}`, and for the gradients a curvature `c{c}_h{i}`,
a target `c{c}_t{i}` and a noise sequence `c{c}_g{i}` (steps x the weight's shape): at step t
the gradient is h * (w - target) + noise[t], a quadratic with noise (h = 0: a fixed sequence).
A gradient that answers the weights keeps Prodigy's d finite; fixed gradients make it grow
without bound. OUT holds, per case, the weights after every step `c{c}_y{i}` (steps x
shape, the training iterate), the weights the optimizer evaluates with after the last step
`c{c}_x{i}` (schedule-free's `eval()` average; the iterate otherwise) and Prodigy's d after
every step `c{c}_d`. Versions are in `versions` (JSON). Built by reference/requirements.txt;
driven by tests/test_optimizers_parity.py.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version

import numpy as np
import prodigyopt
import schedulefree
import torch


def _optimizer(kind: str, params, options: dict):
    if kind == "schedulefree":
        return schedulefree.AdamWScheduleFree(params, **options)
    if kind == "prodigy":
        return prodigyopt.Prodigy(params, **options)
    raise SystemExit(f"unknown optimizer {kind!r}")


def run_case(case: dict, weights: list[np.ndarray], curvatures: list[np.ndarray],
             targets: list[np.ndarray], noise: list[np.ndarray]) -> dict:
    params = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float32)) for w in weights]
    optimizer = _optimizer(case["optimizer"], params, case.get("options", {}))
    steps = len(noise[0])
    curvatures = [torch.tensor(h, dtype=torch.float32) for h in curvatures]
    targets = [torch.tensor(x, dtype=torch.float32) for x in targets]
    trajectory = [np.empty((steps, *w.shape), np.float32) for w in weights]
    ds = np.empty(steps, np.float64)
    if hasattr(optimizer, "train"):
        optimizer.train()
    for t in range(steps):
        for p, h, target, g in zip(params, curvatures, targets, noise, strict=True):
            p.grad = h * (p.detach() - target) + torch.tensor(g[t], dtype=torch.float32)
        optimizer.step()
        for i, p in enumerate(params):
            trajectory[i][t] = p.detach().numpy()
        ds[t] = optimizer.param_groups[0].get("d", np.nan)
    if hasattr(optimizer, "eval"):
        optimizer.eval()
    evaluated = [p.detach().numpy().copy() for p in params]
    return {"y": trajectory, "x": evaluated, "d": ds}


def main(source: str, target: str) -> None:
    torch.set_num_threads(1)
    given = np.load(source)
    cases = json.loads(str(given["cases"]))
    out: dict[str, np.ndarray] = {}
    for c, case in enumerate(cases):
        count = sum(1 for key in given.files if key.startswith(f"c{c}_w"))
        weights = [given[f"c{c}_w{i}"] for i in range(count)]
        done = run_case(case, weights, *([given[f"c{c}_{part}{i}"] for i in range(count)]
                                         for part in "htg"))
        for i in range(count):
            out[f"c{c}_y{i}"] = done["y"][i]
            out[f"c{c}_x{i}"] = done["x"][i]
        out[f"c{c}_d"] = done["d"]
    out["versions"] = np.array(json.dumps({
        name: version(name) for name in ("torch", "schedulefree", "prodigyopt", "numpy")}))
    np.savez(target, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
