"""``dtype = "auto"``: bf16 only where this CPU's kernels compute it fast, by its flags and a timed
matmul; the choice and its reason are said, and recorded."""

import torch


def _bf16_verdict(monkeypatch, flags: list[str], gflops: dict) -> tuple[bool, list]:
    import fissure.utils as utils
    timed = []

    def fake_gflops(dtype, n=1536, repeats=5):
        timed.append(dtype)
        threads_when_timed.append(torch.get_num_threads())
        return gflops[dtype]

    threads_when_timed = []

    monkeypatch.setattr(utils, "cpu_features", lambda: {"torch_capability": "X", "flags": flags})
    monkeypatch.setattr(utils, "matmul_gflops", fake_gflops)
    utils.bf16_verdict.cache_clear()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        verdict, reason = utils.bf16_verdict()
        assert reason  # always says why
        # timed on one thread (a two-thread matmul this small stalls when a neighbour holds a core),
        # and the caller's thread count given back
        assert set(threads_when_timed) <= {1} and torch.get_num_threads() == 2
        return verdict, timed
    finally:
        torch.set_num_threads(before)
        utils.bf16_verdict.cache_clear()


def test_auto_dtype_is_bf16_only_where_the_flags_promise_it_and_a_timed_matmul_keeps_the_promise(monkeypatch):
    # AVX2 only: fp32 without timing anything (a bf16 matmul there crawls at 1 GFLOP/s)
    assert _bf16_verdict(monkeypatch, ["avx2"], {}) == (False, [])
    # the flags promise bf16 and the kernels use it (AVX-512 BF16: about 2.5x fp32)
    fast, timed = _bf16_verdict(monkeypatch, ["avx2", "avx512f", "avx512_bf16"],
                                {torch.bfloat16: 400.0, torch.float32: 160.0})
    assert fast and set(timed) == {torch.bfloat16, torch.float32}
    # the flags promise it but the kernels do not deliver (ONEDNN_MAX_CPU_ISA=AVX2 measured 2 vs 180)
    assert _bf16_verdict(monkeypatch, ["avx2", "amx_bf16"], {torch.bfloat16: 2.0, torch.float32: 180.0})[0] is False
    # the line is half of fp32's rate
    assert _bf16_verdict(monkeypatch, ["avx512_bf16"], {torch.bfloat16: 79.0, torch.float32: 160.0})[0] is False
    assert _bf16_verdict(monkeypatch, ["avx512_bf16"], {torch.bfloat16: 81.0, torch.float32: 160.0})[0] is True


def test_resolve_dtype_follows_the_measured_verdict(monkeypatch):
    import fissure.utils as utils
    for verdict, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(utils, "bf16_verdict", lambda v=verdict: (v, "measured"))
        assert utils.resolve_dtype("auto") == expected
        assert utils.resolve_dtype("fp32") == "fp32" and utils.resolve_dtype("bf16") == "bf16"


def test_matmul_gflops_measures_a_real_rate():
    from fissure.utils import matmul_gflops
    torch.set_num_threads(1)
    rate = matmul_gflops(torch.float32, n=128, repeats=2)
    assert 0.05 < rate < 10_000  # a plausible CPU rate, not zero, not infinite


def test_auto_dtype_is_fp32_when_the_math_library_is_held_to_avx2():
    """A real CPU, not a mock: with oneDNN, MKL and torch's own kernels held to AVX2, bf16 matmuls
    crawl even on a CPU whose flags promise bf16, and ``auto`` must see it. Without the cap, ``auto``
    follows the flags (this machine kind has both: AVX-512 BF16, or AVX2 only)."""
    import os
    import subprocess
    import sys

    from fissure.utils import cpu_features
    code = ("from fissure.utils import cpu_features, resolve_dtype; "
            "print(resolve_dtype('auto'), cpu_features()['torch_capability'], sorted(cpu_features()['isa_caps']))")
    capped = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    env = {k: v for k, v in os.environ.items() if k not in capped} | {"OMP_NUM_THREADS": "1"}

    def run(extra: dict) -> str:
        return subprocess.run([sys.executable, "-c", code], env=env | extra, capture_output=True, text=True,
                              check=True).stdout.strip()

    assert run(capped) == f"fp32 AVX2 {sorted(capped)}"  # and the run's meta says it was held there
    has_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_features()["flags"]))
    assert run({}).split(" ", 1)[0] == ("bf16" if has_bf16 else "fp32")


def test_load_and_the_cli_resolve_auto_and_say_what_they_chose(tiny_llama, tmp_path):
    """``fissure.load(dtype="auto")`` and ``--dtype auto`` run the model in what ``auto`` means here;
    the CLI says which and why on stderr, and records the chosen dtype, not "auto"."""
    import json
    import tomllib

    from typer.testing import CliRunner

    import fissure
    from fissure.backends import BackendError
    from fissure.cli import app
    from fissure.utils import bf16_verdict, resolve_dtype

    chosen = resolve_dtype("auto")
    assert chosen in ("bf16", "fp32")
    want = torch.bfloat16 if chosen == "bf16" else torch.float32
    assert fissure.load(str(tiny_llama[0]), dtype="auto").model.tok_emb.weight.dtype == want
    try:
        fissure.load(str(tiny_llama[0]), dtype="fp16")
        raise AssertionError("fp16 is not a dtype fissure runs")
    except BackendError as exc:
        assert "unknown dtype 'fp16' (auto, fp32, bf16, int8, int4)" in str(exc)
    result = CliRunner().invoke(app, ["generate", str(tiny_llama[0]), "--prompt", "the cat", "--max-new-tokens", "4",
                                      "--dtype", "auto", "--out-dir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())  # rich wraps long lines at the terminal's width
    assert f"dtype auto: {chosen} ({bf16_verdict()[1]})" in said
    json.loads(result.stdout)
    config = tomllib.loads(next(tmp_path.glob("generate-*/config.toml")).read_text())
    assert config["dtype"] == chosen
