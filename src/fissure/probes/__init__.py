"""Probes: jailbreak attacks (competing objectives, mismatched generalization), policies to
break, canonicalisation of encoded replies, three-way judges and attack-success statistics."""

from .attacks import AttackPrompt, get_attack, list_attacks
from .canonical import canonicalise
from .judges import Verdict, judge
from .policies import Policy, load_policy

__all__ = ["AttackPrompt", "Policy", "Verdict", "canonicalise", "get_attack", "judge", "list_attacks",
           "load_policy"]
