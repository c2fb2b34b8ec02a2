"""The prompt set of ``captum-attnflow llm-faithfulness``, shipped with the package.

Two parts, in this order:

* ``llm_prompts.json`` (package data): 70 prompts written for this project — 20 factual, 14
  narrative, 12 dialogue, 12 code, 12 lists. Their output tokens are the model's greedy
  continuation.
* :data:`AGREEMENT_PROMPTS` subject–verb agreement prompts drawn from the agreement grammar
  (:mod:`captum_attnflow.models.agreement_data`, seed :data:`AGREEMENT_SEED`), each with at least
  one attractor (a noun of the other number between the subject and the verb), e.g. "The keys to
  the old cabinet". Their output token is the correct verb, ``" are"`` (plural subject) or
  ``" is"``; the contrast is the other one. The character span of the subject noun and of every
  attractor is known, so a method can be asked whether it points at the subject.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from importlib import resources

from captum_attnflow.models.agreement_data import PLURAL, generate_example

AGREEMENT_PROMPTS = 40
AGREEMENT_SEED = 17
#: longest agreement prefix, in words (short prompts keep the benchmark cheap)
AGREEMENT_MAX_WORDS = 14
#: the verb of each number: (correct, contrast) for singular and plural subjects
VERBS = {False: (" is", " are"), True: (" are", " is")}
KINDS = ("factual", "agreement", "narrative", "dialogue", "code", "lists")


@dataclass(frozen=True)
class Prompt:
    """One benchmark prompt.

    Attributes:
        kind: one of :data:`KINDS`.
        text: the prompt text.
        target: the forced output (agreement: the correct verb), or ``None`` for the greedy
            continuation.
        contrast: the wrong verb of an agreement prompt.
        subject: ``(start, end)`` character span of the subject noun (agreement only).
        attractors: character spans of the attractor nouns.
    """

    kind: str
    text: str
    target: str | None = None
    contrast: str | None = None
    subject: tuple[int, int] | None = None
    attractors: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def agreement_prompt(words: tuple[str, ...], head: int, attractors: tuple[int, ...], plural: bool) -> Prompt:
    """The prompt of one grammar prefix: words joined by spaces (no space before a comma), the
    first letter capitalised, with the character spans of the subject and the attractors."""
    text, spans = "", []
    for number, word in enumerate(words):
        if number and word != ",":
            text += " "
        if number == 0:
            word = word[:1].upper() + word[1:]
        spans.append((len(text), len(text) + len(word)))
        text += word
    correct, contrast = VERBS[plural]
    return Prompt("agreement", text, correct, contrast, spans[head], tuple(spans[i] for i in attractors))


def agreement_prompts(count: int = AGREEMENT_PROMPTS, seed: int = AGREEMENT_SEED) -> list[Prompt]:
    """``count`` distinct grammar prefixes with at least one attractor and at most
    :data:`AGREEMENT_MAX_WORDS` words, half singular and half plural subjects, in drawing order."""
    rng = random.Random(seed)
    seen, out, per_number = set(), [], {False: 0, True: 0}
    while len(out) < count:
        example = generate_example(rng)
        plural = example.label == PLURAL
        if (not example.attractors or len(example.words) > AGREEMENT_MAX_WORDS or example.words in seen
                or per_number[plural] >= (count + 1) // 2):
            continue
        seen.add(example.words)
        per_number[plural] += 1
        out.append(agreement_prompt(example.words, example.head, example.attractors, plural))
    return out


def load_prompts() -> list[Prompt]:
    """The whole prompt set: the written prompts of ``llm_prompts.json``, then the agreement ones."""
    data = json.loads(resources.files("captum_attnflow.evaluation").joinpath("llm_prompts.json").read_text("utf-8"))
    written = [Prompt(item["kind"], item["text"]) for item in data["prompts"]]
    return written + agreement_prompts()


def select_prompts(prompts: list[Prompt], count: int | None) -> list[Prompt]:
    """``count`` prompts spread over the kinds (round robin over :data:`KINDS`, each kind in its
    order), so a small run still sees every kind; ``None``: all of them, in order."""
    if count is None or count >= len(prompts):
        return list(prompts)
    queues = {kind: [p for p in prompts if p.kind == kind] for kind in KINDS}
    chosen: list[Prompt] = []
    while len(chosen) < count:
        for kind in KINDS:
            if queues[kind] and len(chosen) < count:
                chosen.append(queues[kind].pop(0))
    return chosen


def prompts_identity(prompts: list[Prompt]) -> str:
    """SHA-256 of the prompts (compared on ``--resume``)."""
    return hashlib.sha256(json.dumps([asdict(p) for p in prompts], sort_keys=True).encode()).hexdigest()
