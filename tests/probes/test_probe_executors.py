"""Probe shards on a process pool give the serial run's samples and results; a served model is not sharded."""

import pytest
from typer.testing import CliRunner

from fissure.cli import app
from fissure.errors import UserError
from fissure.executors import open_executor
from fissure.judges import read_samples
from fissure.probes.suite import SuiteConfig, run_suite
from fissure.probes.suite.run import ProbeRun, _split, load_model
from fissure.runs import start_run

RUN_ONLY = ("throughput", "run_dir", "executor")  # what may differ between two runs of the same config


def probe(tmp_path, model: str, executor: str) -> tuple[dict, list[dict]]:
    config = SuiteConfig(model=model, attacks=["none", "prefix_injection", "rot13"], twins=2, samples=2,
                         temperatures=[0.0, 1.0], max_new_tokens=8, batch_size=3, whitebox=False)
    run_dir = start_run("probe", config.as_dict(), config.seed, root=tmp_path / executor.replace(":", "-"))
    with open_executor(executor, cpus_per_task=1) as pool:
        results = run_suite(load_model(config), config, run_dir, executor=pool, threads=1)
    samples = sorted(({k: v for k, v in s.as_dict().items() if k != "seconds"}
                      for s in read_samples(run_dir / "samples.jsonl")), key=lambda s: s["key"])
    return results, samples


def test_split_cuts_batches_into_contiguous_nearly_equal_shards():
    assert [len(part) for part in _split(5, 2)] in ([2, 3], [3, 2])
    assert _split(2, 8) == [range(0, 1), range(1, 2)]  # never an empty shard
    assert [i for part in _split(11, 3) for i in part] == list(range(11))


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local:2", "ray"])
def test_shards_give_the_serial_samples_and_results(tiny_llama, tmp_path, executor):
    serial, serial_samples = probe(tmp_path, str(tiny_llama[0]), "serial")
    if executor == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")  # the executor uses this one
        try:
            pooled, pooled_samples = probe(tmp_path, str(tiny_llama[0]), executor)
        finally:
            ray.shutdown()
    else:
        pooled, pooled_samples = probe(tmp_path, str(tiny_llama[0]), executor)
    assert pooled["executor"] == executor and serial["executor"] == "serial"
    assert pooled_samples == serial_samples and len(serial_samples) == serial["throughput"]["prompts"]
    assert any(s["temperature"] == 1.0 for s in serial_samples)  # sampled replies are the same too
    assert {k: v for k, v in pooled.items() if k not in RUN_ONLY} == \
        {k: v for k, v in serial.items() if k not in RUN_ONLY}


def test_a_served_model_is_not_sharded(tmp_path):
    class Served:
        streams_results = True

    config = SuiteConfig(model="http://localhost:1/v1", whitebox=False)
    with pytest.raises(UserError, match="served model is not sharded"):
        ProbeRun(Served(), config, tmp_path, executor=open_executor("local:2"))


def test_cli_refuses_a_bad_executor_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["probe", "smollm2", "--executor", "ray://nowhere",
                                      "--out-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2 and "ray://host:port" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


def test_batches_group_prompts_by_their_length_in_the_models_tokens(tiny_llama, tmp_path):
    """Batches are cut from the prompts sorted by token count (the HF tokenizer's, an independent
    count), not by characters, which order encoded attacks differently."""
    from fissure.probes.suite.plan import plan

    path, _, hf_tok = tiny_llama
    config = SuiteConfig(model=str(path), attacks=["none", "base64", "rot13", "leetspeak"], twins=0,
                         batch_size=5, whitebox=False)
    run = ProbeRun(load_model(config), config, tmp_path)
    items = [it for it in plan(config, run.policy) if it.kind != "capability"]
    batches = run._batches(items)
    assert sorted(it.key for b, _, _ in batches for it in b) == sorted(it.key for it in items)

    def tokens(prompt):
        return len(hf_tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))

    lengths = [[tokens(p) for p in prompts] for _, prompts, _ in batches]
    flat = [n for batch in lengths for n in batch]
    assert flat == sorted(flat), lengths
    by_chars = sorted(items, key=lambda it: len(it.attack_prompt.text))
    assert [it.key for it in by_chars] != [it.key for b, _, _ in batches for it in b]  # the two orders differ here
