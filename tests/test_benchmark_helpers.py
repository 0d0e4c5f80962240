"""Helpers of the benchmark scripts that decide what a run reports (the races themselves are
run by hand: speed is proven in benchmarks/, never in timed tests)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).parents[1] / "benchmarks" / "decode_smollm2.py"


def load_decode_benchmark():
    spec = importlib.util.spec_from_file_location("decode_smollm2_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_llama_cpp_the_benchmark_states_its_last_measured_figure_with_its_date(tmp_path):
    last = load_decode_benchmark().last_llama_cpp
    raced = tmp_path / "raced.json"
    raced.write_text(json.dumps({"results": {"greedy_b1": {"llama.cpp_tokens_per_s": 113.6}},
                                 "llama_cpp_python": "0.3.36",
                                 "meta": {"created": "2026-12-04T22:36:00+0000", "git_commit": "48b77b6"}}))
    figure = last(raced)
    assert figure == {"tokens_per_s": 113.6, "created": "2026-12-04T22:36:00+0000", "git_commit": "48b77b6",
                      "llama_cpp_python": "0.3.36"}
    # a later run without llama.cpp carries the same figure forward, not its own date
    carried = tmp_path / "carried.json"
    carried.write_text(json.dumps({"results": {"greedy_b1": {"ours_tokens_per_s": 44.0}},
                                   "llama_cpp_last_measured": figure, "meta": {"created": "2026-12-05T10:00:00+0000"}}))
    assert last(carried) == figure
    never = tmp_path / "never.json"
    never.write_text(json.dumps({"results": {"greedy_b1": {"ours_tokens_per_s": 44.0}}, "meta": {}}))
    assert last(never) is None
    assert last(tmp_path / "missing.json") is None
    (tmp_path / "torn.json").write_text('{"results": ')
    assert last(tmp_path / "torn.json") is None
