"""A fixed check of a model's general ability: short factual and arithmetic questions, each scored by
whether the right answer is more likely than its distractors (log-likelihood of each completion, as
lm-evaluation-harness scores multiple choice). Cheap enough to run at every evaluation step of a
fine-tuning run, so forgetting of general knowledge shows beside the loss on general text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backends.base import LanguageModel
from ..metrics.stats import wilson_interval


@dataclass(frozen=True)
class Question:
    context: str
    answer: str
    distractors: tuple[str, ...]


def _q(context: str, answer: str, *distractors: str) -> Question:
    return Question(context, answer, distractors)


QUESTIONS = (
    _q("The capital of France is", " Paris", " London", " Berlin", " Madrid"),
    _q("The capital of Japan is", " Tokyo", " Beijing", " Seoul", " Bangkok"),
    _q("The capital of Italy is", " Rome", " Athens", " Vienna", " Lisbon"),
    _q("The capital of Germany is", " Berlin", " Munich", " Paris", " Warsaw"),
    _q("The largest ocean on Earth is the", " Pacific", " Atlantic", " Indian", " Arctic"),
    _q("Water freezes at a temperature of", " 0 degrees Celsius", " 50 degrees Celsius",
       " 100 degrees Celsius", " 20 degrees Celsius"),
    _q("The planet closest to the Sun is", " Mercury", " Jupiter", " Saturn", " Neptune"),
    _q("A week has", " seven days", " five days", " ten days", " twelve days"),
    _q("A spider has", " eight legs", " six legs", " four legs", " two legs"),
    _q("The opposite of hot is", " cold", " tall", " loud", " green"),
    _q("The opposite of up is", " down", " left", " red", " fast"),
    _q("The color of a clear daytime sky is", " blue", " green", " purple", " brown"),
    _q("Bees make", " honey", " milk", " silk", " wool"),
    _q("The author of Romeo and Juliet is William", " Shakespeare", " Wordsworth", " Blake", " Wilde"),
    _q("The chemical symbol for water is", " H2O", " CO2", " NaCl", " O3"),
    _q("Humans breathe in", " oxygen", " helium", " neon", " argon"),
    _q("2 + 2 =", " 4", " 5", " 3", " 22"),
    _q("3 + 5 =", " 8", " 7", " 9", " 35"),
    _q("10 - 4 =", " 6", " 4", " 14", " 5"),
    _q("6 * 7 =", " 42", " 36", " 48", " 13"),
    _q("9 + 10 =", " 19", " 21", " 910", " 18"),
    _q("12 / 3 =", " 4", " 3", " 6", " 9"),
    _q("One hundred plus one hundred equals", " two hundred", " one hundred", " three hundred", " ten"),
    _q("The day after Monday is", " Tuesday", " Sunday", " Friday", " Thursday"),
    _q("The month after January is", " February", " March", " December", " June"),
    _q("In Python, the keyword to define a function is", " def", " func", " lambda", " fn"),
    _q("The first letter of the English alphabet is", " A", " Z", " M", " Q"),
    _q("Ice is the solid form of", " water", " air", " fire", " sand"),
    _q("The Earth orbits the", " Sun", " Moon", " Mars", " comet"),
    _q("A baby cat is called a", " kitten", " puppy", " calf", " foal"),
)


def general_knowledge(lm: LanguageModel, questions: tuple[Question, ...] = QUESTIONS,
                      confidence: float = 0.95) -> dict:
    """Accuracy (Wilson interval) at picking the right answer over its distractors, and the mean
    log-likelihood margin of the right answer over the best distractor (nats)."""
    pairs = [(q.context, c) for q in questions for c in (q.answer, *q.distractors)]
    scores = iter(r.logprob for r in lm.loglikelihood(pairs))
    right, margins = 0, []
    for q in questions:
        answer, *others = [next(scores) for _ in range(1 + len(q.distractors))]
        right += answer > max(others)
        margins.append(answer - max(others))
    return {"accuracy": wilson_interval(right, len(questions), confidence).as_dict(), "n": len(questions),
            "mean_margin": sum(margins) / len(margins)}
