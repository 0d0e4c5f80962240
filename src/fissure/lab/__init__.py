"""The lab: model organisms that show both failure modes of safety training, and their fixes.

A made-up world with its exact judge (:mod:`.world`), staged training (:mod:`.organism`:
capability, then safety tuning), evaluation through a :class:`~fissure.backends.TorchLM` into
the same outcome rows as the probes (:mod:`.evaluate`), and studies that sweep the knobs
(:mod:`.study`, :mod:`.runner`). Reports are built by :mod:`fissure.report.lab`.
"""

from .evaluate import evaluate
from .organism import pretrain, safety_tune
from .runner import run_study
from .study import Stage2Config, Study, builtin_names, load_study
from .world import REFUSAL, World, WorldConfig, WorldJudge

__all__ = ["REFUSAL", "Stage2Config", "Study", "World", "WorldConfig", "WorldJudge", "builtin_names", "evaluate",
           "load_study", "pretrain", "run_study", "safety_tune"]
