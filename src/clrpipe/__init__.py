"""clrpipe: find good learning rates, then train with them, tracked and reproducible.

The library API (the pipeline's stages and `clrpipe` command use the same code):

- `lr_range_test(model, x, y, ...)`: the LR range test on any compiled Keras 3 model, leaving
  it exactly as it was; returns a `RangeTestResult` (`base_lr`, `max_lr`, `suggestions`,
  `confident`, `plot()`).
- `LRFinder(...)`: the same sweep as a callback for your own `model.fit`.
- `CyclicalLearningRate`, `OneCycleLearningRate`, `OneCycleMomentum`, `ConstantLearningRate`,
  `ScheduledMomentumSGD`: Keras LR schedules (tfa-exact CLR) and the SGD that cycles momentum.

```python
import keras
from clrpipe import lr_range_test, CyclicalLearningRate
result = lr_range_test(model, x, y, batch_size=64)
model.compile(optimizer=keras.optimizers.Adam(CyclicalLearningRate(
    result.base_lr, result.max_lr, step_size=4 * len(x) // 64)), loss=model.loss)
```

`import clrpipe` imports nothing heavy: each name is loaded on first use (PEP 562), so Keras
and TensorFlow are imported by `from clrpipe import lr_range_test`, not by `import clrpipe`;
MLflow, DVC and Ray only by the pipeline modules that use them. Type checkers read the
names from `__init__.pyi`; the pipeline's stages never import `clrpipe.finder` (their DVC
dependencies, derived from the imports in `tests/dvc_graph.py`, stay as they were).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ConstantLearningRate",
    "CyclicalLearningRate",
    "LRFinder",
    "OneCycleLearningRate",
    "OneCycleMomentum",
    "RangeTestResult",
    "ScheduledMomentumSGD",
    "lr_range_test",
]

_LAZY = {
    "lr_range_test": "clrpipe.finder",
    "LRFinder": "clrpipe.finder",
    "RangeTestResult": "clrpipe.range_test",
    "CyclicalLearningRate": "clrpipe.schedules",
    "OneCycleLearningRate": "clrpipe.schedules",
    "OneCycleMomentum": "clrpipe.schedules",
    "ConstantLearningRate": "clrpipe.schedules",
    "ScheduledMomentumSGD": "clrpipe.schedules",
}

def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clrpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
