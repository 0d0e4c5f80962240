"""How to decode: one dataclass with HF ``generate``'s parameter names and semantics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import INT_MAX, check_range
from ..errors import ConfigError

MAX_NEW_TOKENS = 1_000_000  # more than any model's context
MAX_BEAMS = 100  # each beam keeps its own cache: far more would exhaust memory, not improve search


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
    eos_token_id: int | list[int] | None = None  # None: the model's (its tokenizer's, and its config's list)
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]  # one stop string, not a list of its characters
        try:
            self._check()
        except ValueError as exc:  # a setting no decoder can use: the caller's mistake, one line
            raise ConfigError(str(exc)) from None

    def _check(self) -> None:
        check_range("max_new_tokens", self.max_new_tokens, 1, MAX_NEW_TOKENS, integer=True)
        check_range("temperature", self.temperature, 0)
        check_range("top_k", self.top_k, 0, INT_MAX, integer=True)
        check_range("top_p", self.top_p, 0, 1, lo_open=True)
        check_range("repetition_penalty", self.repetition_penalty, 0, lo_open=True)
        check_range("num_beams", self.num_beams, 1, MAX_BEAMS, integer=True)
        check_range("length_penalty", self.length_penalty)
        if self.seed is not None:
            check_range("seed", self.seed, 0, INT_MAX, integer=True)
        if isinstance(self.eos_token_id, list | tuple):
            if not self.eos_token_id:
                raise ValueError("eos_token_id: an empty list ends nothing; give None for the model's own")
            for eos in self.eos_token_id:
                check_range("eos_token_id", eos, 0, INT_MAX, integer=True)
        elif self.eos_token_id is not None:
            check_range("eos_token_id", self.eos_token_id, 0, INT_MAX, integer=True)
        if self.pad_token_id is not None:
            check_range("pad_token_id", self.pad_token_id, 0, INT_MAX, integer=True)
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, not {self.stop!r}")
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
