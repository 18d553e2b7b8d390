"""Print tfa 0.23 CyclicalLearningRate values as JSON.

One case from flags:
    python tfa_values.py --initial 1e-4 --maximal 1e-2 --step-size 320 --policy triangular2 \
        --scale-mode cycle --steps 1000
or many cases at once (one interpreter start) from a JSON list on stdin:
    echo '[{"schedule": {...clrpipe CyclicalLearningRate config...}, "steps": 5000}]' \
        | python tfa_values.py --batch -
Output: {"tensorflow": ..., "tensorflow_addons": ..., "values": [[lr at step 0, 1, ...], ...]}.

`step_kind` "array" (default) calls the schedule once on a numpy int64 array of steps;
"int" calls it once per step with a Python int, as tfa's own tests do. Both give the scale
function a plain number, the only input tfa 0.23 accepts for triangular2/exp_range in
scale_mode "iterations" (an int tensor step raises TypeError there, tensorflow/addons#2756).
"""

from tfa_common import tfa_schedule  # isort: skip  (before TensorFlow, to quiet it)

import argparse
import json
import sys

import numpy as np
import tensorflow as tf
import tensorflow_addons


def values(case: dict) -> list[float]:
    """The schedule's float32 values at steps 0..steps-1, as exact Python floats."""
    schedule = tfa_schedule(case["schedule"])
    steps = np.arange(case["steps"], dtype=np.int64)
    if case.get("step_kind", "array") == "int":
        return [float(schedule(int(step)).numpy()) for step in steps]
    return schedule(steps).numpy().astype(np.float64).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", help="read a JSON list of cases from this file ('-': stdin)")
    parser.add_argument("--initial", type=float, default=1e-4)
    parser.add_argument("--maximal", type=float, default=1e-2)
    parser.add_argument("--step-size", type=float, default=2000)
    parser.add_argument("--policy", default="triangular")
    parser.add_argument("--scale-mode", default=None)
    parser.add_argument("--gamma", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--step-kind", choices=("array", "int"), default="array")
    args = parser.parse_args()
    if args.batch:
        with open(0 if args.batch == "-" else args.batch) as stream:
            cases = json.load(stream)
    else:
        schedule = {
            "initial_learning_rate": args.initial,
            "maximal_learning_rate": args.maximal,
            "step_size": args.step_size,
            "policy": args.policy,
            "scale_mode": args.scale_mode,
            "gamma": args.gamma,
        }
        cases = [{"schedule": schedule, "steps": args.steps, "step_kind": args.step_kind}]
    json.dump(
        {
            "tensorflow": tf.__version__,
            "tensorflow_addons": tensorflow_addons.__version__,
            "values": [values(case) for case in cases],
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
