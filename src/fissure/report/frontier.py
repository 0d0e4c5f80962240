"""``report.html`` of ``fissure frontier``: quality against diversity per decoding setting, the Pareto
front, the recommendations, Holtzman et al.'s Table 1 replayed, and example continuations."""

from __future__ import annotations

import json
from pathlib import Path

from ..runs import read_jsonl, write_text_atomic
from .html import Raw, bullets, interval, num, page, paragraph, section, table
from .plots import scatter_plot

EXAMPLES = 3  # continuations shown per setting


def _pair(iv: dict | None) -> tuple[float, float] | None:
    return (iv["low"], iv["high"]) if iv else None


def _x(iv: dict | None) -> float:
    return iv["estimate"] if iv else float("nan")


def _pct(iv: dict | None) -> str:
    if not iv:
        return "n/a"
    return interval({**iv, **{k: 100 * iv[k] for k in ("estimate", "low", "high")}}, 0)


def render_frontier_report(results: dict, samples: list[dict]) -> str:
    settings, human = results["settings"], results["human"]
    q, d = results["quality_axis"], results["diversity_axis"]
    d_note = "" if results["diversity_higher_is_better"] else " (lower = more diverse)"
    points = [(r["name"], _x(r[d]), _x(r[q]), _pair(r[d]), _pair(r[q]), r["on_front"]) for r in settings]
    marker = ("human", _x(human[d]), _x(human[q])) if human and human.get(q) else None
    plot = scatter_plot(points, f"{q} against {d}: the Pareto front in red", f"{d}{d_note}", f"{q} (higher = better)",
                        marker=marker)
    has_refs = any(r["bleu"] for r in settings)
    head = ["setting", "decoding", "log-lik/token", "perplexity", *(["BLEU", "chrF"] if has_refs else []),
            "distinct-2", "entropy-2 (bits)", "self-BLEU", "repeated 4-grams %", "ending in a loop %", "words",
            "tokens/s", "front"]

    def row(r: dict, name: str, signature: str, speed: str, front: str) -> list:
        return [name, signature, interval(r["loglik_per_token"], 3), interval(r["perplexity"], 1),
                *([interval(r["bleu"], 1), interval(r["chrf"], 1)] if has_refs else []),
                interval(r["distinct_2"], 3), interval(r["entropy_2"], 2), interval(r["self_bleu"], 1),
                _pct(r["repetition_4"]), _pct(r["loops"]), interval(r["length"], 1), speed, front]

    rows = [row(r, r["name"], r["signature"], num(r["tokens_per_second"], 1), "yes" if r["on_front"] else "")
            for r in settings]
    if human:
        rows.append(row({**human, "bleu": None, "chrf": None}, "human continuations", "", "", ""))
    picks = [(f"weight {p['weight_on_quality']:g} on quality: {p['setting']}", None)
             for p in results["recommendations"]]
    h = results["holtzman"]
    h_rows = [[t["method"], t["setting"] or "", interval(t["perplexity"], 1), interval(t["self_bleu"], 1),
               interval(t["zipf"], 2), _pct(t["loops"])] for t in h["table"]]
    verdicts = [(line, None if c["holds"] is None else "good" if c["holds"] else "bad")
                for line, c in zip(h["lines"], h["checks"])]
    by_setting: dict[str, list[dict]] = {}
    for s in samples:
        by_setting.setdefault(s["setting"], []).append(s)
    examples = [[name, s["prompt"], s["text"], s["loop"] or ""]
                for name, rows_ in by_setting.items() for s in rows_[:EXAMPLES]]
    body = [
        paragraph(f"{results['model']}, quality scored by {results['reference']}; {results['n_prompts']} prompts "
                  f"({results['prompts']}), one continuation of at most {results['max_new_tokens']} tokens per "
                  f"prompt and setting; seed {results['seed']}; {results['wall_seconds']:.0f} s. n-gram statistics "
                  "count words. Intervals are 95%: bootstrap over prompts for means and ratios, jackknife over "
                  "prompts for pooled statistics (distinct-n, entropy, Zipf), Wilson for shares."),
        section("What the numbers say", bullets((line, None) for line in results["summary"])),
        section("Quality against diversity", Raw(plot),
                paragraph("Each dot is a setting with its intervals; the dashed red line joins the settings no other "
                          "setting beats on both axes. The blue cross is the human continuations.", "note")),
        section("Recommended settings", bullets(picks) if picks else paragraph("No setting has both axes measured.")),
        section("Every setting", table(head, rows)),
        section("Holtzman et al. 2020, Table 1, measured here",
                table(["method", "setting", "perplexity", "self-BLEU", "Zipf coefficient", "ending in a loop %"],
                      h_rows), bullets(verdicts),
                paragraph("The paper measured GPT-2 Large on 5,000 WebText contexts with 200-token continuations and "
                          "BPE tokens; here a smaller model, fewer prompts and shorter continuations, with words: "
                          "the orderings, not the values, are comparable. Self-BLEU is on sacrebleu's 0-100 scale.",
                          "note")),
        section("Examples", table(["setting", "prompt", "continuation", "loop"], examples, text_columns=(1, 2, 3))),
    ]
    return page(f"fissure frontier: {results['model']}", body)


def write_frontier_report(run_dir: str | Path, results: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    results = results or json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
    samples = [row for _, row in read_jsonl(run_dir / "samples.jsonl")]
    path = run_dir / "report.html"
    write_text_atomic(path, render_frontier_report(results, samples))
    return path
