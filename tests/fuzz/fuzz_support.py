"""What the fuzz tests share: hypothesis settings (fixed seed, no example database), strategies for
bad values, and the CLI property (exit 0 or 2, one error line, no traceback, no run directory left)."""

from __future__ import annotations

import json
import math
import os
import traceback
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fissure.cli import app
from fissure.errors import UserError

# Examples per fuzz test (each test scales it by its weight); CI uses the default, a deeper search
# sets e.g. FISSURE_FUZZ_EXAMPLES=2000.
EXAMPLES = int(os.environ.get("FISSURE_FUZZ_EXAMPLES", "40"))


def fuzz(weight: float = 1.0):
    """Derandomized (a fixed seed per test: CI runs the same cases every time), no database, no deadline."""
    return settings(derandomize=True, database=None, deadline=None, max_examples=max(1, round(EXAMPLES * weight)),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example],
                    print_blob=True)


# --- values ----------------------------------------------------------------------------------

HUGE_INTS = [2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, 9223372036854775808, 10**400, -(2**63) - 1, -10**30]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 1e400]
huge_ints = st.sampled_from(HUGE_INTS)
bad_ints = st.one_of(st.sampled_from([-1, 0, -(10**9), *HUGE_INTS]), st.integers(max_value=0))
any_floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS))
short_text = st.text(max_size=12)
# the text a terminal can pass: any code point but NUL, lone surrogates included (non-UTF-8 argv bytes)
arg_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=()), max_size=16)

# Any JSON value, including deep nesting (built directly: hypothesis' recursive strategies stay shallow).
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_ints, any_floats, short_text)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(short_text, inner, max_size=3)), max_leaves=8)


@st.composite
def deep_json(draw) -> str:
    """A JSON text nested around the limits (64 levels of ours, ~1000 of Python's parser), as text:
    an object that deep would overflow the stack of whatever prints or compares it."""
    depth = draw(st.sampled_from([63, 64, 65, 200, 990, 3000, 10000]))
    if draw(st.booleans()):
        return "[" * depth + "1" + "]" * depth * draw(st.sampled_from([0, 1]))
    return '{"k": ' * depth + '"v"' + "}" * depth


def junk(allow_none: bool = True):
    """A value of the wrong type or range for any config field."""
    base = [json_values, bad_ints, any_floats, short_text, st.booleans()]
    return st.one_of(*base) if allow_none else st.one_of(*base).filter(lambda v: v is not None)


def field_value(valid):
    """Mostly a cheap valid value of a field, otherwise junk (wrong types, NaN, huge numbers, ...)."""
    return st.one_of(valid, junk())


# --- TOML text for values hypothesis makes (dump_toml cannot write what TOML cannot hold) ---------

def toml_value(v: object) -> str | None:
    """``v`` as a TOML value, or None where TOML has no form for it (null, NaN keeps its form)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string for these characters
    if isinstance(v, list):
        items = [toml_value(x) for x in v]
        return None if None in items else "[" + ", ".join(items) + "]"
    if isinstance(v, dict):
        items = {k: toml_value(x) for k, x in v.items()}
        if None in items.values():
            return None
        return "{" + ", ".join(f"{json.dumps(k)} = {x}" for k, x in items.items()) + "}"
    return None


# --- the properties ----------------------------------------------------------------------------

def library(fn, *args, **kwargs):
    """Run ``fn``: it returns, or raises a UserError; anything else is a bug (re-raised)."""
    try:
        return fn(*args, **kwargs)
    except UserError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} with an empty message"
        return exc


_runner = CliRunner()


def run_dirs(out_dir: Path | None) -> list[Path]:
    return sorted(p for p in Path(out_dir).iterdir()) if out_dir and Path(out_dir).is_dir() else []


def cli(args: list, out_dir: Path | None = None):
    """Invoke the CLI and check the promise: exit 0, or exit 2 with one ``error:`` line (or click's
    usage message for an option of the wrong form) and no run directory left; never a traceback."""
    before = run_dirs(out_dir)
    threads = torch.get_num_threads()
    try:
        result = _runner.invoke(app, [str(a) for a in args])
    finally:
        torch.set_num_threads(threads)  # a --threads value must not leak into the next example
    where = f"fissure {' '.join(map(str, args))!r}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        tb = "".join(traceback.format_exception(*result.exc_info))
        raise AssertionError(f"{where} crashed:\n{tb}")
    output = result.output
    assert result.exit_code in (0, 2), f"{where}: exit {result.exit_code}\n{output}"
    assert "Traceback" not in output, f"{where}\n{output}"
    if result.exit_code == 2:
        if "Usage:" not in output:  # not a click parse error: ours, from guard
            lines = [ln for ln in output.strip().splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("error:")]
            assert len(errors) == 1 and lines[-1] == errors[0], f"{where}: not one error line\n{output}"
            assert len(errors[0]) > len("error: "), f"{where}: an empty error\n{output}"
        assert run_dirs(out_dir) == before, f"{where}: exit 2 left a run directory\n{output}"
    return result
