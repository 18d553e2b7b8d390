"""Build tfa 0.23's CyclicalLearningRate from a clrpipe CyclicalLearningRate config.

Import this module before TensorFlow: it quiets TensorFlow's C++ log and tfa's end-of-life
warning, so that the scripts' JSON output is all that matters on the terminal.
"""

import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore", module="tensorflow_addons")

import tensorflow_addons as tfa  # noqa: E402

CONFIG_KEYS = {
    "initial_learning_rate",
    "maximal_learning_rate",
    "step_size",
    "scale_mode",
    "policy",
    "gamma",
    "name",
}


def tfa_schedule(config: dict):
    """The tfa schedule equal to `clrpipe.schedules.CyclicalLearningRate(**config)`.

    triangular -> TriangularCyclicalLearningRate, triangular2 -> Triangular2CyclicalLearningRate,
    exp_range -> ExponentialCyclicalLearningRate (the named tfa subclasses, not a hand-made
    scale_fn, so the comparison is against tfa's own code).
    """
    unknown = set(config) - CONFIG_KEYS
    if unknown:
        raise SystemExit(f"unknown schedule keys: {sorted(unknown)}")
    policy = config.get("policy", "triangular")
    args = {
        "initial_learning_rate": config["initial_learning_rate"],
        "maximal_learning_rate": config["maximal_learning_rate"],
        "step_size": config["step_size"],
    }
    default_mode = "iterations" if policy == "exp_range" else "cycle"
    args["scale_mode"] = config.get("scale_mode") or default_mode
    if policy == "triangular":
        return tfa.optimizers.TriangularCyclicalLearningRate(**args)
    if policy == "triangular2":
        return tfa.optimizers.Triangular2CyclicalLearningRate(**args)
    if policy == "exp_range":
        return tfa.optimizers.ExponentialCyclicalLearningRate(
            **args, gamma=config.get("gamma", 1.0)
        )
    raise SystemExit(f"unknown policy: {policy!r}")
