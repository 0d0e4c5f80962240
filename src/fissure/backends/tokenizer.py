"""HF tokenizers seen through fissure's tokenizer interface (``encode``, ``decode``, ``eos_id``)."""

from __future__ import annotations

from collections.abc import Callable


class HFTokenizer:
    name = "hf"

    def __init__(self, hf_tokenizer):
        self.hf = hf_tokenizer
        self.vocab_size = len(hf_tokenizer)
        self.eos_id = hf_tokenizer.eos_token_id
        self.bos_id = hf_tokenizer.bos_token_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's (start, end) character span in ``text``."""
        enc = self.hf(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def render_chat(self, messages: list[dict], add_generation_prompt: bool) -> str:
        """A chat as text through the model's own template (``ValueError`` if it has none)."""
        if not getattr(self.hf, "chat_template", None):
            raise ValueError("the tokenizer has no chat template")
        return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def save(self, directory) -> None:
        self.hf.save_pretrained(directory)

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def chat_template_fn(self) -> Callable[[list[dict]], str] | None:
        """Renders a chat with the model's own template (and the assistant turn opened), if it has one."""
        if not getattr(self.hf, "chat_template", None):
            return None
        return lambda messages: self.render_chat(messages, add_generation_prompt=True)
