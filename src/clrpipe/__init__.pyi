"""Type stub of `clrpipe/__init__.py`, whose names load lazily (PEP 562)."""

from clrpipe.finder import LRFinder as LRFinder
from clrpipe.finder import lr_range_test as lr_range_test
from clrpipe.range_test import RangeTestResult as RangeTestResult
from clrpipe.schedules import ConstantLearningRate as ConstantLearningRate
from clrpipe.schedules import CyclicalLearningRate as CyclicalLearningRate
from clrpipe.schedules import OneCycleLearningRate as OneCycleLearningRate
from clrpipe.schedules import OneCycleMomentum as OneCycleMomentum
from clrpipe.schedules import ScheduledMomentumSGD as ScheduledMomentumSGD

__version__: str
__all__: list[str]
