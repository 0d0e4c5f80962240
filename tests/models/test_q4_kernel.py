"""fissure's int4 kernel (``models/q4_kernel.cpp``): each build (AVX2, plain C++) computes the
int4 scheme as written out independently in tests/conftest.py, on shapes that exercise every path
(pairs of groups, a lone group, rows that do not fill a block of 4, several
activation rows, a bias); without a compiler the layers fall back to the same sums in torch; and a
compiled decoding step calls the kernel without breaking its graph."""

import copy
import os
import subprocess
import sys

import pytest
import torch

from fissure.models import q4_kernel
from fissure.models.quantize import Int4Linear
from fissure.utils import cpu_features

# (activation rows, outputs, inputs): 9 and 3 groups leave a lone one after pairs, 32 inputs are one; 7 and 13 outputs leave rows outside a block of 4
SHAPES = [(1, 960, 576), (3, 7, 96), (2, 13, 32), (32, 40, 288), (1, 48, 256), (5, 12, 1536)]

CHECK = """
import torch
from fissure.models import q4_kernel
assert q4_kernel.kernel_isa() == {isa!r}, q4_kernel.kernel_isa()
assert q4_kernel.kernel_loaded()
torch.manual_seed(0)
for m, n, k in {shapes!r}:
    w, x, b = torch.randn(n, k), torch.randn(m, k), torch.randn(n)
    x[0, :32] = 0.0  # a group of zeros: its step is 0
    packed = q4_kernel.pack(w)
    for bias in (b, None):
        got = torch.ops.fissure.q4_linear(x, *packed, bias).double()
        want = q4_kernel.q4_linear_reference(x, *packed, bias, dtype=torch.float64)
        err = ((got - want).abs().max() / want.abs().max()).item()
        assert err < 1e-5, (m, n, k, err)
print("ok")
"""


def run_python(code: str, capability: str | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter, torch's dispatch level held to ``capability`` (None: the CPU's)."""
    env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("isa, capability", [("avx2", None), ("scalar", "default")])
def test_each_build_computes_the_same_sums(isa, capability):
    if isa == "avx2" and "avx2" not in cpu_features()["flags"]:
        pytest.skip("this CPU has no AVX2")
    result = run_python(CHECK.format(isa=isa, shapes=SHAPES), capability)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_the_torch_fallback_is_the_scheme_written_out_in_the_tests(int4_scheme):
    torch.manual_seed(0)
    for m, n, k in SHAPES:
        lin = torch.nn.Linear(k, n)
        x = torch.randn(m, k)
        packed = q4_kernel.pack(lin.weight)
        got = q4_kernel.q4_linear_reference(x, *packed, lin.bias.detach(), dtype=torch.float64)
        want = int4_scheme(copy.deepcopy(lin))(x.double())
        assert ((got - want).abs().max() / want.abs().max()) < 1e-6, (m, n, k)  # its activation sums are fp32


def test_without_a_compiler_int4_layers_compute_in_torch_and_say_so():
    code = """
import warnings, torch
import torch.utils.cpp_extension as ext
def no_compiler(*a, **k):
    raise RuntimeError("Error building extension: g++ not found")
ext.load = no_compiler
from fissure.models import q4_kernel
from fissure.models.quantize import Int4Linear
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    layer = Int4Linear(torch.nn.Linear(64, 8))
assert not layer.fast
assert any("could not be built" in str(w.message) and "g++ not found" in str(w.message) for w in caught), caught
x = torch.randn(2, 64)
want = q4_kernel.q4_linear_reference(x, layer.weight_int4, layer.scales, layer.mins, layer.bias)
assert torch.equal(layer(x), want)
print("ok")
"""
    result = run_python(code)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


def test_pack_refuses_weights_fp16_cannot_hold():
    with pytest.raises(ValueError, match="65504"):
        q4_kernel.pack(torch.full((4, 32), 1e6))


def test_a_compiled_step_calls_the_kernel_without_breaking_its_graph():
    """An int4 Llama's compiled decoding step gives the eager int4 model's greedy tokens (the same
    kernel, opaque to inductor) and compiles as one graph: a Python-level check in the layer once
    broke it per layer (dozens of graphs, slower than eager)."""
    from torch._dynamo.utils import counters

    from fissure.decode import Decoding, generate
    from fissure.models.llama import Llama, LlamaConfig
    from fissure.models.quantize import quantize_int4

    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=96, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=64,
                              intermediate_size=128)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # decisive logits, as a trained model's
    quantize_int4(model.fuse_projections())
    assert isinstance(model.lm_head, Int4Linear) and model.lm_head.fast
    prompts, d = [[1, 2, 3, 4]], Decoding(max_new_tokens=10)
    eager = generate(model, prompts, d).sequences
    counters.clear()
    model.compile_decode_step()
    assert generate(model, prompts, d).sequences == eager
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_the_op_reads_a_strided_bias_as_it_is_and_refuses_a_wrong_one():
    torch.manual_seed(0)
    assert q4_kernel.kernel_loaded()
    packed, x = q4_kernel.pack(torch.randn(8, 64)), torch.randn(3, 64)
    strided = torch.randn(8, 2)[:, 0]  # every other float of its storage
    assert torch.equal(torch.ops.fissure.q4_linear(x, *packed, strided),
                       torch.ops.fissure.q4_linear(x, *packed, strided.contiguous()))
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.fissure.q4_linear(x, *packed, torch.randn(8).double())
    with pytest.raises(RuntimeError, match="bias"):
        torch.ops.fissure.q4_linear(x, *packed, torch.randn(7))
