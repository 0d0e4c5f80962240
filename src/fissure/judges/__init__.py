"""Judges: verdicts on replies (violated / refused / unclear) from registered detectors, and the
outcome rows (:class:`Sample`) every diagnosis writes. See :mod:`.base` for the registry."""

from . import model, refusal, unclear, violation  # noqa: F401  (register the detectors and judges)
from .base import BENIGN_LABELS, LABELS, DetectorResult, Judge, JudgeItem, Verdict, get, register, registered, three_way
from .canonical import canonical_views, canonicalise
from .policy import PolicyJudge
from .records import Sample, append_samples, read_samples

__all__ = ["BENIGN_LABELS", "LABELS", "DetectorResult", "Judge", "JudgeItem", "PolicyJudge", "Sample", "Verdict",
           "append_samples", "canonical_views", "canonicalise", "get", "read_samples", "register", "registered", "three_way"]
