"""``fissure generate`` on the tiny GPT with any option values (out of range, NaN, infinity, numbers
beyond 64 bits, lone surrogates in text, run directories that cannot be made): exit 0, or exit 2 with
one line and no run directory; and a Decoding built from any values is made or refused with a
ConfigError."""

from __future__ import annotations

from fuzz_support import HUGE_INTS, any_floats, arg_text, cli, fuzz, junk, library
from hypothesis import example, given
from hypothesis import strategies as st

from fissure.decode import Decoding

INT_TEXT = st.one_of(st.integers(-3, 40), st.sampled_from(HUGE_INTS)).map(str)
FLOAT_TEXT = st.one_of(st.floats(-2, 3), st.sampled_from(["nan", "inf", "-inf", "1e400", "-0", "x", ""]))
OPTIONS = {
    "--max-new-tokens": INT_TEXT, "--temperature": FLOAT_TEXT.map(str), "--top-k": INT_TEXT,
    "--top-p": FLOAT_TEXT.map(str), "--repetition-penalty": FLOAT_TEXT.map(str), "--num-beams": INT_TEXT,
    "--length-penalty": FLOAT_TEXT.map(str), "--seed": INT_TEXT, "--threads": st.sampled_from(["0", "1", "-1", "2000"]),
    "--stop": arg_text, "--system": arg_text, "--dtype": st.sampled_from(["fp32", "bf16", "int8", "int4", "fp16"]),
    "--backend": st.sampled_from(["auto", "native", "transformers", "nope"]),
}


@fuzz(2)
@given(options=st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=4).flatmap(
           lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys})),
       prompts=st.lists(arg_text, max_size=2), chats=st.lists(arg_text, max_size=1),
       out=st.sampled_from(["ok", "ok", "ok", "/dev/null/x"]))
@example(options={"--top-p": "2"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--max-new-tokens": "0"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--top-k": "-1"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--num-beams": "0"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--temperature": "-1"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--repetition-penalty": "nan"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--num-beams": "9223372036854775808"}, prompts=["hi"], chats=[], out="ok")
@example(options={"--threads": "-1"}, prompts=["hi"], chats=[], out="ok")
@example(options={}, prompts=["\udcff"], chats=[], out="ok")
@example(options={}, prompts=["hi"], chats=[], out="/dev/null/x")
def test_fissure_generate_exits_0_or_2(options, prompts, chats, out, tiny_ckpt, tmp_path_factory):
    root = tmp_path_factory.mktemp("generate-fuzz")
    args = ["generate", tiny_ckpt]
    for p in prompts:
        args += ["--prompt", p]
    for c in chats:
        args += ["--chat", c]
    for flag, value in options.items():
        args += [flag, value]
    if "--max-new-tokens" not in options:
        args += ["--max-new-tokens", "3"]
    args += ["--out-dir", root / "runs" if out == "ok" else out]
    cli(args, root / "runs" if out == "ok" else None)


@fuzz(4)
@given(kwargs=st.fixed_dictionaries({}, optional={
    "max_new_tokens": st.one_of(st.integers(-2, 10), junk()), "temperature": st.one_of(any_floats, junk()),
    "top_k": st.one_of(st.integers(-2, 10), junk()), "top_p": st.one_of(any_floats, junk()),
    "repetition_penalty": st.one_of(any_floats, junk()), "num_beams": st.one_of(st.integers(-1, 4), junk()),
    "length_penalty": st.one_of(any_floats, junk()), "early_stopping": junk(), "stop": junk(),
    "seed": junk(), "do_sample": st.booleans(), "eos_token_id": junk(), "pad_token_id": junk()}))
def test_decoding_raises_only_config_errors(kwargs):
    from fissure.errors import ConfigError

    result = library(Decoding, **kwargs)
    assert not isinstance(result, Exception) or isinstance(result, ConfigError)
