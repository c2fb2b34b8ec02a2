"""A seeded generator of English subject–verb number-agreement examples.

The paper trains on the Linzen et al. (2016) Wikipedia agreement set, which cannot be downloaded
here. This module generates prefixes of the same kind from a small grammar: the words of a
sentence up to (not including) its main verb, and the number of that verb, which is the number
of the subject's head noun. The model input is ``[CLS]`` + the words + ``[END]`` (the marker
sits where the verb would be, as in the authors' code); the label is ``0`` for a singular verb
(VBZ, "is"/"runs") and ``1`` for a plural verb (VBP, "are"/"run").

Grammar (one sentence prefix; ``?`` = optional, ``*`` = repeated, probabilities in the code)::

    prefix    := opening? subject adverb?
    opening   := "yesterday ," | "in the end ," | "after the <noun> left ," | ...   (may hold a noun)
    subject   := NP(head) modifier{0..3}          each modifier attaches to the previous noun
    NP(n)     := det(n) adjective{0..2} noun(n)
    modifier  := PP | subject-RC | object-RC
    PP        := preposition NP(m)                 "to the old cabinets"
    subj-RC   := rel adverb? verb(attached noun) NP(m)      "that opens the doors"
    obj-RC    := rel NP(m) adverb? verb(m)                  "that the men carry"
    rel       := "that" | "which" | "who"  (who only after a person noun)

* ``noun(n)``: 72 singular/plural pairs, regular and irregular (man/men, child/children,
  mouse/mice, ...). ``det(n)`` is number-neutral ("the", "my", "our", ...) with probability 0.75,
  else number-marked ("this"/"these", "a"/"some", "every"/"many", ...).
* Every noun inside a modifier takes the number opposite to the subject head with probability
  0.6 — these are the **attractors** — and the head's number otherwise.
* Relative-clause verbs are present tense (agreeing with their own subject: the attached noun in
  a subject RC, the embedded noun in an object RC — so an object RC puts a verb agreeing with
  the attractor right before the main verb) or number-neutral past tense (probability 0.5).
* Prefixes are 3–28 words, so inputs are 5–30 tokens with ``[CLS]`` and ``[END]``; longer
  draws are rejected and redrawn.

How it differs from Linzen et al.'s data: a closed 309-word vocabulary with no unknown words,
only the constructions above (no coordination, no sentential complements, no quotations, no
collective nouns, no parser noise), the subject is always present and never inverted, and
attractors are far more frequent (about 60 % of the examples have at least one; in
Wikipedia only a few percent do). The task is therefore cleaner but attractor-heavy.

Splits are drawn from one seeded stream, deduplicated, and assigned in order (train, then
validation, then test), so no prefix appears in two splits and the same seed always gives the
same splits.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SINGULAR, PLURAL = 0, 1
#: label -> name of the verb number
LABEL_NAMES: tuple[str, str] = ("singular", "plural")

PAD, CLS, END, UNK = "[PAD]", "[CLS]", "[END]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, CLS, END, UNK)

NOUNS: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split("/"))  # type: ignore[misc]
    for pair in (
        "key/keys cabinet/cabinets door/doors table/tables chair/chairs book/books letter/letters "
        "picture/pictures house/houses car/cars road/roads bridge/bridges river/rivers tree/trees "
        "garden/gardens window/windows box/boxes bottle/bottles computer/computers phone/phones "
        "machine/machines engine/engines report/reports idea/ideas plan/plans problem/problems "
        "result/results song/songs story/stories city/cities country/countries company/companies "
        "factory/factories school/schools church/churches museum/museums island/islands "
        "mountain/mountains village/villages street/streets building/buildings painting/paintings "
        "dog/dogs cat/cats horse/horses bird/birds wolf/wolves mouse/mice fox/foxes "
        "man/men woman/women child/children person/people teacher/teachers student/students "
        "doctor/doctors nurse/nurses farmer/farmers soldier/soldiers king/kings queen/queens "
        "author/authors artist/artists player/players worker/workers officer/officers "
        "lawyer/lawyers senator/senators pilot/pilots driver/drivers neighbour/neighbours "
        "manager/managers"
    ).split()
)
_PERSON_SINGULARS = frozenset(
    "man woman child person teacher student doctor nurse farmer soldier king queen author artist "
    "player worker officer lawyer senator pilot driver neighbour manager".split()
)
#: noun forms (singular and plural) that can take "who"
PERSONS: frozenset[str] = frozenset(w for pair in NOUNS if pair[0] in _PERSON_SINGULARS for w in pair)
ADJECTIVES: tuple[str, ...] = tuple(
    "old new young small large big little red blue green dark bright quiet loud famous local "
    "foreign strange tall short heavy broken empty busy tired angry happy clever rich poor "
    "ancient modern wooden narrow wide hidden nearby".split()
)
PREPOSITIONS: tuple[str, ...] = tuple(
    "to of near behind beside under above with from in on for without across inside outside "
    "around beyond".split()
)
#: (singular present, plural present, past) of the relative-clause verbs
VERBS: tuple[tuple[str, str, str], ...] = tuple(
    tuple(triple.split("/"))  # type: ignore[misc]
    for triple in (
        "opens/open/opened sees/see/saw likes/like/liked carries/carry/carried owns/own/owned "
        "visits/visit/visited follows/follow/followed finds/find/found builds/build/built "
        "paints/paint/painted watches/watch/watched helps/help/helped remembers/remember/remembered "
        "describes/describe/described protects/protect/protected repairs/repair/repaired "
        "mentions/mention/mentioned admires/admire/admired"
    ).split()
)
ADVERBS: tuple[str, ...] = tuple("often never always usually probably certainly really still also rarely".split())
#: determiners: number-neutral, singular-only, plural-only
NEUTRAL_DETERMINERS: tuple[str, ...] = ("the", "the", "the", "my", "your", "his", "her", "our", "their")
SINGULAR_DETERMINERS: tuple[str, ...] = ("a", "this", "that", "every", "each", "one")
PLURAL_DETERMINERS: tuple[str, ...] = ("these", "those", "some", "many", "several", "two", "all the", "most")
RELATIVES: tuple[str, ...] = ("that", "which")
#: openings; "<noun>" is replaced by a noun phrase of random number (never an attractor)
OPENINGS: tuple[str, ...] = (
    "yesterday ,", "in the end ,", "however ,", "as expected ,", "according to <noun> ,",
    "after <noun> left ,", "in my opinion ,", "last year ,", "before the war ,", "for <noun> ,",
    "unfortunately ,", "at night ,", "in <noun> ,", "since then ,",
)

MIN_WORDS, MAX_WORDS = 3, 28


@dataclass(frozen=True)
class AgreementExample:
    """One generated prefix.

    Attributes:
        words: the words before the main verb (no special tokens).
        label: the number of the main verb: 0 singular, 1 plural (= the subject head's number).
        head: index in ``words`` of the subject's head noun.
        attractors: indices in ``words`` of nouns between the head and the verb whose number is
            opposite to the head's.
        nouns: index in ``words`` -> number (0/1) of every noun, including the head.
    """

    words: tuple[str, ...]
    label: int
    head: int
    attractors: tuple[int, ...]
    nouns: tuple[tuple[int, int], ...]

    @property
    def tokens(self) -> tuple[str, ...]:
        """The model input: ``[CLS]`` + words + ``[END]``."""
        return (CLS,) + self.words + (END,)


@dataclass(frozen=True)
class AgreementSplits:
    """Train / validation / test lists of :class:`AgreementExample`, disjoint as word sequences."""

    train: list[AgreementExample]
    valid: list[AgreementExample]
    test: list[AgreementExample]


def vocabulary() -> list[str]:
    """The fixed vocabulary: the special tokens, then every word of the grammar, sorted.

    Built from the lexicon (not from sampled data), so every generated word has an id.
    """
    words = set(ADJECTIVES) | set(PREPOSITIONS) | set(ADVERBS) | set(RELATIVES) | {"who", ","}
    words |= {w for pair in NOUNS for w in pair} | {w for triple in VERBS for w in triple}
    for phrase in NEUTRAL_DETERMINERS + SINGULAR_DETERMINERS + PLURAL_DETERMINERS + OPENINGS:
        words |= {w for w in phrase.split() if w != "<noun>"}
    return list(SPECIAL_TOKENS) + sorted(words)


class _Builder:
    """Accumulates the words of one prefix and the numbers of its nouns."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.words: list[str] = []
        self.nouns: dict[int, int] = {}

    def extend(self, text: str) -> None:
        self.words.extend(text.split())

    def noun_phrase(self, number: int) -> int:
        """Append ``det adjective{0..2} noun`` of the given number; return the noun's index."""
        rng = self.rng
        if rng.random() < 0.75:
            self.extend(rng.choice(NEUTRAL_DETERMINERS))
        else:
            self.extend(rng.choice(PLURAL_DETERMINERS if number == PLURAL else SINGULAR_DETERMINERS))
        for _ in range(rng.choices((0, 1, 2), weights=(0.55, 0.33, 0.12))[0]):
            self.words.append(rng.choice(ADJECTIVES))
        singular, plural = rng.choice(NOUNS)
        self.words.append(plural if number == PLURAL else singular)
        self.nouns[len(self.words) - 1] = number
        return len(self.words) - 1

    def verb(self, number: int) -> None:
        """Append a relative-clause verb agreeing with ``number`` (or a past-tense form)."""
        singular, plural, past = self.rng.choice(VERBS)
        self.words.append(past if self.rng.random() < 0.5 else (plural if number == PLURAL else singular))

    def adverb(self, probability: float) -> None:
        if self.rng.random() < probability:
            self.words.append(self.rng.choice(ADVERBS))

    def modifier(self, attached: int, number: int) -> int:
        """Append a PP or relative clause modifying the noun at ``attached``; return its noun."""
        rng = self.rng
        kind = rng.choices(("pp", "subject_rc", "object_rc"), weights=(0.5, 0.25, 0.25))[0]
        if kind == "pp":
            self.words.append(rng.choice(PREPOSITIONS))
            return self.noun_phrase(number)
        is_person = self.words[attached] in PERSONS
        self.words.append("who" if is_person and rng.random() < 0.5 else rng.choice(RELATIVES))
        if kind == "subject_rc":
            self.adverb(0.15)
            self.verb(self.nouns[attached])
            return self.noun_phrase(number)
        noun = self.noun_phrase(number)
        self.adverb(0.15)
        self.verb(number)
        return noun


def generate_example(rng: random.Random) -> AgreementExample:
    """Draw one prefix from the grammar (see the module docstring) with ``rng``.

    Draws longer than :data:`MAX_WORDS` or shorter than :data:`MIN_WORDS` words are redrawn.
    """
    while True:
        builder = _Builder(rng)
        label = rng.randrange(2)
        if rng.random() < 0.3:
            opening = rng.choice(OPENINGS)
            before, marker, after = opening.partition("<noun>")
            builder.extend(before)
            if marker:
                builder.noun_phrase(rng.randrange(2))
            builder.extend(after)
        head = builder.noun_phrase(label)
        attached = head
        for _ in range(rng.choices((0, 1, 2, 3), weights=(0.25, 0.35, 0.25, 0.15))[0]):
            number = 1 - label if rng.random() < 0.6 else label
            attached = builder.modifier(attached, number)
        builder.adverb(0.1)
        if MIN_WORDS <= len(builder.words) <= MAX_WORDS:
            break
    attractors = tuple(i for i, number in sorted(builder.nouns.items()) if i > head and number != label)
    return AgreementExample(
        words=tuple(builder.words), label=label, head=head, attractors=attractors,
        nouns=tuple(sorted(builder.nouns.items())),
    )


def generate_splits(seed: int = 0, *, train: int = 20000, valid: int = 2000, test: int = 4000) -> AgreementSplits:
    """Generate disjoint train / validation / test splits, reproducibly.

    Args:
        seed: seed of the one :class:`random.Random` stream all splits are drawn from.
        train, valid, test: number of examples in each split (all > 0).

    Returns:
        :class:`AgreementSplits`; the same arguments always give the same splits, and no word
        sequence occurs twice across (or within) the splits.

    Raises:
        ValueError: a split size is not a positive integer.
    """
    for name, size in (("train", train), ("valid", valid), ("test", test)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"{name} must be a positive integer number of examples; got {size!r}.")
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    examples: list[AgreementExample] = []
    total = train + valid + test
    while len(examples) < total:
        example = generate_example(rng)
        if example.words not in seen:
            seen.add(example.words)
            examples.append(example)
    return AgreementSplits(
        train=examples[:train], valid=examples[train : train + valid], test=examples[train + valid :]
    )


def encode(examples: list[AgreementExample], words: list[str] | None = None) -> list[list[int]]:
    """Token ids of ``[CLS]`` + words + ``[END]`` for every example (``words``: the vocabulary,
    default :func:`vocabulary`). Raises ``KeyError`` naming a word missing from ``words``."""
    index = {word: i for i, word in enumerate(vocabulary() if words is None else words)}
    return [[index[token] for token in example.tokens] for example in examples]


def batches_by_length(lengths: list[int], batch_size: int, *, seed: int | None = None) -> list[list[int]]:
    """Group example indices into batches of equal length (no padding needed).

    Args:
        lengths: the token count of every example.
        batch_size: the largest batch; a length group is cut into consecutive chunks.
        seed: ``None`` keeps the examples in order and batches sorted by length; an int shuffles
            the examples within each length and the order of the batches, reproducibly.

    Returns:
        list of batches, each a list of indices into ``lengths``; every index occurs once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size}.")
    rng = None if seed is None else random.Random(seed)
    groups: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        groups.setdefault(length, []).append(i)
    batches = []
    for length in sorted(groups):
        members = groups[length]
        if rng is not None:
            rng.shuffle(members)
        batches.extend(members[start : start + batch_size] for start in range(0, len(members), batch_size))
    if rng is not None:
        rng.shuffle(batches)
    return batches
