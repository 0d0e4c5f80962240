"""The probe judge: a policy's violation detector, then two refusal detectors, on the canonical reply.

The violation detector reads every canonical view of the reply (a leak is a leak in any
encoding, even inside a refusal); the refusal detectors (:mod:`.refusal`) read the canonical
reply, with the attack's forced prefix stripped and its encodings undone; the unclear detectors
(:mod:`.unclear`) say whether the reply loops, hints at the protected value, restates the request
or answers something else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .base import DetectorResult, Judge, JudgeItem, Verdict, register, three_way
from .canonical import ReadingHints, canonical_views
from .refusal import refusal_anchored, refusal_lexicon
from .unclear import degenerate, echoes_request, hints_at, off_topic


class HasViolationDetector(Protocol):
    def check(self, views: Sequence[str]) -> DetectorResult: ...  # and optionally partial(views) -> str | None


@register("policy", "judge")
class PolicyJudge(Judge):
    """A policy's violation detector on every canonical view, then the anchored and lexicon refusal rules."""

    name = "policy"

    def __init__(self, policy: HasViolationDetector):
        self.policy = policy

    def describe(self) -> dict:
        return {"judge": "rules"}

    def judge_many(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        return [self.one(*item) for item in items]

    def one(self, reply: str, hints: ReadingHints | None = None, request: str | None = None) -> Verdict:
        """The verdict on ``reply``; ``request`` (the plain request) lets it tell a reply that only
        restates the request (``misunderstood``) or answers another question (``off_topic``)."""
        views = canonical_views(reply, hints)
        canon = views[0]
        return three_way(canon, self.policy.check(views), (refusal_anchored(canon), refusal_lexicon(canon, request)),
                         (degenerate(canon), hints_at(self.policy, views), echoes_request(canon, request),
                          off_topic(canon, request)))
