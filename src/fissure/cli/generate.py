"""``fissure generate MODEL --prompt ...``: decode text, streamed to the terminal."""

from __future__ import annotations

import typer

from ..runs import append_jsonl, run_directory, write_json
from .app import app
from .common import (BackendOption, ChatTemplateOption, ConcurrencyOption, DtypeOption, ModelArgument, OutDirOption,
                     ServedModelOption, TemplateFromOption, ThreadsOption, chat_template_record, check_text, err, guard,
                     http_options, out, print_json, styled, warn_template_disagreements)


@app.command(epilog='Examples: fissure generate runs/train-.../checkpoint --prompt "The" --top-p 0.9 --temperature 0.8\n\n'
             'fissure generate smollm2 --chat "What is the capital of France?"')
@guard
def generate(
    model: ModelArgument,
    prompt: list[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (repeatable: one generation each)."),
    chat: list[str] = typer.Option(None, "--chat", help="A user message, rendered with the model's chat template (repeatable)."),
    system: str = typer.Option(None, help="System message for --chat prompts."),
    max_new_tokens: int = typer.Option(None, help="Tokens to generate per prompt (default: 64, or what fits the context)."),
    temperature: float = typer.Option(None, help="Sampling temperature (implies sampling; 0 = greedy)."),
    top_k: int = typer.Option(None, help="Sample from the k most likely tokens (implies sampling)."),
    top_p: float = typer.Option(None, help="Nucleus sampling mass (implies sampling)."),
    repetition_penalty: float = typer.Option(1.0, help="Penalise tokens already present (HF semantics; 1 = off)."),
    num_beams: int = typer.Option(1, help="Beam search width (1 = no beam search)."),
    length_penalty: float = typer.Option(1.0, help="Beam search length penalty."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    seed: int = typer.Option(0, help="Random seed for sampling."),
    draft: str = typer.Option(None, help="Speculative decoding: a draft model with the same tokenizer (a spec), "
                              "layers:N (the model's first N layers) or dtype:int4 (a copy in int4; also bf16, int8). "
                              "Same output, maybe faster."),
    gamma: int = typer.Option(4, help="Speculative decoding: draft tokens per round."),
    adaptive_gamma: bool = typer.Option(False, help="Speculative decoding: grow gamma after a fully accepted round, "
                                        "shrink it otherwise."),
    backend: BackendOption = "auto",
    served_model: ServedModelOption = None,
    concurrency: ConcurrencyOption = None,
    chat_template: ChatTemplateOption = None,
    template_from: TemplateFromOption = None,
    dtype: DtypeOption = "fp32",
    compile: bool = typer.Option(False, "--compile", help="Compile the decoding step (torch.compile; native Llama, "
                                 "greedy or sampling): about a minute before the first token, then faster tokens."),
    threads: ThreadsOption = 0,
    out_dir: OutDirOption = "runs",
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (no streaming)."),
) -> None:
    """Generate continuations of prompts (or replies to chat messages). Greedy unless a sampling option is given."""
    import dataclasses

    from ..backends import TorchLM, load
    from ..backends.speculative import speculative
    from ..decode import Decoding
    from ..decode.speculative import MAX_GAMMA
    from ..errors import UserError
    from ..utils import set_threads

    check_text("--prompt", prompt)
    check_text("--chat", chat)
    check_text("--system", system)
    check_text("--stop", stop)
    prompts: list = list(prompt or [])
    for message in chat or []:
        prompts.append(([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}])
    if not prompts:
        raise UserError("give at least one --prompt or --chat")
    if draft is not None and num_beams > 1:
        raise UserError("--draft (speculative decoding) does not combine with --num-beams > 1")
    if compile and (draft is not None or num_beams > 1):
        raise UserError("--compile speeds up greedy decoding and sampling, not --draft or --num-beams > 1")
    if draft is None and (gamma != 4 or adaptive_gamma):
        raise UserError("--gamma and --adaptive-gamma need --draft")
    if not 1 <= gamma <= MAX_GAMMA:
        raise UserError(f"--gamma must be between 1 and {MAX_GAMMA}, not {gamma}")
    sampling = any(v is not None for v in (temperature, top_k, top_p))
    # every setting is checked here, before the model loads (max_new_tokens may shrink to fit below)
    decoding = Decoding(max_new_tokens=64 if max_new_tokens is None else max_new_tokens,
                        do_sample=sampling and (temperature is None or temperature > 0),
                        temperature=1.0 if temperature in (None, 0) else temperature, top_k=top_k or 0,
                        top_p=1.0 if top_p is None else top_p, repetition_penalty=repetition_penalty,
                        num_beams=num_beams, length_penalty=length_penalty, stop=list(stop or []), seed=seed)
    remote = http_options(model, concurrency, chat_template, template_from)
    n_threads = set_threads(threads)
    lm = load(model, backend=backend, model=served_model, dtype=dtype, compile=compile, **remote)
    if draft is not None:
        lm = speculative(lm, draft, gamma=gamma, adaptive=adaptive_gamma, backend=backend, dtype=dtype)
    template = chat_template_record(lm)
    checks = lm.check_chat_templates(prompts) if remote else []
    warn_template_disagreements(checks)
    if max_new_tokens is None and isinstance(lm, TorchLM):
        longest = max(len(lm.tokenizer.encode(lm.render(p))) for p in prompts)
        decoding = dataclasses.replace(decoding, max_new_tokens=max(1, min(64, lm.capabilities.max_context - longest)))
    run = run_directory("generate", {"model": model, "backend": lm.capabilities.backend,
                                     "prompts": [str(p) for p in prompts], "decoding": decoding.to_dict(),
                                     "dtype": dtype, "compile": compile, "chat_template": template,
                                     "speculative": None if draft is None else {"draft": draft, "gamma": gamma,
                                                                                "adaptive_gamma": adaptive_gamma}},
                        seed, root=out_dir, threads=n_threads)
    stream = not as_json and len(prompts) == 1 and num_beams == 1 and isinstance(lm, TorchLM)
    streamed: list[int] = []
    printed = 0

    def on_token(row: int, token: int) -> None:
        nonlocal printed
        if not streamed:  # show the prompt once generation has really started
            shown = prompts[0] if isinstance(prompts[0], str) else ""
            out.print(shown, end="", style="bold", highlight=False, markup=False, soft_wrap=True)
        if token == lm.tokenizer.eos_id:
            return
        streamed.append(token)
        text = lm.tokenizer.decode(streamed)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.print(text[printed:], end="", highlight=False, markup=False, soft_wrap=True)
            printed = len(text)

    with run as run_dir:
        texts = lm.generate(prompts, decoding, on_token=on_token) if stream else lm.generate(prompts, decoding)
    append_jsonl(run_dir / "samples.jsonl", [{"prompt": p, "text": t} for p, t in zip(prompts, texts)])
    summary = {"texts": texts, "decoding": decoding.signature(), "model": model,
               "backend": lm.capabilities.backend, "chat_template": template, "run_dir": str(run_dir)}
    if checks:
        summary["chat_template_checks"] = checks
    if draft is not None:
        summary.update(draft=draft, gamma=gamma, acceptance_rate=lm.acceptance_rate,
                       drafted_tokens=lm.drafted, accepted_tokens=lm.accepted)
    write_json(run_dir / "results.json", summary)
    if as_json:
        print_json(summary)
    elif stream:
        out.print()
    else:
        for p, t in zip(prompts, texts):
            out.print(styled((p if isinstance(p, str) else p[-1]["content"], "bold")))
            out.print(t, highlight=False, markup=False)
    if draft is not None and lm.acceptance_rate is not None:
        err.print(f"draft {draft}: {lm.accepted} of {lm.drafted} draft tokens accepted "
                  f"(acceptance rate {lm.acceptance_rate:.3f})")
    err.print(f"run directory: {run_dir}")
