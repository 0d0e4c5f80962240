"""Probes: jailbreak attacks (competing objectives, mismatched generalization), policies to break,
capability twins, the probe suite and attack-success statistics. Replies are judged by
:mod:`fissure.judges`."""

from .attacks import AttackPrompt, get_attack, list_attacks
from .policies import Policy, load_policy

__all__ = ["AttackPrompt", "Policy", "get_attack", "list_attacks", "load_policy"]
