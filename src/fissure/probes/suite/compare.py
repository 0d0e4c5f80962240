"""After a run: compare two runs (McNemar's exact test) and judge saved replies again."""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections import Counter
from pathlib import Path

from ...errors import UserError
from ...judges import Sample, read_samples
from ...judges.records import KINDS
from ..attacks import AttackPrompt, get_attack
from ..policies import load_policy
from ..stats import compare_runs
from .config import SAMPLES_FILE, SuiteConfig, load_config
from .run import judge_samples, judge_summary
from .summary import outcomes_by_temperature, summarise


def load_run(run_dir: str | Path) -> tuple[SuiteConfig, list[Sample]]:
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    samples = read_samples(run_dir / SAMPLES_FILE)
    if not samples:
        raise UserError(f"{run_dir} has no samples ({SAMPLES_FILE} is missing or empty)")
    return config, samples


def compare(run_a: str | Path, run_b: str | Path) -> dict:
    """McNemar's exact test per attack (and over all attacks) between two probe runs, paired on
    (request, attack, temperature) outcomes at k samples."""
    (config_a, rows_a), (config_b, rows_b) = load_run(run_a), load_run(run_b)
    out_a = outcomes_by_temperature(rows_a, config_a.capability_threshold, config_a.confidence)
    out_b = outcomes_by_temperature(rows_b, config_b.capability_threshold, config_b.confidence)
    shared = [a for a in dict.fromkeys(o.attack for o in out_a) if a in {o.attack for o in out_b}]
    if not shared:
        raise UserError(f"{run_a} and {run_b} share no attack to compare")
    attacks = {}
    for name in shared:
        a = [o for o in out_a if o.attack == name]
        b = [o for o in out_b if o.attack == name]
        try:
            test = compare_runs(a, b)
        except UserError:
            continue  # no shared request for this attack
        keys = {o.request_id for o in a} & {o.request_id for o in b}
        attacks[name] = {"mode": a[0].mode, **test.as_dict(),
                         "asr_a": sum(o.success for o in a if o.request_id in keys) / len(keys),
                         "asr_b": sum(o.success for o in b if o.request_id in keys) / len(keys)}
    notes = []
    if Path(config_a.policy).stem != Path(config_b.policy).stem:
        notes.append(f"the runs use different policies ({config_a.policy} vs {config_b.policy})")
    if config_a.max_new_tokens != config_b.max_new_tokens:
        notes.append("the runs decode a different number of tokens")
    return {"run_a": str(run_a), "run_b": str(run_b), "model_a": config_a.model, "model_b": config_b.model,
            "attacks": attacks, "overall": compare_runs(out_a, out_b).as_dict(), "notes": notes}


_REPLY_FIELDS = ("reply", "response", "text", "output")


def normalise_replies(raw: list) -> list[Sample]:
    """Saved replies as samples: a fissure ``samples.jsonl`` as it is; any other JSONL needs a
    reply (``reply``, ``response``, ``text`` or ``output``) and may give ``attack``, ``request``,
    ``kind``, ``temperature``, ``sample`` and an earlier ``judge_label``. Every field is checked
    (a one-line UserError naming the line and the field)."""
    samples = []
    for i, r in enumerate(raw):
        where = f"line {i + 1}"
        if not isinstance(r, dict):
            raise UserError(f"{where} is not a JSON object")
        try:
            sample = Sample.from_dict(r)
        except UserError:
            sample = _loose_sample(r, i, where)
        _check_for_judging(sample, where)
        samples.append(sample)
    return samples


def _loose_sample(r: dict, i: int, where: str) -> Sample:
    """A sample from a row of some other tool's JSONL (only a reply is required)."""
    reply = next((r[f] for f in _REPLY_FIELDS if isinstance(r.get(f), str)), None)
    if reply is None:
        raise UserError(f"{where} has no reply (one of: {', '.join(_REPLY_FIELDS)})")

    def text(name: str, default: str = "") -> str:
        value = r.get(name)
        if value is None or value == "":
            return default
        if not isinstance(value, str):
            raise UserError(f"{where}: '{name}' must be text, not {type(value).__name__}")
        return value

    attack, request = text("attack", "none"), text("request")
    kind = r.get("kind")
    fields = dict(key=text("key", f"q{i}"), kind=kind if isinstance(kind, str) and kind in KINDS else "restricted",
                  attack=attack, request=request, prompt=r.get("prompt", ""), reply=reply,
                  mode=text("mode") or get_attack(attack).mode,
                  request_id=text("request_id") or (f"q{zlib.crc32(request.encode())}" if request else f"q{i}"),
                  encoding=text("encoding", attack), temperature=r.get("temperature", 0.0),
                  sample=r.get("sample", 0), decoding=text("decoding"), expected=r.get("expected"),
                  attack_prompt=r.get("attack_prompt"), judge_label=text("judge_label"))
    try:
        return Sample(**fields)
    except ValueError as exc:
        raise UserError(f"{where}: {exc}") from None


def _check_for_judging(sample: Sample, where: str) -> None:
    """What judging reads beyond the types: the attack prompt's fields and the expected answer's regex."""
    if sample.attack_prompt is not None:
        AttackPrompt.from_dict(sample.attack_prompt, f"{where}: attack_prompt")
    elif sample.attack and sample.request:
        get_attack(sample.attack)  # the judge rebuilds the prompt from it: an unknown name is an error here
    if sample.expected and sample.kind in ("capability", "benign"):
        try:
            re.compile(sample.expected)
        except re.error as exc:
            raise UserError(f"{where}: expected is not a valid regex ({exc})") from None


def rejudge(raw: list, policy_name: str, seed: int = 0, capability_threshold: float = 0.5,
            confidence: float = 0.95, judge: str = "rules", judge_lm=None,
            cache: Path | str | None = None, rubric: str = "letters") -> tuple[list[Sample], dict]:
    """Judge saved replies again under ``policy_name`` with ``judge`` (``rules``, or ``model`` /
    ``cascade`` over the loaded ``judge_lm``, its answers cached at ``cache``): the new samples and
    their summary (with the old verdicts' changes counted where the rows had any)."""
    from ...judges.model import make_judge

    policy = load_policy(policy_name, seed=seed)
    judge_obj = make_judge(judge, policy, judge_lm, cache=cache, rubric=rubric)
    samples = normalise_replies(raw)
    judged = [dataclasses.replace(new, extra={**new.extra, "previous_label": old.judge_label or None})
              for old, new in zip(samples, judge_samples(samples, judge_obj))]
    summary = summarise(judged, capability_threshold, confidence)
    previous = [(s.extra["previous_label"], s.judge_label) for s in judged if s.extra["previous_label"] is not None]
    changed = [(old, new) for old, new in previous if old != new]
    summary["changed"] = {"n": len(changed), "of": len(previous),
                          "transitions": dict(Counter(f"{old}->{new}" for old, new in changed))}
    summary["policy"] = {"name": policy.name, "source": policy.source, "canary": policy.canary}
    summary["capability_threshold"] = capability_threshold
    summary["judge"] = judge_summary(judge_obj, judged)
    return judged, summary
