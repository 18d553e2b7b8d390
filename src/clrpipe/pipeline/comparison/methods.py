"""The optimizers the comparison and the study train with, built one way for both.

`build_optimizer` is `clrpipe.optimizers.build_optimizer` for a given model (Muon gets the
model's output layers as its AdamW-fallback exclusions); `range_test_task` is one LR range test
with any of those optimizers, as a Ray task body (an adaptive optimizer's sweep, since the
pipeline's `range_test` stage sweeps SGD only).
"""

from __future__ import annotations

import time
from typing import Any

from clrpipe.pipeline.params import ModelParams, RangeTestParams
from clrpipe.pipeline.training import loop
from clrpipe.pipeline.training.trial import SplitArrays

__all__ = ["build_optimizer", "range_test_task"]


def build_optimizer(name: str, learning_rate, model, *, momentum: float = 0.0,
                    group_of=None, **options):
    """`optimizers.build_optimizer` for `model`: Muon gets the model's output layers as its
    AdamW-fallback exclusions (`optimizers.muon_exclusions`), as the benchmark applies it."""
    from clrpipe import optimizers
    if name == "muon" and "exclude_layers" not in options:
        options["exclude_layers"] = optimizers.muon_exclusions(model, group_of)
    return optimizers.build_optimizer(name, learning_rate, momentum=momentum,
                                      group_of=group_of, **options)


def range_test_task(model_params: ModelParams, optimizer: str, config: RangeTestParams,
                    batch_size: int, seed: int, momentum: float, options: dict,
                    split: SplitArrays) -> dict[str, Any]:
    """The range test of `optimizer` on the network built from `seed`: bounds, the batches
    each sweep seed ran (its cost) and each seed's raw curve (lrs, losses)."""
    import keras

    from clrpipe.pipeline.training.model import build_model
    from clrpipe.range_test_runner import run_range_test

    loop.limit_threads(1)
    keras.backend.clear_session()
    started = time.perf_counter()
    model = build_model(model_params, split.x.shape[1], seed, split.output)
    opt = build_optimizer(optimizer, float(config.min_lr), model, momentum=momentum,
                          **options)
    loop.compile_model(model, opt, output=split.output)
    batch = min(batch_size, len(split.x) // 2)
    result = run_range_test(model, split.x, split.y, config, batch_size=batch)
    return {
        "optimizer": optimizer, "base_lr": float(result.base_lr), "max_lr": float(result.max_lr),
        "confident": bool(result.confident), "rule": result.rule, "batch_size": batch,
        "steps": [len(a.curve.losses) for a in result.analyses],
        "curves": [(a.curve.lrs.tolist(), a.curve.losses.tolist()) for a in result.analyses],
        "seconds": time.perf_counter() - started,
    }
