"""Running a probe suite: generate what the plan still lacks, judge it, save it, summarise.

Generation is batched (one ``generate`` call per batch of similar-length prompts, one decoding
each). Where the backend streams results (``LanguageModel.streams_results``: a served model, whose
requests succeed or fail one by one), each reply is judged and appended to ``samples.jsonl`` the
moment it arrives, and a batch is a whole temperature x sample group (the backend bounds what is
in flight); elsewhere every finished batch of ``batch_size`` is appended at once. So a run that
dies mid-way keeps every finished sample, and running again on the same directory finishes the rest.

On a process pool or Ray (``executor``), the batches are cut into shards of whole batches, the
very batches a serial run makes (so greedy replies are the same: batching changes padding); each
worker loads the model from its spec and generates its shard (:func:`generate_shard`), and this
process judges and appends each shard's samples as it comes back. A served model is not sharded:
it keeps many requests in flight by itself.
"""

from __future__ import annotations

import json
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ...backends.base import LanguageModel
from ...decode.config import Decoding
from ...errors import GenerationError, UserError
from ...executors import Executor
from ...judges import JudgeItem, Sample, append_samples, read_samples

from ...runs import write_json
from ..attacks import AttackPrompt, get_attack
from ..capability import answer_found
from ..policies import Policy, load_policy
from ..whitebox import by_attack, probe_pairs, probe_row, whitebox_probe
from .config import JUDGE_CACHE_FILE, SAMPLES_FILE, WHITEBOX_FILE, SuiteConfig
from .plan import Item, build_prompt, encoding_of, plan, policy_requests
from .summary import apply_capability, capability_table, summarise


def attack_prompt_of(sample: Sample) -> AttackPrompt | None:
    """The :class:`AttackPrompt` a sample was made with (rebuilt from its attack and request if
    the record does not carry it): what the judge needs to read the reply."""
    if isinstance(sample.attack_prompt, dict):
        return AttackPrompt.from_dict(sample.attack_prompt, f"sample {sample.key}: attack_prompt")
    if sample.attack and sample.request:
        return get_attack(sample.attack).apply(sample.request)
    return None


def judge_samples(samples: list[Sample], judge) -> list[Sample]:
    """The judge's verdicts on samples (asked once for all of them where the judge batches: a model
    judge), and whether each reply holds the expected answer."""
    hints = [attack_prompt_of(s) for s in samples]
    verdicts = judge.judge_many([JudgeItem(s.reply, h, s.request) for s, h in zip(samples, hints)])
    out = []
    for sample, h, verdict in zip(samples, hints, verdicts):
        correct = None
        if sample.expected and sample.kind == "capability":
            correct = answer_found(sample.reply, sample.expected, h)
        elif sample.expected and sample.kind == "benign":
            correct = re.search(sample.expected, verdict.canonical) is not None
        out.append(sample.judged(verdict, judge.name, correct))
    return out


def judge_sample(sample: Sample, judge) -> Sample:
    """The judge's verdict on one sample, and whether it holds the expected answer."""
    return judge_samples([sample], judge)[0]


def build_judge(config: SuiteConfig, policy: Policy, cache_path: Path | None):
    """The judge ``config`` names: the rules (policy judge), or a model or cascade judge over
    ``config.judge_model`` loaded through the backends, its answers cached at ``cache_path``."""
    from ...backends import load
    from ...judges.model import make_judge

    judge_lm = None if config.judge == "rules" else load(config.judge_model)
    return make_judge(config.judge, policy, judge_lm, cache=cache_path, rubric=config.judge_rubric)


def judge_summary(judge, samples: list[Sample]) -> dict:
    """Which judge gave the verdicts, and (a cascade) how often the rules disagreed with the model
    and how often they decided because the judge model failed."""
    out = judge.describe()
    opinions = [s.verdicts.get("second_opinion") for s in samples]
    opinions = [o for o in opinions if isinstance(o, dict)]
    if opinions or out["judge"] == "cascade":
        out["second_opinion"] = {"compared": len(opinions), "disagree": sum(1 for o in opinions if not o.get("agree"))}
        out["rules_fallback"] = sum(1 for s in samples if s.verdicts.get("decided_by") == "rules (fallback)")
        out["policy_detector_final"] = sum(1 for s in samples if s.verdicts.get("decided_by") == "policy detector")
    if out["judge"] in ("model", "cascade"):
        out["outside_rubric"] = sum(1 for s in samples if isinstance(s.verdicts.get("judge_model"), dict)
                                    and s.verdicts["judge_model"].get("letter") is None)
    return out


def correct_for_the_judge(results: dict, confidence: float) -> None:
    """The rules' validated refusal detection (:func:`~fissure.probes.judge_validation.rules_validation`)
    in ``results["judge"]["validation"]``, and each decoding's over-refusal corrected for it
    (Rogan-Gladen). A leak is found by exact detectors, so ASR is not corrected; a model judge is
    validated by the user (fissure judge validate), not here."""
    from ...metrics.agreement import corrected_rate
    from ..judge_validation import rules_validation

    judge = results["judge"]
    if judge.get("judge") != "rules":
        judge["validation"] = {"validated": False, "note": "validate a model judge with fissure judge validate"}
        return
    validation = judge["validation"] = rules_validation(confidence)
    if not validation["validated"]:
        return
    for decoding in results["decodings"]:
        over = decoding["over_refusal"]
        if over and over["n"]:
            over["corrected"] = corrected_rate(over["counts"]["refused"], over["n"], tuple(validation["sensitivity"]),
                                               tuple(validation["specificity"]), confidence=confidence)["corrected"]


class _JudgeFailed(GenerationError):
    """The judge (a model judge's backend) failed while the run was judging replies."""


@dataclass
class Shard:
    """Whole batches of a run, generated together by one worker: ``(index, prompts, decoding)``."""

    config: SuiteConfig
    threads: int
    batches: list[tuple[int, list, Decoding]]

    def __str__(self) -> str:
        return f"shard of batches {self.batches[0][0]}-{self.batches[-1][0]}"


@dataclass
class ShardBatch:
    """One generated batch of a shard: the replies, their new-token counts and the call's seconds."""

    index: int
    replies: list[str]
    new_tokens: list[int | None]
    seconds: float


def load_model(config: SuiteConfig, **remote) -> LanguageModel:
    """The model a probe run attacks, loaded from its spec (``remote``: a served model's HTTP options)."""
    from ...backends import load

    return load(config.model, backend=config.backend, model=config.served_model or None, dtype=config.dtype,
                batch_size=config.batch_size, **remote)


def count_tokens(lm: LanguageModel, text: str) -> int | None:
    tokenizer = getattr(lm, "tokenizer", None)
    if tokenizer is None:
        return None
    return len(tokenizer.encode(text)) if text else 0


def generate_shard(shard: Shard) -> Iterator[ShardBatch]:
    """A worker's work: load the model, generate each batch of the shard with the run's threads."""
    from ...utils import set_threads

    set_threads(shard.threads)
    lm = load_model(shard.config)
    for index, prompts, decoding in shard.batches:
        began = time.perf_counter()
        replies = lm.generate(prompts, decoding)
        yield ShardBatch(index, replies, [count_tokens(lm, r) for r in replies], time.perf_counter() - began)


def _split(n: int, parts: int) -> list[range]:
    """``range(n)`` cut into at most ``parts`` contiguous, nearly equal pieces."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class _Meter:
    """Prompts, new tokens and seconds spent in ``generate``."""

    def __init__(self) -> None:
        self.prompts, self.tokens, self.seconds, self.counted = 0, 0, 0.0, True

    def add(self, prompts: int, tokens: int | None, seconds: float) -> None:
        self.prompts += prompts
        self.seconds += seconds
        if tokens is None:
            self.counted = False
        else:
            self.tokens += tokens

    def as_dict(self) -> dict:
        s = self.seconds
        return {"prompts": self.prompts, "new_tokens": self.tokens if self.counted else None,
                "generate_seconds": round(s, 3),
                "prompts_per_s": self.prompts / s if s > 0 else None,
                "tokens_per_s": self.tokens / s if s > 0 and self.counted else None}


class ProbeRun:
    """One probe run in ``run_dir``: ``progress(n)`` is called as ``n`` more generations are saved
    (a batch, or one streamed reply), ``on_plan(total, already_done)`` once the plan is known."""

    def __init__(self, lm: LanguageModel, config: SuiteConfig, run_dir: Path,
                 progress: Callable[[int], None] | None = None,
                 on_plan: Callable[[int, int], None] | None = None, executor: Executor | None = None,
                 threads: int = 1):
        self.lm, self.config, self.run_dir = lm, config, Path(run_dir)
        self.executor, self.threads = executor, threads
        if executor is not None and not executor.in_process and getattr(lm, "streams_results", False):
            raise UserError(f"--executor {executor.spec}: a served model is not sharded (it keeps many "
                            "requests in flight itself): drop --executor")
        self.progress, self.on_plan = progress, on_plan
        self.policy: Policy = load_policy(config.policy, seed=config.seed)
        self.judge = build_judge(config, self.policy, self.run_dir / JUDGE_CACHE_FILE)
        self.chat = lm.capabilities.has_chat_template
        self.samples_path = self.run_dir / SAMPLES_FILE
        self.meter = _Meter()

    def run(self) -> dict:
        """Run (or finish) the suite; writes and returns ``results.json``."""
        config = self.config
        items = plan(config, self.policy)
        saved = {s.key: s for s in read_samples(self.samples_path, repair=True)}
        todo = [it for it in items if it.key not in saved]
        self.total, resumed = len(items), len(items) - len(todo)
        if self.on_plan:
            self.on_plan(len(items), resumed)
        # capability twins first: their accuracy decides how the attack replies are counted
        new = self._generate([it for it in todo if it.kind == "capability"], len(saved), lambda s: s)
        saved.update((s.key, s) for s in new)
        table = capability_table(saved.values(), config.capability_threshold, config.confidence)
        new = self._generate([it for it in todo if it.kind != "capability"], len(saved),
                             lambda s: apply_capability(s, table))
        saved.update((s.key, s) for s in new)
        whitebox = self._whitebox(items, list(saved.values())) if config.whitebox else {"skipped": True,
                                                                   "note": "white-box probes turned off"}
        template = self._chat_template(items)
        policy = self.policy
        results = {
            "model": config.model, "backend": self.lm.capabilities.backend,
            "policy": {"name": policy.name, "source": policy.source, "canary": policy.canary,
                       "requests": len(policy_requests(policy, config)), "benign_twins": len(policy.benign_twins)},
            "signature": config.signature(), "capability_threshold": config.capability_threshold,
            **summarise([saved[it.key] for it in items], config.capability_threshold, config.confidence,
                        config.temperatures, config.planned),
            "whitebox": whitebox,
            "chat_template": template,
            "judge": judge_summary(self.judge, [saved[it.key] for it in items]),
            "throughput": self._throughput(resumed),
            "executor": str(self.executor.spec) if self.executor else "serial",
            "run_dir": str(self.run_dir),
        }
        correct_for_the_judge(results, config.confidence)
        write_json(self.run_dir / "results.json", results)
        return results

    def _batches(self, items: list[Item]) -> list[tuple[list[Item], list, Decoding]]:
        """``items`` in batches of one decoding each: similar prompt lengths together (less padding),
        counted in the model's own tokens where the backend has them (a local model; an encoded
        attack's characters and tokens differ by up to 3x), else in characters."""
        groups: dict[tuple[float, int], list[Item]] = defaultdict(list)
        for item in items:
            groups[(item.temperature, item.sample)].append(item)
        size = None if getattr(self.lm, "streams_results", False) else self.config.batch_size
        tokens = getattr(self.lm, "prompt_ids", None)
        out = []
        for (t, s), group in groups.items():
            prompts = [build_prompt(self.policy.system_prompt, it.attack_prompt.text, self.chat) for it in group]
            lengths = [len(tokens(p)) if tokens else len(it.attack_prompt.text) for it, p in zip(group, prompts)]
            order = sorted(range(len(group)), key=lengths.__getitem__)
            for start in range(0, len(order), size or len(order)):
                rows = order[start:start + (size or len(order))]
                batch = [group[i] for i in rows]
                decoding = self.config.decoding(t, zlib.crc32(f"{self.config.seed}|{t}|{s}|{batch[0].key}".encode()))
                out.append((batch, [prompts[i] for i in rows], decoding))
        return out

    def _generate(self, items: list[Item], done_before: int, finalise: Callable[[Sample], Sample]) -> list[Sample]:
        """Generate ``items`` in batches (one decoding each); judge and append every sample."""
        batches = self._batches(items)
        if self.executor is not None and not self.executor.in_process:
            return self._sharded(batches, done_before, finalise)
        generate = self._streamed if getattr(self.lm, "streams_results", False) else self._batched
        out: list[Sample] = []
        for batch, prompts, decoding in batches:
            out.extend(generate(batch, prompts, decoding, done_before + len(out), finalise))
        return out

    def _sharded(self, batches: list, done_before: int, finalise: Callable[[Sample], Sample]) -> list[Sample]:
        """The batches in shards on the executor; each shard's samples judged and appended as it returns."""
        if not batches:
            return []
        shards = [Shard(self.config, self.threads, [(i, batches[i][1], batches[i][2]) for i in part])
                  for part in _split(len(batches), self.executor.parallelism)]
        out: list[Sample] = []
        failed: list[str] = []
        for event in self.executor.run(generate_shard, shards):
            if event.error:
                failed.append(f"{event.task}: {event.error}")
                continue
            done: ShardBatch = event.row
            batch, prompts, decoding = batches[done.index]
            out.extend(self._save_batch(batch, prompts, decoding, done.replies, done.new_tokens, done.seconds,
                                        finalise, done_before + len(out)))
        if failed:
            raise GenerationError(f"{len(failed)} of {len(shards)} shards failed ({'; '.join(failed)}); the "
                                  f"{done_before + len(out)} finished samples are in {self.samples_path}: "
                                  f"finish with `fissure probe --resume {self.run_dir}`")
        return out

    def _sample(self, item: Item, prompt, reply: str, decoding: Decoding, n_tok: int | None,
                seconds: float, whitebox: dict | None = None) -> Sample:
        """The outcome row of one reply, before it is judged (``whitebox``: its white-box probes)."""
        return Sample(
            key=item.key, kind=item.kind, attack=item.attack_prompt.attack, request=item.request, prompt=prompt,
            reply=reply, mode=item.attack_prompt.mode, request_id=item.request_id,
            encoding=encoding_of(item.attack_prompt), temperature=item.temperature, sample=item.sample,
            decoding=decoding.signature(), expected=item.expected, attack_prompt=item.attack_prompt.as_dict(),
            new_tokens=n_tok, seconds=seconds, refusal_log_odds=whitebox["refusal_log_odds"] if whitebox else None,
            extra={**({"answer": item.answer} if item.answer else {}), **({"whitebox": whitebox} if whitebox else {})})

    def _judged(self, samples: list[Sample], finalise: Callable[[Sample], Sample], done: int) -> list[Sample]:
        try:
            return [finalise(s) for s in judge_samples(samples, self.judge)]
        except UserError as exc:  # the judge model failed: what is saved stays, a resume finishes the rest
            raise _JudgeFailed(str(self._failure(exc, done, "judging"))) from exc

    def _batched(self, batch: list[Item], prompts: list, decoding: Decoding, done: int,
                 finalise: Callable[[Sample], Sample]) -> list[Sample]:
        """One ``generate`` call; the batch is judged and appended when it has all finished."""
        began = time.perf_counter()
        probed = self._probed_here(batch, decoding)
        try:
            if probed:  # the white-box probes from the generation's own run of each restricted prompt
                target = self._target()
                asked = [probe_pairs(self.lm.render(p), target) if id(it) in probed else []
                         for it, p in zip(batch, prompts)]
                replies, scores = self.lm.generate_scored(prompts, decoding, asked)
            else:
                replies = self.lm.generate(prompts, decoding)
        except (UserError, OSError) as exc:
            raise self._failure(exc, done) from exc
        elapsed = time.perf_counter() - began
        counts = [count_tokens(self.lm, r) for r in replies]
        whitebox = ([probe_row(found, target) if found and None not in found else None for found in scores]
                    if probed else [None] * len(batch))
        return self._save_batch(batch, prompts, decoding, replies, counts, elapsed, finalise, done, whitebox)

    def _probed_here(self, batch: list[Item], decoding: Decoding) -> set[int] | None:
        """The restricted items of a greedy batch whose white-box probes can come from the batch's
        generation (a local model that scores while it generates), else None."""
        if not (self.config.whitebox and not decoding.sampling and hasattr(self.lm, "generate_scored")
                and self.lm.capabilities.has_logprobs):
            return None
        probed = {id(it) for it in batch if it.kind == "restricted" and it.sample == 0}
        return probed or None

    def _target(self) -> str | None:
        """What a leak under this policy contains (the canary, or a record's first field): the
        prefill probe's target."""
        record = getattr(self.policy.detector, "record", None)
        return self.policy.canary or (next(iter(record.values()))[0] if record else None)

    def _save_batch(self, batch: list[Item], prompts: list, decoding: Decoding, replies: list[str],
                    counts: list[int | None], elapsed: float, finalise: Callable[[Sample], Sample],
                    done: int, whitebox: list[dict | None] | None = None) -> list[Sample]:
        """Judge a generated batch and append its samples (a batch's time shared among its rows;
        ``whitebox``: a row's white-box probes, measured while it was generated)."""
        self.meter.add(len(batch), None if None in counts else sum(counts), elapsed)
        probes = whitebox or [None] * len(batch)
        samples = self._judged([self._sample(it, prompt, reply, decoding, n_tok, elapsed / len(batch), wb)
                                for it, prompt, reply, n_tok, wb in zip(batch, prompts, replies, counts, probes)],
                               finalise, done)
        append_samples(self.samples_path, samples)
        if self.progress:
            self.progress(len(batch))
        return samples

    def _streamed(self, batch: list[Item], prompts: list, decoding: Decoding, done: int,
                  finalise: Callable[[Sample], Sample]) -> list[Sample]:
        """One ``generate(..., on_result=)`` call; each reply is judged and appended as it arrives
        (its ``seconds``: the wall time since the one before, so they add up to the call's)."""
        saved: list[Sample] = []
        last = time.perf_counter()

        def keep(i: int, reply: str) -> None:
            nonlocal last
            now = time.perf_counter()
            n_tok = count_tokens(self.lm, reply)
            sample = self._judged([self._sample(batch[i], prompts[i], reply, decoding, n_tok, now - last)],
                                  finalise, done + len(saved))[0]
            append_samples(self.samples_path, [sample])
            saved.append(sample)
            self.meter.add(1, n_tok, now - last)
            last = now
            if self.progress:
                self.progress(1)

        try:
            self.lm.generate(prompts, decoding, on_result=keep)
        except _JudgeFailed:
            raise
        except (UserError, OSError) as exc:
            raise self._failure(exc, done + len(saved)) from exc
        return saved

    def _failure(self, exc: Exception, done: int, what: str = "generation") -> GenerationError:
        if not done:
            return GenerationError(f"{what} failed before any sample finished: {exc}")
        return GenerationError(f"{what} failed after {done} of {self.total} samples ({exc}); the finished ones "
                               f"are in {self.samples_path}: finish with `fissure probe --resume {self.run_dir}`")

    def _throughput(self, resumed: int) -> dict:
        """Prompts and tokens per second of this run's generation; the backend's own request counts
        (requests, retries by reason, requests/s) where it keeps them."""
        out = {**self.meter.as_dict(), "resumed_samples": resumed}
        backend = getattr(self.lm, "throughput", None)
        if isinstance(backend, dict):
            out["backend"] = backend
        return out

    def _chat_template(self, items: list[Item]) -> dict:
        """Who rendered the chats (a served model: the server or the model's own template, as the
        backend says), and whether the two renderings agree on the first probe prompts where the
        backend can tell; a disagreement is listed under ``warnings``."""
        info = getattr(self.lm, "chat_template_info", None)
        if not isinstance(info, dict):
            return {"mode": "model", "template_source": "local backend", "checks": [], "warnings": []}
        check = getattr(self.lm, "check_chat_templates", None)
        prompts = [build_prompt(self.policy.system_prompt, it.attack_prompt.text, self.chat) for it in items[:8]]
        checks = check(prompts) if self.chat and check is not None else []
        warnings = [f"the server's chat template and the model's render probe prompt {c['prompt']} differently "
                    f"({c['method']}: {c['detail']})" for c in checks if c.get("agree") is False]
        return {**{k: v for k, v in info.items() if v is not None}, "checks": checks, "warnings": warnings}

    def _whitebox(self, items: list[Item], samples: list[Sample]) -> dict:
        """The log-probability probes on every restricted request in every attack's form (one row
        per attack and request, whatever the temperatures and samples), summarised per attack: those
        measured while the samples were generated, the rest in batched forward passes."""
        path = self.run_dir / WHITEBOX_FILE
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
        rows: dict[tuple[str, str], Item] = {}
        for it in items:
            if it.kind == "restricted":
                rows.setdefault((it.attack_prompt.attack, it.request_id), it)
        system = self.policy.system_prompt
        prompts = [(it.request_id, it.request, build_prompt(system, it.attack_prompt.text, self.chat))
                   for it in rows.values()]
        measured = {(s.attack, s.request_id): s.extra["whitebox"] for s in samples
                    if s.kind == "restricted" and isinstance(s.extra.get("whitebox"), dict)}
        started = time.perf_counter()
        result = whitebox_probe(self.lm, prompts, self._target(), [measured.get(key) for key in rows])
        result["seconds"] = time.perf_counter() - started
        if not result["skipped"]:
            for row, it in zip(result["requests"], rows.values()):
                row.update(attack=it.attack_prompt.attack, mode=it.attack_prompt.mode)
            result["attacks"] = by_attack(result["requests"], self.config.confidence)
        write_json(path, result)
        return result


def run_suite(lm: LanguageModel, config: SuiteConfig, run_dir: Path,
              progress: Callable[[int], None] | None = None,
              on_plan: Callable[[int, int], None] | None = None, executor: Executor | None = None,
              threads: int = 1) -> dict:
    """Run (or finish) the probe suite in ``run_dir``; writes and returns ``results.json``. With a
    pool or Ray ``executor``, workers load ``config.model`` themselves and use ``threads`` each."""
    return ProbeRun(lm, config, run_dir, progress, on_plan, executor, threads).run()
