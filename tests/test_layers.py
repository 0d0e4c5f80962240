"""Layers point one way (docs/architecture.md): a module imports only from its own layer or below,
and no chain of imports (module-level or inside functions) comes back to where it started."""

import ast
from pathlib import Path

import fissure

ROOT = Path(fissure.__file__).parent

# Lowest first. A module may import from its own layer and the layers before it, never after.
LAYERS = [
    ("errors", "_version", "utils", "config", "runs", "executors"),  # foundation: no model, no torch code paths
    ("text",),  # corpora, tokenizers, token files, text encodings
    ("models",),  # GPT, Llama and their loaders
    ("decode",),  # processors, search: any model with the causal-model protocol
    ("train",),  # objectives, Trainer, checkpoints
    ("backends",),  # LanguageModel and everything that runs a model to score or generate
    ("metrics",),  # computed from scores and texts only
    ("tune",),  # fine-tuning runs: a base loaded through backends, adapted, trained, saved
    ("judges",),  # verdicts on replies, sample records
    ("probes",),  # attacks, policies, the probe suite
    ("diagnose",),  # adapt a model and measure the cost: specialisation against forgetting
    ("lab",),  # model organisms: a client of probes and backends
    ("report",),  # HTML pages from results and samples
    ("pipelines",),  # fissure.pipeline(task, model=...): HF pipelines' call shapes over every layer above
    ("cli", "__init__", "__main__"),  # the command line and the package's public face
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (ROOT.parent / name.replace(".", "/") / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Every fissure module ``path`` imports, at module level or inside functions."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fissure"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fissure":
                continue
            subs = [f"{target}.{a.name}" for a in node.names if is_package(target) and
                    ((ROOT.parent / f"{target}.{a.name}".replace(".", "/")).with_suffix(".py").is_file()
                     or is_package(f"{target}.{a.name}"))]
            found |= set(subs) if len(subs) == len(node.names) else {target, *subs}
    return found - {here}


def layer(module: str) -> int:
    parts = module.split(".")
    return RANK["__init__"] if len(parts) == 1 else RANK[parts[1]]


GRAPH = {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def test_every_module_has_a_layer():
    unknown = sorted({m.split(".")[1] for m in GRAPH if "." in m} - set(RANK))
    assert not unknown, f"add these to LAYERS (and docs/architecture.md): {unknown}"


def test_imports_point_down():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
              for m, targets in GRAPH.items() for t in sorted(targets) if layer(t) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in GRAPH:
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_imports():
    # guards the tests above against a parser that finds nothing
    assert "fissure.backends.base" in GRAPH["fissure.backends.torch_lm"]
    assert "fissure.errors" in GRAPH["fissure.models.llama"]
    assert any(t.startswith("fissure.backends") for t in GRAPH["fissure.cli.generate"])  # inside a function
    assert layer("fissure.probes.suite") > layer("fissure.backends.base")
