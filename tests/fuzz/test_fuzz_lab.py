"""Lab studies: any study dict loads (every field checked, sizes bounded, the world's samples fit the
model) or raises a UserError before anything runs; ``fissure lab run`` exits 0 (cheap studies) or 2
with one line and no run directory."""

from __future__ import annotations

import copy

from fuzz_support import bad_ints, cli, fuzz, json_values, junk, library, short_text, toml_value
from hypothesis import example, given
from hypothesis import strategies as st

from fissure.lab.study import builtin_raw, load_study, study_dict
from fissure.lab.world import ENCODINGS, World

ENC = st.sampled_from(ENCODINGS)
ATTACKS = st.sampled_from(["plain", "rot13", "leetspeak", "prefix_injection", "committed_prefix", "answer_briefly",
                           "rot13+prefix_injection", "char_spacing", "reversed+refusal_suppression"])
VALID = {
    "name": st.text(max_size=8), "seeds": st.lists(st.integers(0, 3), min_size=1, max_size=2, unique=True),
    "threads": st.integers(0, 2),
    "world.n_entities": st.integers(2, 30), "world.attributes": st.lists(
        st.sampled_from(["room", "age", "pin", "floor", "code"]), min_size=2, max_size=4, unique=True),
    "world.restricted": st.sampled_from(["pin", "age", "code"]), "world.encodings": st.lists(ENC, max_size=3, unique=True),
    "world.templates": st.integers(1, 2), "world.replies": st.sampled_from(["sentence", "value"]),
    "model.n_layer": st.integers(1, 2), "model.n_head": st.sampled_from([1, 2, 4]),
    "model.n_embd": st.sampled_from([16, 32]), "model.block_size": st.sampled_from([32, 96, 128, 256]),
    "model.dropout": st.floats(0, 0.5),
    "stage1.steps": st.integers(1, 2), "stage1.lr": st.floats(1e-4, 1e-2), "stage1.min_lr": st.floats(0, 1e-4),
    "stage1.warmup_steps": st.integers(0, 2), "stage1.batch_size": st.integers(1, 2),
    "stage1.instruction_weight": st.floats(0, 0.5), "stage1.fact_weight": st.floats(0, 0.4),
    "stage1.answer_only": st.booleans(),
    "stage2.steps": st.integers(1, 2), "stage2.lr": st.floats(1e-4, 1e-2), "stage2.batch_size": st.integers(1, 2),
    "stage2.coverage": st.lists(ENC, max_size=2, unique=True),
    "stage2.benign_coverage": st.lists(st.one_of(ENC, st.just("all")), min_size=1, max_size=2, unique=True),
    "stage2.safety_weight": st.floats(0, 0.3), "stage2.instruction_weight": st.floats(0, 0.2),
    "stage2.recovery_weight": st.floats(0, 0.1), "stage2.replay_weight": st.floats(0, 0.2),
    "stage2.contrastive_weight": st.floats(0, 0.1), "stage2.guard": st.booleans(),
    "eval.attacks": st.lists(ATTACKS, max_size=3, unique=True), "eval.max_new_tokens": st.integers(1, 8),
    "eval.batch_size": st.integers(1, 64), "eval.confidence": st.floats(0.5, 0.99),
    "findings.refused_max_asr_high": st.floats(0, 1), "findings.refused_min_rate": st.floats(0, 1),
    "findings.answered_min_accuracy": st.floats(0, 1),
    "sweep.safety_weight": st.lists(st.floats(0, 0.3), min_size=1, max_size=2, unique=True),
    "sweep.guard": st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
    "sweep.coverage": st.lists(st.lists(ENC, max_size=1), min_size=1, max_size=2),
}
UNKNOWN = ["stage3.steps", "world.entities", "sweep.nonsense", "eval.attack", "base", "seed"]

# Cheap enough that a study that loads also runs in about a second (only through the CLI).
CHEAP = {"seeds": [0], "threads": 1, "world": {"n_entities": 2, "encodings": ["plain"]},
         "model": {"n_layer": 1, "n_head": 1, "n_embd": 16}, "stage1": {"steps": 1, "batch_size": 1},
         "stage2": {"steps": 1, "batch_size": 1}, "eval": {"attacks": ["plain"], "max_new_tokens": 2}}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@st.composite
def study_changes(draw, values) -> dict:
    changes: dict = {}
    for name in draw(st.lists(st.sampled_from(sorted(VALID) + UNKNOWN), min_size=1, max_size=3, unique=True)):
        value = draw(st.one_of(VALID[name], values) if name in VALID else values)
        node = changes
        *parents, last = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    if draw(st.integers(0, 9)) == 0:
        changes[draw(st.sampled_from(["world", "model", "stage1", "stage2", "eval", "sweep", "findings"]))] = \
            draw(json_values)
    return changes


@fuzz(4)
@given(changes=study_changes(junk()), base=st.sampled_from(["jailbroken", "coverage", "mitigations"]))
@example(changes={"world": {"n_entities": 1_000_000_000}}, base="jailbroken")
@example(changes={"eval": {"confidence": 2.0}}, base="jailbroken")
@example(changes={"world": {"attributes": ["a", "e", "i", "o", "u"], "restricted": "a"}}, base="jailbroken")
@example(changes={"sweep": {"safety_weight": [0.01 * i for i in range(20)], "replay_weight": [0.01 * i for i in
                                                                                             range(20)]}},
         base="jailbroken")
def test_load_study_raises_only_user_errors(changes, base):
    study = library(load_study, _merge(builtin_raw(base), changes))
    if not isinstance(study, Exception):
        study_dict(study)
        study.points()
        for seed in study.seeds[:1]:
            World(study.world, seed)  # the world a valid study describes can be drawn


def _sets(changes: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in changes.items():
        if isinstance(v, dict) and k not in ("sweep",) and v:
            out += _sets(v, f"{prefix}{k}.")
        else:
            text = toml_value(v)
            if text is not None:
                out += ["--set", f"{prefix}{k}={text}"]
    return out


cli_junk = st.one_of(bad_ints, st.floats(allow_nan=True), short_text, st.lists(st.integers(), max_size=2))


@fuzz(0.75)
@given(changes=study_changes(cli_junk), seeds=st.one_of(st.none(), st.sampled_from(["1", "0", "-1", "x",
                                                                                    "9223372036854775807", "101"])),
       threads=st.one_of(st.none(), st.sampled_from(["1", "-1", "100000", "nan"])),
       out=st.sampled_from(["ok", "ok", "/dev/null/x"]))
def test_fissure_lab_run_exits_0_or_2(changes, seeds, threads, out, tmp_path_factory):
    root = tmp_path_factory.mktemp("lab-fuzz")
    args = ["lab", "run", *_sets(CHEAP), *_sets(changes)]
    # what keeps a valid study cheap goes last unless the example fuzzes it
    for key, value in (("stage1.steps", 1), ("stage2.steps", 1), ("world.n_entities", 2)):
        section, field = key.split(".")
        if not isinstance(changes.get(section), dict) or field not in changes[section]:
            args += ["--set", f"{key}={value}"]
    if seeds is not None:
        args += ["--seeds", seeds]
    if threads is not None:
        args += ["--threads", threads]
    args += ["--out-dir", root / "runs" if out == "ok" else out, "--json"]
    cli(args, root / "runs" if out == "ok" else None)
