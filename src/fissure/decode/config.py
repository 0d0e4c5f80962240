"""How to decode: one dataclass with HF ``generate``'s parameter names and semantics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Decoding:
    max_new_tokens: int = 64
    do_sample: bool = False  # False: greedy (or beam search with num_beams > 1)
    temperature: float = 1.0  # sampling only; 0 means greedy
    top_k: int = 0  # sampling only; 0 = off
    top_p: float = 1.0  # sampling only; 1 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the sequence (CTRL, as HF)
    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: score = sum logprob / generated_len ** length_penalty
    early_stopping: bool | str = False  # beam search: True, False (heuristic) or "never", as HF
    stop: list[str] = field(default_factory=list)  # stop strings
    seed: int | None = None  # sampling seed (None: torch's global RNG)
    eos_token_id: int | None = None  # None: the tokenizer's
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]  # one stop string, not a list of its characters
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if self.num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, not {self.num_beams}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping must be True, False or 'never', not {self.early_stopping!r}")
        if self.num_beams > 1 and self.sampling:
            raise ValueError("beam search with sampling is not supported: use num_beams=1 or do_sample=False")

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature > 0

    def to_dict(self) -> dict:
        return asdict(self)

    def signature(self) -> str:
        """A short, reproducible description, sacrebleu style."""
        if self.num_beams > 1:
            parts = [f"beam={self.num_beams}", f"lp={self.length_penalty:g}", f"early={str(self.early_stopping).lower()}"]
        elif self.sampling:
            parts = ["sample", f"t={self.temperature:g}"]
            if self.top_k:
                parts.append(f"top_k={self.top_k}")
            if self.top_p < 1:
                parts.append(f"top_p={self.top_p:g}")
            parts.append(f"seed={self.seed}")
        else:
            parts = ["greedy"]
        if self.repetition_penalty != 1:
            parts.append(f"rep={self.repetition_penalty:g}")
        parts.append(f"max_new={self.max_new_tokens}")
        if self.stop:
            parts.append(f"stop={len(self.stop)}")
        return "|".join(parts)
