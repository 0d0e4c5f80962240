"""The lab: model organisms that show both failure modes of safety training, and their fixes.

A made-up world (:mod:`.world`), staged training (:mod:`.organism`: capability, then safety
tuning), attacks judged exactly (:mod:`.evaluate`), studies that sweep the knobs
(:mod:`.study`, :mod:`.runner`) and a self-contained HTML report (:mod:`.report`).
"""

from .evaluate import evaluate
from .organism import pretrain, safety_tune
from .runner import run_study
from .study import Stage2Config, Study, builtin_names, load_study
from .world import REFUSAL, World, WorldConfig, judge

__all__ = ["REFUSAL", "Stage2Config", "Study", "World", "WorldConfig", "builtin_names", "evaluate", "judge",
           "load_study", "pretrain", "run_study", "safety_tune"]
