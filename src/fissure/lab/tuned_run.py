"""Running a safety-tune study (:mod:`.tuned`): data, tuning, probing, the inside view, and the
results pooled over seeds. Every step writes its own file or directory and is skipped when it is
already there, so an interrupted run resumes where it stopped.

Run directory::

    config.toml, meta.json          the study, provenance
    eval_policy.toml                the policy the probes read (held-out requests and benign twins)
    base_answers.jsonl              the base model's answers to the benign training questions
    probe-base/                     the probe suite on the base model
    seed-S/sft.jsonl, dpo.jsonl     the tuning rows of seed S
    seed-S/<method>/                the tuning run (checkpoint/, results.json), probe/, inside.json
                                    (sft_dpo tunes from seed-S/sft/checkpoint, tuned first if absent)
    results.json, report.html
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..config import dump_toml
from ..errors import UserError
from ..metrics.stats import wilson_interval
from ..runs import read_jsonl, write_json, write_jsonl, write_text_atomic
from ..utils import set_threads
from .inside import pool_attribution
from .tuned import PROBE_SEED, TunedStudy, benign_answers, build_rows, eval_policy_text, load_tuning_set


def _probe_config(study: TunedStudy, model: str, policy_path: Path):
    from ..probes.suite.config import SuiteConfig

    p = study.probe
    return SuiteConfig(model=model, policy=str(policy_path), attacks=list(p.attacks), max_new_tokens=p.max_new_tokens,
                       twins=p.twins, batch_size=p.batch_size, whitebox=False, seed=PROBE_SEED,
                       confidence=p.confidence)


def _probe(lm, study: TunedStudy, model: str, policy_path: Path, where: Path, log) -> dict:
    """The probe suite on ``lm`` in ``where`` (resumed from its samples), its config saved for
    ``fissure probe compare``."""
    from ..probes.suite import run_suite

    if (where / "results.json").is_file():
        return json.loads((where / "results.json").read_text(encoding="utf-8"))
    config = _probe_config(study, model, policy_path)
    where.mkdir(parents=True, exist_ok=True)
    write_text_atomic(where / "config.toml", dump_toml(config.as_dict()))
    started = time.perf_counter()
    results = run_suite(lm, config, where)
    log(f"probed {model}: {time.perf_counter() - started:.0f} s")
    return results


def _tune(study: TunedStudy, method: str, seed: int, rows_path: Path, where: Path, log, start: str | None = None) -> dict:
    """Tune ``method`` (its settings and objective) from ``start`` (a checkpoint; the study's model
    when None) into ``where``."""
    from ..train.lora import LoraSpec
    from ..tune.config import TuneConfig, _train_defaults
    from ..tune.data import read_tuning_data
    from ..tune.run import run_tune

    if (where / "results.json").is_file():
        return json.loads((where / "results.json").read_text(encoding="utf-8"))
    if where.exists():  # an interrupted tuning run: start it again (a few minutes at most)
        shutil.rmtree(where)
    where.mkdir(parents=True)
    m = getattr(study, method)
    train = _train_defaults()
    train.max_steps, train.batch_size, train.lr, train.min_lr = m.steps, m.batch_size, m.lr, m.lr / 10
    train.warmup_steps, train.eval_every, train.eval_batches = min(5, m.steps // 5), m.steps, 4
    train.threads, train.progress = study.threads, False
    config = TuneConfig(model=start or study.model, data=str(rows_path), method="lora", objective=method, seed=seed,
                        beta=m.beta, lora=LoraSpec(rank=m.rank, alpha=2.0 * m.rank), train=train)
    started = time.perf_counter()
    summary = run_tune(config, read_tuning_data(str(rows_path)), where, log=log)
    log(f"tuned {method}{' from ' + start if start else ''} seed {seed}: {summary['steps']} steps in {time.perf_counter() - started:.0f} s, "
        f"train loss {summary['train_loss']:.3f}")
    return summary


def _inside(lm, base, study: TunedStudy, policy, probe_dir: Path, seed: int, where: Path, log) -> dict:
    from ..judges import read_samples
    from .tuned_inside import tuned_inside

    if where.is_file():
        return json.loads(where.read_text(encoding="utf-8"))
    started = time.perf_counter()
    view = tuned_inside(lm, base, policy, read_samples(probe_dir / "samples.jsonl"), list(study.probe.attacks),
                        seed=seed, max_new_tokens=study.probe.max_new_tokens, batch_size=study.probe.batch_size,
                        confidence=study.probe.confidence, prefill_depths=sorted(study.prefill))
    view["seconds"] = time.perf_counter() - started
    write_json(where, view)
    log(f"inside view: layer {view['direction']['layer']}, {view['seconds']:.0f} s")
    return view


def run_tuned_study(study: TunedStudy, run_dir: Path, log=lambda m: None) -> dict:
    """Run (or finish) ``study`` in ``run_dir``; writes and returns ``results.json``."""
    from ..backends import TorchLM, load
    from ..probes.policies import load_policy
    from ..probes.suite.compare import compare

    started = time.perf_counter()
    set_threads(study.threads)
    data = load_tuning_set(study.data)
    policy_path = run_dir / "eval_policy.toml"
    if not policy_path.is_file():
        write_text_atomic(policy_path, eval_policy_text(study, data))
    policy = load_policy(policy_path, PROBE_SEED)
    base = load(study.model)
    if not isinstance(base, TorchLM) or not base.capabilities.has_chat_template:
        raise UserError(f"{study.model}: the safety-tune study needs a local model with a chat template "
                        "(it is tuned here, and its insides are read)")
    answers_path = run_dir / "base_answers.jsonl"
    if not answers_path.is_file():
        write_jsonl(answers_path, benign_answers(base, study, data))
    answers = [row for _, row in read_jsonl(answers_path)]
    log(f"base answers kept for tuning: {sum(a['kept'] for a in answers)} of {len(answers)}")
    base_probe = _probe(base, study, study.model, policy_path, run_dir / "probe-base", log)
    base_inside = (_inside(base, None, study, policy, run_dir / "probe-base", PROBE_SEED,
                           run_dir / "inside-base.json", log) if study.inside else None)
    tuned: dict[str, list[dict]] = {m: [] for m in study.methods}
    for seed in study.seeds:
        seed_dir = run_dir / f"seed-{seed}"
        if not (seed_dir / "dpo.jsonl").is_file():
            sft_rows, dpo_rows = build_rows(study, data, answers, seed)
            seed_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl(seed_dir / "sft.jsonl", sft_rows)
            write_jsonl(seed_dir / "dpo.jsonl", dpo_rows)
        for method in study.methods:
            where = seed_dir / method
            if method == "sft_dpo":  # DPO on the SFT model, which is also its reference
                _tune(study, "sft", seed, seed_dir / "sft.jsonl", seed_dir / "sft", log)
                tune = _tune(study, "dpo", seed, seed_dir / "dpo.jsonl", where, log,
                             start=str(seed_dir / "sft" / "checkpoint"))
            else:
                tune = _tune(study, method, seed, seed_dir / f"{method}.jsonl", where, log)
            lm = load(str(where / "checkpoint"))
            probe = _probe(lm, study, f"{study.model} + {method} (seed {seed})", policy_path, where / "probe", log)
            entry = {"seed": seed, "tune": _tune_summary(tune), "probe": probe,
                     "compare": compare(run_dir / "probe-base", where / "probe")}
            if study.inside:
                entry["inside"] = _inside(lm, base, study, policy, where / "probe", seed, where / "inside.json", log)
            tuned[method].append(entry)
            del lm
    results = collect(study, data, answers, base_probe, base_inside, tuned)
    results["seconds"] = time.perf_counter() - started
    write_json(run_dir / "results.json", results)
    return results


def _tune_summary(tune: dict) -> dict:
    keys = ("steps", "train_loss", "val_loss_before", "val_loss", "tokens_per_second", "trainable_parameters",
            "dtype", "checkpoint")
    out = {k: tune.get(k) for k in keys}
    if "dpo" in tune:
        out["dpo_val"] = tune["dpo"]["val"]
    return out


# --- pooling over seeds ------------------------------------------------------------------------

def _model_view(probes: list[dict], insides: list[dict] | None, confidence: float) -> dict:
    """One model (base, or a method pooled over its seeds): ASR per attack (counts pooled, Wilson
    interval, each seed's estimate beside it), over-refusal, capability, mode attribution."""
    attacks = {}
    for name, first in probes[0]["attacks"].items():
        rows = [p["attacks"][name] for p in probes]
        n, hits = sum(r["n"] for r in rows), sum(r["counts"]["violated"] for r in rows)
        attacks[name] = {"mode": first["mode"], "n": n,
                         "counts": {k: sum(r["counts"][k] for r in rows) for k in first["counts"]},
                         "asr": wilson_interval(hits, n, confidence).as_dict(),
                         "per_seed": [r["asr"]["estimate"] for r in rows],
                         "readable": [r.get("readable") for r in rows] if first.get("readable") is not None else None}
    n = sum(p["over_refusal"]["n"] for p in probes)
    refused = sum(p["over_refusal"]["counts"]["refused"] for p in probes)
    out = {"attacks": attacks,
           "over_refusal": {"n": n, "refused": refused, **wilson_interval(refused, n, confidence).as_dict(),
                            "per_seed": [p["over_refusal"]["rate"]["estimate"] for p in probes]},
           "benign_answered": {"n": n, "count": n - refused, **wilson_interval(n - refused, n, confidence).as_dict()},
           "capability": {a: c["accuracy"]["estimate"] for a, c in probes[0].get("capability", {}).items()}}
    if insides:
        out["mode_attribution"] = pool_attribution(insides, confidence)
        out["inside"] = insides if len(insides) > 1 else insides[0]
    return out


def _with_confusion(view: dict) -> dict:
    from .tuned_inside import confusion

    if "mode_attribution" in view:
        view["mode_confusion"] = confusion(view["mode_attribution"])
    return view


def collect(study: TunedStudy, data, answers: list[dict], base_probe: dict, base_inside: dict | None,
            tuned: dict[str, list[dict]]) -> dict:
    confidence = study.probe.confidence
    methods = {}
    for method, entries in tuned.items():
        view = _model_view([e["probe"] for e in entries],
                           [e["inside"] for e in entries] if study.inside else None, confidence)
        view["per_seed"] = [{"seed": e["seed"], "tune": e["tune"], "compare": e["compare"]["attacks"],
                             "overall": e["compare"]["overall"]} for e in entries]
        methods[method] = _with_confusion(view)
    first = study.methods[0]
    return {
        "study": study.name, "model": study.model, "policy": study.policy, "seeds": list(study.seeds),
        "methods": list(study.methods),
        "data": {"source": data.source, "train_rows": study.train_rows, "safety_share": study.safety_share,
                 "recovery_share": study.recovery_share,
                 "train_requests": len(data.train_requests), "benign_kept": sum(a["kept"] for a in answers),
                 "benign_questions": len(answers), "eval_requests": base_probe["policy"]["requests"],
                 "eval_benign": base_probe["policy"]["benign_twins"]},
        "base": _with_confusion(_model_view([base_probe], [base_inside] if base_inside else None, confidence)),
        "tuned": {"method": first, **methods[first]},
        "by_method": methods,
    }
