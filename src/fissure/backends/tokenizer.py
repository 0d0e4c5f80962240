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

    def decode(self, ids: list[int]) -> str:
        return self.hf.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def chat_template_fn(self) -> Callable[[list[dict]], str] | None:
        """Renders a chat with the model's own template (and the assistant turn opened), if it has one."""
        if not getattr(self.hf, "chat_template", None):
            return None
        return lambda messages: self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
