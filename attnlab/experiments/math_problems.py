"""Mathematics problems in the format of DeepMind's mathematics_dataset (Saxton et al. 2019), generated
offline for the five modules the Dual Attention Transformer paper trains on.

Questions are at most 160 characters and answers at most 30, as in the released data; answers are
written the way sympy's ``str`` writes them (terms by descending powers, variables in alphabetical order,
``2 - x`` rather than ``-x + 2``), so a model learns one canonical spelling.

Difficulty is a number per problem: 0 is the easiest, 1 the hardest of the training range (larger numbers,
more terms, higher derivative orders, a third factor). Training problems draw it uniformly from
``TRAIN_DIFFICULTY``; the held-out "interpolation" set fixes it at ``INTERPOLATE_DIFFICULTY`` (inside the
training range, where the released data sets entropy 8 of its 3–10), and keeps only questions that do not
occur in the training set. Everything is a pure function of the seed (Python's ``random`` module).
"""

from __future__ import annotations

import math
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import ConfigError

MAX_QUESTION = 160
MAX_ANSWER = 30
TRAIN_DIFFICULTY = (0.0, 1.0)
INTERPOLATE_DIFFICULTY = (5 / 7, 5 / 7)
# Variable and function letters: lowercase, without e and i (read as Euler's number and the imaginary unit).
LETTERS = tuple(c for c in string.ascii_lowercase if c not in "ei")
ORDINALS = {1: "first", 2: "second", 3: "third"}


@dataclass(frozen=True)
class Problem:
    """One question and its answer, both plain text."""

    module: str
    question: str
    answer: str


# --- polynomials as {exponents: coefficient} and their sympy-style text ----------------------------------

Terms = dict[tuple[int, ...], int]


def monomial(coeff: int, exponents: Sequence[int], variables: Sequence[str]) -> str:
    """``coeff * x**a * y**b`` as sympy prints it: ``-x``, ``3*x**2*y``, ``7``."""
    factors = [v if e == 1 else f"{v}**{e}" for v, e in sorted(zip(variables, exponents)) if e]
    if not factors:
        return str(coeff)
    body = "*".join(factors)
    return body if coeff == 1 else f"-{body}" if coeff == -1 else f"{coeff}*{body}"


def join_terms(terms: Iterable[str]) -> str:
    """``a + b - c`` from the printed terms ``a``, ``b``, ``-c`` (in the given order, nothing collected)."""
    out = ""
    for t in terms:
        if not out:
            out = t
        elif t.startswith("-"):
            out += f" - {t[1:]}"
        else:
            out += f" + {t}"
    return out or "0"


def format_poly(terms: Terms, variables: Sequence[str]) -> str:
    """A polynomial in sympy's ``str`` form: terms by descending exponents (lexicographic, variables sorted
    by name), zero terms dropped, and sympy's one exception: a positive constant plus one negative
    single-variable term prints constant first (``2 - x``)."""
    order = sorted(range(len(variables)), key=lambda i: variables[i])
    items = sorted(((tuple(e[i] for i in order), c) for e, c in terms.items() if c), reverse=True)
    names = [variables[i] for i in order]
    one_variable = len(items) == 2 and sum(1 for e in items[0][0] if e) == 1
    if one_variable and not any(items[1][0]) and items[1][1] > 0 and items[0][1] < 0:
        items.reverse()
    return join_terms(monomial(c, e, names) for e, c in items)


def add_terms(*polys: tuple[int, Terms]) -> Terms:
    """Σ scale · poly, with the zero terms dropped."""
    out: Terms = {}
    for scale, poly in polys:
        for e, c in poly.items():
            out[e] = out.get(e, 0) + scale * c
    return {e: c for e, c in out.items() if c}


def multiply(a: Terms, b: Terms) -> Terms:
    out: Terms = {}
    for ea, ca in a.items():
        for eb, cb in b.items():
            e = tuple(x + y for x, y in zip(ea, eb))
            out[e] = out.get(e, 0) + ca * cb
    return {e: c for e, c in out.items() if c}


def differentiate(poly: Terms, axis: int, order: int) -> Terms:
    """The ``order``-th partial derivative along variable ``axis``."""
    out: Terms = {}
    for e, c in poly.items():
        if e[axis] >= order:
            d = list(e)
            d[axis] -= order
            out[tuple(d)] = c * math.perm(e[axis], order)
    return out


# --- sampling helpers -------------------------------------------------------------------------------------


def _scale(difficulty: float, low: float, high: float) -> int:
    """A magnitude growing geometrically from 10**low to 10**high as difficulty goes from 0 to 1."""
    return max(1, round(10 ** (low + (high - low) * difficulty)))


def _nonzero(rng: random.Random, bound: int) -> int:
    return rng.choice((-1, 1)) * rng.randint(1, max(1, bound))


def _split_sum(rng: random.Random, total: int, count: int, bound: int) -> list[int]:
    """``count`` non-zero integers summing to ``total`` (a nonzero total, or count >= 2)."""
    while True:
        parts = [_nonzero(rng, bound) for _ in range(count - 1)]
        last = total - sum(parts)
        if last:
            return [*parts, last]


def _letters(rng: random.Random, k: int) -> list[str]:
    return rng.sample(LETTERS, k)


# --- the five modules: each returns (question, answer) for one difficulty ---------------------------------


def _differentiate(rng: random.Random, d: float) -> tuple[str, str]:
    """E.g. "Differentiate 743*b**3 - 63 wrt b." → 2229*b**2. Terms that vanish (power below the order)
    are part of the question, as in the released data."""
    n_vars = 1 + (rng.random() < 0.5 * d)
    variables = _letters(rng, n_vars)
    axis, order = rng.randrange(n_vars), rng.randint(1, 3)
    bound = _scale(d, 0.5, 2.5)
    poly: Terms = {}
    for k in range(rng.randint(1, 1 + round(2 * d)) + rng.randint(0, 1 + round(d))):
        surviving = k == 0 or rng.random() < 0.6
        e = [rng.randint(0, 2) if i != axis else 0 for i in range(n_vars)]
        e[axis] = rng.randint(order, order + 3) if surviving else rng.randint(0, order - 1)
        poly = add_terms((1, poly), (1, {tuple(e): _nonzero(rng, bound)}))
    answer = differentiate(poly, axis, order)
    if not answer:
        return "", ""
    eq, var, nth = format_poly(poly, variables), variables[axis], ORDINALS[order]
    templates = [f"Find the {nth} derivative of {eq} wrt {var}.", f"What is the {nth} derivative of {eq} wrt {var}?"]
    if order == 1:
        templates += [f"Differentiate {eq} with respect to {var}.", f"Differentiate {eq} wrt {var}.",
                      f"What is the derivative of {eq} wrt {var}?"]
    if n_vars == 1:
        templates += [f"Find the {nth} derivative of {eq}.", f"What is the {nth} derivative of {eq}?"]
        if order == 1:
            templates += [f"Differentiate {eq}.", f"What is the derivative of {eq}?"]
    return rng.choice(templates), format_poly(answer, variables)


def _sequence_next_term(rng: random.Random, d: float) -> tuple[str, str]:
    """E.g. "What comes next: -403, -771, -1135, -1495?" → -1851: the terms of a polynomial of degree 1–3
    in the position, at least degree + 2 of them so the rule is determined."""
    degree = rng.randint(1, 3)
    bound = _scale(d, 0.5, 3.0)
    coeffs = [rng.randint(-bound // 3**p, bound // 3**p) for p in range(degree)]
    coeffs.append(_nonzero(rng, max(1, bound // (degree + 2) ** (degree - 1))))
    n_terms = rng.randint(degree + 2, degree + 5)
    values = [sum(c * k**p for p, c in enumerate(coeffs)) for k in range(1, n_terms + 2)]
    sequence = ", ".join(map(str, values[:-1]))
    template = rng.choice(["What is next in {}?", "What comes next: {}?", "What is the next term in {}?"])
    return template.format(sequence), str(values[-1])


def _linear_1d(rng: random.Random, d: float) -> tuple[str, str]:
    """E.g. "Solve -45*d + 7150 = 6565 for d." → 13: a x + c = 0 with integer root x, its coefficients
    split into several terms that land on either side of the equals sign."""
    x, var = rng.randint(-_scale(d, 0.7, 2.0), _scale(d, 0.7, 2.0)), _letters(rng, 1)[0]
    bound = _scale(d, 0.7, 2.3)
    a = _nonzero(rng, bound)
    var_parts = _split_sum(rng, a, rng.randint(1, 1 + round(1.5 * d)), bound)
    n_const = rng.randint(1, 1 + round(d)) if a * x else rng.choice((0, 2))  # parts of 0 come in pairs
    const_parts = _split_sum(rng, -a * x, n_const, bound * max(1, abs(x))) if n_const else []
    left: list[str] = []
    right: list[str] = []
    for coeff, exps in [(c, (1,)) for c in var_parts] + [(c, (0,)) for c in const_parts]:
        to_left = rng.random() < 0.5
        (left if to_left else right).append(monomial(coeff if to_left else -coeff, exps, (var,)))
    return f"Solve {join_terms(left)} = {join_terms(right)} for {var}.", str(x)


def _factor(rng: random.Random, d: float, n_terms: int) -> tuple[str, dict[int, int]]:
    """A bracket of ``n_terms`` uncollected monomials in x (exponents 0–2) and its polynomial."""
    bound = _scale(d, 0.5, 1.0)
    terms = [(_nonzero(rng, bound), rng.randint(0, 2)) for _ in range(n_terms)]
    poly: dict[int, int] = {}
    for c, e in terms:
        poly[e] = poly.get(e, 0) + c
    return join_terms(monomial(c, (e,), ("x",)) for c, e in terms), poly


def _product(rng: random.Random, d: float, var: str) -> tuple[str, Terms]:
    """A product of 2 or 3 brackets (a leading single monomial unbracketed), its text and polynomial."""
    n_factors = 2 + (rng.random() < 0.5 * d)
    texts, poly = [], {(0,): 1}
    for k in range(n_factors):
        text, p = _factor(rng, d, rng.randint(1 if k == 0 else 2, 2 + round(d)))
        while p in ({0: 1}, {0: -1}):  # "1*(...)" says nothing
            text, p = _factor(rng, d, 1)
        text = text.replace("x", var)
        texts.append(text if k == 0 and " " not in text and n_factors > 1 else f"({text})")
        poly = multiply(poly, {(e,): c for e, c in p.items()})
    return "*".join(texts), poly


def _expand(rng: random.Random, d: float) -> tuple[str, str]:
    """E.g. "Expand (2*x - 3*x + 4)*(x**2 - 1)." → the collected polynomial; at higher difficulty two
    products added or subtracted."""
    var = _letters(rng, 1)[0]
    text, poly = _product(rng, d, var)
    if rng.random() < 0.4 * d:
        text2, poly2 = _product(rng, d, var)
        sign = rng.choice((1, -1))
        shown = -sign if text2.startswith("-") else sign  # "a - -3*x*(...)" is written "a + 3*x*(...)"
        text = f"{text} {'+' if shown > 0 else '-'} {text2.removeprefix('-')}"
        poly = add_terms((1, poly), (sign, poly2))
    if max((e[0] for e in poly), default=0) > 5:
        return "", ""
    return f"Expand {text}.", format_poly(poly, (var,))


def _add(rng: random.Random, d: float) -> tuple[str, str]:
    """E.g. "Let t(s) = -s**2 + 5*s - 1. Let a(o) = -o**2 + 4*o - 1. Calculate -5*a(u) + 4*t(u)." →
    the collected combination in u."""
    f, g, x_f, x_g, u = _letters(rng, 5)
    bound = _scale(d, 0.5, 1.5)
    polys = []
    for _ in range(2):
        degree = rng.randint(1, 3)
        p = {(k,): rng.randint(-bound, bound) for k in range(degree)} | {(degree,): _nonzero(rng, bound)}
        polys.append({e: c for e, c in p.items() if c})
    scales = [_nonzero(rng, _scale(d, 0.5, 1.0)) for _ in range(2)]
    lets = [f"Let {name}({x}) = {format_poly(p, (x,))}." for name, x, p in zip((f, g), (x_f, x_g), polys)]
    rng.shuffle(lets)
    parts = sorted(zip((f, g), scales))
    composed = join_terms(monomial(c, (1,), (f"{name}({u})",)) for name, c in parts)
    template = rng.choice(["What is {}?", "Calculate {}.", "Give {}.", "Determine {}."])
    answer = add_terms((scales[0], polys[0]), (scales[1], polys[1]))
    return " ".join(lets) + " " + template.format(composed), format_poly(answer, (u,))


MODULES: dict[str, Callable[[random.Random, float], tuple[str, str]]] = {
    "calculus__differentiate": _differentiate,
    "algebra__sequence_next_term": _sequence_next_term,
    "algebra__linear_1d": _linear_1d,
    "polynomials__expand": _expand,
    "polynomials__add": _add,
}


# --- public generation ------------------------------------------------------------------------------------


def _check(module: str, difficulty: tuple[float, float]) -> None:
    if module not in MODULES:
        raise ConfigError(f"unknown module {module!r}; choose one of {', '.join(MODULES)}")
    lo, hi = difficulty
    if not 0 <= lo <= hi:
        raise ConfigError(f"difficulty must be a range 0 <= low <= high, got {difficulty}")


def sample(module: str, rng: random.Random, difficulty: float) -> Problem:
    """One problem of a module at one difficulty, resampled until it fits the length limits."""
    make = MODULES[module]
    for _ in range(1000):
        question, answer = make(rng, difficulty)
        if question and len(question) <= MAX_QUESTION and len(answer) <= MAX_ANSWER:
            return Problem(module, question, answer)
    raise ConfigError(f"difficulty {difficulty} gives {module} problems over the length limits")


def _rng(module: str, split: str, seed: int) -> random.Random:
    return random.Random(f"{module}/{split}/{seed}")  # str seeds are hashed with SHA-512: stable everywhere


def _draw(module: str, n: int, rng: random.Random, difficulty: tuple[float, float]) -> list[Problem]:
    return [sample(module, rng, rng.uniform(*difficulty)) for _ in range(n)]


def generate(
    module: str, n: int, *, seed: int = 0, difficulty: tuple[float, float] = TRAIN_DIFFICULTY
) -> list[Problem]:
    """``n`` problems, each at a difficulty drawn uniformly from ``difficulty``; the same arguments always
    give the same problems."""
    _check(module, difficulty)
    return _draw(module, n, _rng(module, "generate", seed), difficulty)


def make_splits(
    module: str,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    train_difficulty: tuple[float, float] = TRAIN_DIFFICULTY,
    test_difficulty: tuple[float, float] = INTERPOLATE_DIFFICULTY,
) -> dict[str, list[Problem]]:
    """``train`` and ``interpolate`` problems; no interpolation question occurs in the training set or twice
    in its own set."""
    _check(module, train_difficulty)
    _check(module, test_difficulty)
    train = _draw(module, n_train, _rng(module, "train", seed), train_difficulty)
    seen = {p.question for p in train}
    rng, test = _rng(module, "interpolate", seed), []
    for _ in range(100 * n_test + 1000):
        if len(test) == n_test:
            break
        p = sample(module, rng, rng.uniform(*test_difficulty))
        if p.question not in seen:
            seen.add(p.question)
            test.append(p)
    else:
        raise ConfigError(f"cannot find {n_test} {module} questions that differ from the training set")
    return {"train": train, "interpolate": test}


# --- characters to ids ------------------------------------------------------------------------------------

PRINTABLE = "".join(chr(c) for c in range(32, 127))  # every character the generators can write


class CharTokenizer:
    """One id per character, after three special ids: ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2.

    The default alphabet is printable ASCII (space to ``~``), which covers every question and answer the
    generators write; ``from_texts`` builds the smallest alphabet for a given set of texts instead.
    """

    PAD, BOS, EOS = "<pad>", "<s>", "</s>"
    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, alphabet: str = PRINTABLE):
        if len(set(alphabet)) != len(alphabet):
            raise ConfigError("the alphabet of a CharTokenizer has repeated characters")
        self.alphabet = alphabet
        self._ids = {ch: i + 3 for i, ch in enumerate(alphabet)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose alphabet is exactly the characters of ``texts``, sorted."""
        return cls("".join(sorted(set("".join(texts)))))

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 3

    @property
    def vocab(self) -> list[str]:
        """Token strings by id."""
        return [self.PAD, self.BOS, self.EOS, *self.alphabet]

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        """Ids of the characters, wrapped in ``<s>`` … ``</s>`` unless ``add_special`` is false."""
        try:
            ids = [self._ids[ch] for ch in text]
        except KeyError as exc:
            raise ConfigError(f"character {exc.args[0]!r} is not in the tokenizer's alphabet") from None
        return [self.bos_id, *ids, self.eos_id] if add_special else ids

    def decode(self, ids: Iterable[int]) -> str:
        """The text of the ids, special ids left out."""
        return "".join(self.alphabet[i - 3] for i in map(int, ids) if i >= 3)

    def encode_batch(self, texts: Sequence[str], *, length: int | None = None,
                     add_special: bool = True) -> torch.Tensor:
        """(len(texts), length) int64 ids, padded on the right with ``<pad>``; ``length`` defaults to the
        longest encoding, and a longer text is an error rather than silently cut."""
        rows = [self.encode(t, add_special=add_special) for t in texts]
        width = max((len(r) for r in rows), default=0) if length is None else length
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            if len(r) > width:
                raise ConfigError(f"text {i} needs {len(r)} ids, more than length {width}")
            out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return out
