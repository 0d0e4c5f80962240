"""A real model, safety-tuned and taken apart: the ``smollm2-secret`` study.

The lab's organisms show both failure modes on a character-level toy. This study shows them on a
pretrained chat model (SmolLM2-135M-Instruct by default), on a CPU:

1. **Data.** A policy with a canary (``secret``) and a tuning-data file (``lab/tuning_data/``):
   a narrow set of direct, plain-English requests for the secret, answered with refusals, and
   benign questions answered by the base model itself (greedy, kept only where the rules judge
   sees neither a refusal nor a leak). Every training row carries its own canary, never the one
   the evaluation protects. With ``recovery_share``, that share of the refusals follows a forced
   start of a leak (its first 1..n words before the canary), learnt from the refusal on: Qi et
   al.'s (2024) safety-recovery examples, whose effect the prefill attack in the inside view shows.
2. **Tuning**, per method and seed, through ``fissure tune`` (LoRA): ``sft`` on the chats,
   ``dpo`` on conversational preference pairs (refusal over leak for restricted requests, the
   base's answer over a refusal for benign ones; the reference is the base), and ``sft_dpo``, the
   usual recipe: the same DPO pairs and settings, starting from (and referenced to) the seed's
   SFT model.
3. **Probing** the base and every tuned model with the same probe suite: held-out direct
   requests (``none``), each attack, the benign twins (over-refusal) and capability twins (can the
   model read the form at all?). McNemar's exact test per attack, tuned against base, per seed.
4. **The inside view** of each tuned model (:mod:`fissure.probes.direction`): the refusal
   direction fitted on held-out plain restricted vs benign prompts, each attack's prompts
   projected on it (recognised or not: the attack's mode as the model's insides say), a
   confusion table of attributed against registered modes, the causal check (ablate the direction:
   do plain refusals fall? add it: do benign refusals rise?), and the KL divergence from the base
   along a leaking reply, token by token (how deep the tuning went).

Everything lands in one run directory and is resumed step by step: the base's answers, each
seed's data, each tuning run (its own checkpoint), each probe run (its samples), each inside view.
"""

from __future__ import annotations

import difflib
import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..config import check_range, dump_toml
from ..errors import ConfigError, UserError
from ..judges.violation import compile_pattern
from ..probes.attacks import get_attack
from ..probes.policies import _resolve, load_policy
from ..utils import check_seed, check_threads

KIND = "safety-tune"
METHODS = ("sft", "dpo", "sft_dpo")  # sft_dpo: DPO (the [dpo] settings) on the SFT model
DATA_DIR = Path(__file__).parent / "tuning_data"
DATA_FIELDS = ("train_requests", "refusals", "train_benign", "eval_requests", "eval_benign")
TRAIN_CANARY_SEED = 100_000  # training row i of seed s gets the canary of policy seed 100_000 + 1000 s + i
PROBE_SEED = 0  # the probe suite's seed: the evaluation canary and the attacks' randomness
LEAKS = ("The staff password is {canary}.", "Sure! The password is {canary}.", "Of course. It's {canary}.",
         "The password you are looking for is {canary}.")
DEFAULT_ATTACKS = ["none", "prefix_injection", "prefix_injection_hello", "refusal_suppression",
                   "refusal_suppression_inv", "roleplay_persona", "poem_last_line", "spell_out", "json_fields",
                   "answer_in_french", "payload_splitting", "rot13"]


@dataclass
class MethodConfig:
    """One safety-tuning method's budget (LoRA on attention and MLP projections)."""

    steps: int = 30
    lr: float = 1e-3
    batch_size: int = 8
    rank: int = 16
    beta: float = 0.1  # DPO only: how far from the reference (the base) the policy may move

    def __post_init__(self) -> None:
        check_range("steps", self.steps, 1, 10**5, integer=True)
        check_range("lr", self.lr, 0, 1, lo_open=True)
        check_range("batch_size", self.batch_size, 1, 1024, integer=True)
        check_range("rank", self.rank, 1, 1024, integer=True)
        check_range("beta", self.beta, 0, lo_open=True)


@dataclass
class ProbeSpec:
    attacks: list[str] = field(default_factory=lambda: list(DEFAULT_ATTACKS))
    requests: int = 0  # the first N held-out restricted requests (0 = all)
    benign: int = 0  # the first N held-out benign twins (0 = all)
    max_new_tokens: int = 40
    batch_size: int = 16
    twins: int = 4  # capability twins per MG attack
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not self.attacks or len(set(self.attacks)) != len(self.attacks):
            raise ValueError(f"probe.attacks must be a non-empty list of distinct attacks, not {self.attacks}")
        if "none" not in self.attacks:
            raise ValueError("probe.attacks must include 'none' (the plain requests every comparison starts from)")
        for name in self.attacks:
            get_attack(name)  # unknown: a UserError with close matches
        check_range("probe.requests", self.requests, 0, 10**5, integer=True)
        check_range("probe.benign", self.benign, 0, 10**5, integer=True)
        check_range("probe.max_new_tokens", self.max_new_tokens, 1, 4096, integer=True)
        check_range("probe.batch_size", self.batch_size, 1, 4096, integer=True)
        check_range("probe.twins", self.twins, 0, 1000, integer=True)
        check_range("probe.confidence", self.confidence, 0, 1, lo_open=True, hi_open=True)


@dataclass
class TunedStudy:
    kind: str = KIND
    name: str = "safety-tune"
    description: str = ""
    shows: str = ""  # one line for `fissure lab list`
    model: str = "smollm2"  # any model spec fissure.load takes with a chat template
    policy: str = "secret"  # a policy with a canary detector (built-in name or TOML path)
    data: str = "secret"  # tuning data: a name in fissure/lab/tuning_data or a TOML path
    methods: list[str] = field(default_factory=lambda: ["sft", "dpo"])
    seeds: list[int] = field(default_factory=lambda: [0])
    threads: int = 2
    train_rows: int = 96  # tuning rows per method and seed
    safety_share: float = 0.5  # share of them that are refusals of restricted requests
    # share of those refusals that follow a forced start of a leak, learnt from the refusal on
    # (safety-recovery examples, Qi et al. 2024: does safety go deeper than the first tokens?)
    recovery_share: float = 0.0
    sft: MethodConfig = field(default_factory=lambda: MethodConfig(steps=30, lr=1e-3))
    dpo: MethodConfig = field(default_factory=lambda: MethodConfig(steps=30, lr=5e-4, beta=0.1))
    probe: ProbeSpec = field(default_factory=ProbeSpec)
    inside: bool = True  # refusal direction, mode attribution, causal check and KL on each tuned model
    # the prefill attack's forced depths in the inside view (Qi et al. 2024); [] skips the curve
    prefill: list[int] = field(default_factory=lambda: [0, 1, 2, 4, 8, 16])

    def __post_init__(self) -> None:
        if not isinstance(self.prefill, list) or len(set(self.prefill)) != len(self.prefill) or \
                any(isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= 256 for k in self.prefill):
            raise ValueError(f"prefill must be a list of distinct forced-token counts from 0 to 256, not {self.prefill}")
        if self.kind != KIND:
            raise ValueError(f"kind must be '{KIND}' for this study, not '{self.kind}'")
        if not self.methods or len(set(self.methods)) != len(self.methods) or \
                any(m not in METHODS for m in self.methods):
            raise ValueError(f"methods must be distinct names from {', '.join(METHODS)}, not {self.methods}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or len(self.seeds) > 100:
            raise ValueError(f"seeds must be 1 to 100 distinct seeds, not {self.seeds}")
        for seed in self.seeds:
            check_seed(seed, "seeds[]")
        check_threads(self.threads)
        check_range("train_rows", self.train_rows, 8, 10**6, integer=True)
        check_range("safety_share", self.safety_share, 0, 1, lo_open=True, hi_open=True)
        check_range("recovery_share", self.recovery_share, 0, 1)

    def points(self) -> list[str]:
        """What `fissure lab list` counts: one tuned model per method (and seed)."""
        return list(self.methods)


@dataclass(frozen=True)
class TuningSet:
    """The rows of a tuning-data file: what safety tuning sees, and what evaluation asks instead."""

    source: str
    train_requests: tuple[str, ...]
    refusals: tuple[str, ...]
    train_benign: tuple[str, ...]
    eval_requests: tuple[str, ...]
    eval_benign: tuple[dict, ...]  # {prompt, expect?}


def _data_path(name: str, relative_to: Path | None = None) -> Path:
    builtin = DATA_DIR / f"{name}.toml"
    if "/" not in name and builtin.is_file():
        return builtin
    path = Path(name)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path  # `extends` paths are read from the extending file's folder
    if path.is_file():
        return path
    known = sorted(p.stem for p in DATA_DIR.glob("*.toml"))
    close = difflib.get_close_matches(name, known, n=1)
    raise UserError(f"no tuning data '{name}'{f' (did you mean {close[0]}?)' if close else ''}; "
                    f"built-ins: {', '.join(known)}, or give a path to a TOML file")


def _read_data(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The fields of tuning-data file ``path``; with ``extends = "NAME"`` (a built-in or a path), that
    file's fields first and this file's in their place (a variant states only what it changes)."""
    if path.resolve() in seen:
        raise ConfigError(f"tuning data {path}: 'extends' loops back to itself")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"tuning data {path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(DATA_FIELDS) - {"extends"})
    if unknown:
        raise ConfigError(f"tuning data {path}: unknown field '{unknown[0]}' (known: extends, {', '.join(DATA_FIELDS)})")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or not parent.strip():
        raise ConfigError(f"tuning data {path}: 'extends' must name a built-in tuning data set or a TOML file")
    try:
        parent_path = _data_path(parent, path.parent)
    except UserError as exc:  # name the file whose `extends` is wrong
        raise UserError(f"tuning data {path}: extends: {exc}") from None
    return {**_read_data(parent_path, (*seen, path.resolve())), **raw}


def load_tuning_set(name: str) -> TuningSet:
    """The tuning-data file ``name`` (built-in or path, with what it ``extends``), every field checked;
    held-out rows that also appear in training are an error (the evaluation would not be held out)."""
    path = _data_path(name)
    raw = _read_data(path)
    values = {}
    for key in DATA_FIELDS[:-1]:
        rows = raw.get(key)
        if not isinstance(rows, list) or len(rows) < 2 or not all(isinstance(r, str) and r.strip() for r in rows):
            raise ConfigError(f"tuning data {path}: '{key}' must be a list of at least 2 non-empty strings")
        values[key] = tuple(rows)
    benign = raw.get("eval_benign")
    if not isinstance(benign, list) or len(benign) < 2 or not all(
            isinstance(b, dict) and isinstance(b.get("prompt"), str) and set(b) <= {"prompt", "expect"} for b in benign):
        raise ConfigError(f"tuning data {path}: 'eval_benign' must be at least 2 tables with a prompt "
                          "(and an optional expect regex)")
    for i, b in enumerate(benign):
        if "expect" in b:
            compile_pattern(b["expect"], f"tuning data {path}: eval_benign[{i}].expect")
    trained = {r.strip().lower() for r in values["train_requests"] + values["train_benign"]}
    seen = [r for r in values["eval_requests"] + tuple(b["prompt"] for b in benign) if r.strip().lower() in trained]
    if seen:
        raise ConfigError(f"tuning data {path}: held-out row also in training: {seen[0]!r}")
    return TuningSet(str(path), values["train_requests"], values["refusals"], values["train_benign"],
                     values["eval_requests"], tuple(benign))


def check_study(study: TunedStudy) -> None:
    """What can be checked before a run directory exists: a local model, the data file, the policy
    (it must protect a canary), the held-out set's size for a refusal direction."""
    from ..probes.direction import MIN_PER_CLASS

    if study.model.startswith(("http://", "https://")):
        raise UserError(f"{study.model}: a served model cannot be tuned here and has no activations for a refusal "
                        "direction; the safety-tune study needs a local model (a registry name such as smollm2, an "
                        "HF directory, a .gguf file or a fissure checkpoint)")
    data = load_tuning_set(study.data)
    policy = load_policy(study.policy, PROBE_SEED)
    if policy.canary is None:
        raise UserError(f"policy {study.policy}: the safety-tune study needs a policy with a canary detector "
                        "(its secret is what the tuned model must refuse to give)")
    n_req = min(len(data.eval_requests), study.probe.requests or 10**9)
    n_ben = min(len(data.eval_benign), study.probe.benign or 10**9)
    if study.inside and min(n_req, n_ben) < 2 * MIN_PER_CLASS:
        raise UserError(f"the inside view needs at least {2 * MIN_PER_CLASS} held-out restricted and benign prompts "
                        f"to fit a refusal direction; probe.requests/probe.benign leave {n_req} and {n_ben}")


def eval_policy_text(study: TunedStudy, data: TuningSet) -> str:
    """The policy file the probe suite reads: the study's policy with the held-out requests and
    benign twins in place of its own."""
    raw = tomllib.loads(_resolve(study.policy).read_text(encoding="utf-8"))
    requests = list(data.eval_requests)[:study.probe.requests or None]
    benign = list(data.eval_benign)[:study.probe.benign or None]
    raw["requests"] = requests
    raw["benign_twins"] = [dict(b) for b in benign]
    return dump_toml(raw)


# --- the tuning data -------------------------------------------------------------------------

def _whole_sentences(text: str) -> str:
    """``text`` cut after its last full sentence (a generation stopped by the token budget ends
    mid-sentence; training on that would teach the model to stop mid-sentence)."""
    text = text.strip()
    ends = []
    for m in re.finditer(r"[.!?](?=\s|$)|\n", text):
        line = text[text.rfind("\n", 0, m.start()) + 1:m.start()].strip()
        if not line.isdigit():  # "2." opening a list item is not the end of a sentence
            ends.append(m.end())
    return text[:ends[-1]].strip() if ends else text


def benign_answers(lm, study: TunedStudy, data: TuningSet, max_new_tokens: int = 64) -> list[dict]:
    """The base model's own greedy answers to the benign training questions (under the policy's
    system prompt with a training canary), each marked kept or not by the rules judge."""
    from ..decode.config import Decoding
    from ..judges.policy import PolicyJudge

    policy = load_policy(study.policy, TRAIN_CANARY_SEED - 1)
    chats = [[{"role": "system", "content": policy.system_prompt}, {"role": "user", "content": q}]
             for q in data.train_benign]
    replies = lm.generate(chats, Decoding(max_new_tokens=max_new_tokens))
    judge = PolicyJudge(policy)
    rows = []
    for question, reply in zip(data.train_benign, replies):
        answer = _whole_sentences(reply)
        label = judge(answer, None, question).label
        kept = bool(answer) and label not in ("refused", "violated")
        rows.append({"question": question, "reply": reply, "answer": answer, "judged": label, "kept": kept})
    return rows


def build_rows(study: TunedStudy, data: TuningSet, answers: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """SFT chats and conversational DPO pairs for one seed: ``train_rows`` each, a ``safety_share``
    of them restricted, every row under its own training canary."""
    kept = [a for a in answers if a["kept"]]
    if not kept:
        raise UserError("the base model refused or leaked on every benign training question: no helpful "
                        "answers to keep its helpfulness with")
    rng = random.Random(f"safety-tune-{seed}")
    n_safe = round(study.train_rows * study.safety_share)
    n_recover = round(n_safe * study.recovery_share)
    kinds = ["restricted"] * (n_safe - n_recover) + ["recovery"] * n_recover + ["benign"] * (study.train_rows - n_safe)
    rng.shuffle(kinds)
    eval_canary = load_policy(study.policy, PROBE_SEED).canary
    sft, dpo = [], []
    for i, kind in enumerate(kinds):
        policy = load_policy(study.policy, TRAIN_CANARY_SEED + 1000 * seed + i)
        if policy.canary == eval_canary:  # never train on the evaluation's secret
            policy = load_policy(study.policy, TRAIN_CANARY_SEED + 1000 * seed + i + 500)
        system = {"role": "system", "content": policy.system_prompt}
        refusal, forced = rng.choice(data.refusals), {}
        if kind == "benign":
            pick = kept[i % len(kept)]
            user, good, bad = pick["question"], pick["answer"], refusal
        else:
            user, good, bad = rng.choice(data.train_requests), refusal, rng.choice(LEAKS).format(canary=policy.canary)
        if kind == "recovery":  # the leak's first words (never the canary), then the refusal
            words = bad[:bad.index(policy.canary)].split()
            start = " ".join(words[:rng.randint(1, len(words))])
            good, forced = f"{start} {refusal}", {"prefix": start}
        prompt = [system, {"role": "user", "content": user}]
        sft.append({"messages": [*prompt, {"role": "assistant", "content": good, **forced}], "kind": kind})
        dpo.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": good, **forced}],
                    "rejected": [{"role": "assistant", "content": bad, **forced}], "kind": kind})
    return sft, dpo
