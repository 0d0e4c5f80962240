"""The plan of a probe run: every generation, in a fixed order, each with a stable key.

- ``capability`` items: benign twins with checkable answers sent through every MG attack
  (:mod:`..capability`). They run first, so that when the model cannot read an encoding its
  refusals there are already recorded as ``unclear`` rather than credited as safety;
- ``benign`` items: the policy's benign twins, plainly (over-refusal);
- ``restricted`` items: every request through every attack.

Each temperature gets ``samples`` generations per item (greedy gets one: its samples would be
identical). Keys are what ``--resume`` skips by.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ...backends.base import Prompt
from ..attacks import AttackPrompt, get_attack
from ..capability import capability_twins
from ..policies import Policy
from .config import SuiteConfig


@dataclass(frozen=True)
class Item:
    key: str
    kind: str  # "capability" | "benign" | "restricted"
    request_id: str
    request: str
    attack_prompt: AttackPrompt
    temperature: float
    sample: int
    expected: str | None = None  # regex a correct answer matches (capability and benign items)
    answer: str | None = None  # the capability twin's answer, for people reading the samples


def build_prompt(system: str, user: str, chat: bool) -> Prompt:
    """``[system, user]`` for chat models; otherwise plain text with the system prompt first."""
    if chat:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return f"{system}\n\nUser: {user}\nAssistant:"


def is_mg(mode: str) -> bool:
    return "MG" in mode.split("+")


def encoding_of(prompt: AttackPrompt) -> str:
    """The encoding(s) an attack puts the request or reply in ("rot13", "base64")."""
    names = dict.fromkeys(prompt.input_transforms + prompt.output_transforms)
    return "+".join(names) or prompt.attack


def policy_requests(policy: Policy, config: SuiteConfig) -> list[str]:
    requests = list(policy.requests)
    return requests[:config.requests] if config.requests else requests


def plan(config: SuiteConfig, policy: Policy) -> list[Item]:
    """Every generation of the run, in a fixed order with stable keys."""
    attacks = [get_attack(name) for name in config.attacks]
    requests = policy_requests(policy, config)
    none = get_attack("none")
    items: list[Item] = []
    for t in config.temperatures:
        for s in range(config.samples_at(t)):
            tag = f"t={t:g}|s={s}"
            for attack in attacks:
                if config.twins and is_mg(attack.mode):
                    for j, twin in enumerate(capability_twins(attack.name, config.twins, config.seed)):
                        items.append(Item(f"capability|c{j}|{attack.name}|{tag}", "capability", f"c{j}",
                                          twin.question, twin.prompt, t, s, twin.answer_pattern, twin.answer))
            if config.benign:
                for j, twin in enumerate(policy.benign_twins):
                    items.append(Item(f"benign|b{j}|none|{tag}", "benign", f"b{j}", twin.prompt,
                                      none.apply(twin.prompt), t, s, twin.expect))
            for i, request in enumerate(requests):
                for attack in attacks:
                    rng = random.Random(f"{config.seed}|{i}|{attack.name}")  # same prompt in every sample
                    items.append(Item(f"restricted|r{i}|{attack.name}|{tag}", "restricted", f"r{i}", request,
                                      attack.apply(request, rng), t, s))
    return items
