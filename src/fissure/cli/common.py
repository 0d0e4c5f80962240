"""What every command shares: one-line errors, JSON on stdout, logs on stderr."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from ..errors import UserError
from ..utils import bf16_verdict, resolve_dtype

# Options shared by the verbs that load a model (one definition, the same help everywhere).
BackendOption = Annotated[str, typer.Option(help="auto | native | transformers (for HF dirs and GGUF files).")]
ServedModelOption = Annotated[str, typer.Option("--model", help="Model name on an OpenAI-compatible server.")]


def _dtype_choice(value: str) -> str:
    """``--dtype auto`` becomes what it means on this CPU, said on stderr with the reason."""
    if value != "auto":
        return value
    chosen, (_, why) = resolve_dtype(value), bf16_verdict()
    err.print(f"dtype auto: {chosen} ({why})")
    return chosen


DtypeOption = Annotated[str, typer.Option(
    callback=_dtype_choice,
    help="Weights of local models: fp32 | bf16 | int8 | int4 (faster decoding, slightly different numbers) | "
         "auto (bf16 where this CPU computes it fast, else fp32; the choice is printed).")]
ThreadsOption = Annotated[int, typer.Option(help="Torch threads (0 = free cores).")]
OutDirOption = Annotated[str, typer.Option(help="Where the run directory goes.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
ConcurrencyOption = Annotated[int, typer.Option(
    help="Requests in flight at once to a model behind a URL (1-256; local models ignore it). [default: 4]")]
ChatTemplateOption = Annotated[str, typer.Option(
    "--chat-template", help="Who renders chat prompts for a model behind a URL: server (its own template, via "
    "/v1/chat/completions) | model (the model's own template, rendered here and sent to /v1/completions; from "
    "--template-from or the server's /props). [default: server]")]
TemplateFromOption = Annotated[str, typer.Option(
    "--template-from", help="A local copy of the served model (.gguf, HF dir, registered name) whose chat template "
    "is the model's own: used by --chat-template model, and to check the server's rendering against it.")]
ModelArgument = Annotated[str, typer.Argument(
    help="Model spec: registered name, checkpoint dir, HF dir, .gguf file, or URL (see `fissure models list`).")]

# Human-readable output goes to stdout unless --json is given; progress and logs to stderr. Neither
# console reads markup: user text ("nope[/].toml", a prompt) is printed as it is; styles come only
# from :func:`styled`.
out = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)


def styled(*parts: str | tuple[str, str]) -> Text:
    """A line from plain strings and ``(text, style)`` pairs; no text is parsed as markup."""
    return Text.assemble(*parts)


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` as one line (line breaks become spaces; bytes a terminal could not show,
    such as a lone surrogate from a non-UTF-8 argument, are escaped) and exit with ``code``."""
    text = " ".join(str(message).split()).encode("utf-8", "backslashreplace").decode("utf-8")
    err.print(styled(("error:", "bold red"), " ", text), soft_wrap=True)
    raise typer.Exit(code)


def check_text(option: str, values: list[str] | str | None) -> None:
    """A text option that goes to a model must be Unicode text: an argument whose bytes are not
    UTF-8 arrives as lone surrogates, which no tokenizer (or JSON request) can encode."""
    for value in [values] if isinstance(values, str) else values or []:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(f"{option} holds bytes that are not UTF-8 text (U+{ord(value[exc.start]):04X} at "
                            f"character {exc.start}): {value[:40]!r}") from None


def http_options(model: str, concurrency: int | None, chat_template: str | None,
                 template_from: str | None) -> dict:
    """``load`` options for a model behind a URL (checked first; ``{}`` for a local model, which
    renders chats with its own template and runs one request at a time)."""
    from ..backends.http import CHAT_TEMPLATES, MAX_CONCURRENCY

    if concurrency is not None and not 1 <= concurrency <= MAX_CONCURRENCY:
        raise UserError(f"--concurrency must be from 1 to {MAX_CONCURRENCY}, not {concurrency}")
    if chat_template is not None and chat_template not in CHAT_TEMPLATES:
        raise UserError(f"--chat-template must be {' or '.join(CHAT_TEMPLATES)}, not '{chat_template}'")
    if not str(model).startswith(("http://", "https://")):
        return {}
    options: dict = {"concurrency": 4 if concurrency is None else concurrency,
                     "chat_template": chat_template or "server"}
    if template_from:
        from ..backends import load_chat_template

        options["template"], options["template_source"] = load_chat_template(template_from)
    return options


def chat_template_record(lm) -> dict:
    """Who rendered the chats of a run: for results and run records."""
    info = getattr(lm, "chat_template_info", None)
    if isinstance(info, dict):
        record = {**info, "concurrency": getattr(lm, "concurrency", None)}
        return {k: v for k, v in record.items() if v is not None}  # TOML has no null
    return {"mode": "model", "template_source": "local backend"}


def warn_template_disagreements(checks: list[dict]) -> None:
    """One warning line on stderr for each prompt the server's and the model's templates render differently."""
    for r in checks:
        if r.get("agree") is False:
            err.print(f"warning: the server's chat template and the model's render prompt {r.get('prompt', 0)} "
                      f"differently ({r['method']}: {r['detail']})", soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def guard(fn):
    """Turn a :class:`UserError` into one red line and a non-zero exit code (no traceback)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; results written so far are kept in the run directory", 130)

    return wrapper
