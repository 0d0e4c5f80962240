"""fissure.pipeline against HF transformers' pipelines on the same model and inputs: the same keys,
types and nesting, and (greedy decoding of the same weights) the same text."""

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaModel, pipeline as hf_pipeline

import fissure
from fissure.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def pipes(tiny_llama):
    torch.set_num_threads(1)
    ours = fissure.pipeline("text-generation", model=tiny_llama[0])
    theirs = hf_pipeline("text-generation", model=tiny_llama[1], tokenizer=tiny_llama[2])
    return ours, theirs


@pytest.mark.parametrize("inputs", ["the cat sat", ["the cat sat", "hello world, one two"],
                                    [{"role": "user", "content": "say cat"}],
                                    [[{"role": "user", "content": "say cat"}], [{"role": "user", "content": "hi"}]]],
                         ids=["string", "strings", "chat", "chats"])
@pytest.mark.parametrize("full", [True, False])
def test_text_generation_returns_what_hf_returns(pipes, inputs, full):
    ours, theirs = pipes
    got = ours(inputs, max_new_tokens=8, return_full_text=full)
    want = theirs(inputs, max_new_tokens=8, do_sample=False, return_full_text=full)
    assert got == want


def test_sampling_gives_num_return_sequences_each(pipes):
    ours, _ = pipes
    got = ours(["the cat", "a dog"], max_new_tokens=6, do_sample=True, num_return_sequences=3, seed=1)
    assert [len(g) for g in got] == [3, 3]
    assert all(d["generated_text"].startswith(p) for p, g in zip(["the cat", "a dog"], got) for d in g)
    with pytest.raises(ConfigError, match="needs sampling"):
        ours("the cat", num_return_sequences=2)


def test_bad_pipeline_calls_say_what_is_wrong(tiny_llama):
    with pytest.raises(ConfigError, match="unknown pipeline task 'summarise'"):
        fissure.pipeline("summarise", model=tiny_llama[0])
    with pytest.raises(ConfigError, match="needs model="):
        fissure.pipeline("text-generation")
    with pytest.raises(CheckpointError, match="not a tuned classifier"):
        fissure.pipeline("text-classification", model=tiny_llama[0])
    with pytest.raises(ConfigError, match="takes a string"):
        fissure.pipeline("text-generation", model=tiny_llama[0])([1, 2])


def test_text_classification_matches_hf_hidden_states_and_hf_output_shapes(tiny_llama, tmp_path):
    """A classifier tuned (full) on labelled rows, read back: scores equal softmax(head(HF LlamaModel's
    last-token state)) computed from the checkpoint by transformers, in HF's output shapes."""
    from fissure.tune import load_tune_config, read_tuning_data, run_tune

    rows = [{"text": "the cat sat on the mat" if i % 2 else "a dog ran in the park", "label": "cat" if i % 2 else "dog"}
            for i in range(40)]
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_tune_config({"model": str(tiny_llama[0]), "data": str(data), "max_length": 48, "method": "full",
                            "train": {"max_steps": 15, "batch_size": 8, "eval_every": 15, "eval_batches": 2, "lr": 1e-2,
                                      "progress": False, "dtype": "fp32", "threads": 1}})
    (tmp_path / "run").mkdir()
    summary = run_tune(cfg, read_tuning_data(cfg.data, cfg.text_column, cfg.label_column, cfg.labels), tmp_path / "run")
    ckpt = Path(summary["checkpoint"])
    classify = fissure.pipeline("sentiment-analysis", model=ckpt)
    texts = ["the cat sat on the mat", "a dog ran in the park", "hello"]

    from safetensors.torch import load_file

    head = load_file(str(ckpt / "head.safetensors"))
    hf = LlamaModel.from_pretrained(ckpt).eval()
    labels = ["cat", "dog"]
    want = []
    for text in texts:
        ids = torch.tensor([[tiny_llama[2].bos_token_id, *tiny_llama[2].encode(text)]])
        with torch.no_grad():
            state = hf(input_ids=ids).last_hidden_state[0, -1]
        want.append((state @ head["weight"].T + head["bias"]).softmax(-1))

    legacy = classify(texts)
    assert [d["label"] for d in legacy] == [labels[int(w.argmax())] for w in want]
    assert [d["score"] for d in legacy] == pytest.approx([float(w.max()) for w in want], abs=1e-5)
    assert legacy[:2] == [{"label": "cat", "score": legacy[0]["score"]}, {"label": "dog", "score": legacy[1]["score"]}]
    one = classify("the cat sat on the mat")
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}  # HF: a list for one text
    ranked = classify("hello", top_k=None)
    assert [d["label"] for d in ranked] == sorted(labels, key=lambda lab: -float(want[2][labels.index(lab)]))
    assert sum(d["score"] for d in ranked) == pytest.approx(1.0, abs=1e-6)
    assert [len(r) for r in classify(texts, top_k=1)] == [1, 1, 1]
