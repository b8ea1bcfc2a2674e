"""The offline data of the DAT paper's experiments: relational games checked by decoding every image back into
objects and recomputing its label from the task's rule, mathematics answers checked with sympy, the character
tokenizer, the digits split and the image loaders."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import sympy
import torch

from attnlab.errors import ConfigError, DataError
from attnlab.experiments import images as im
from attnlab.experiments import math_problems as mp
from attnlab.experiments import relational_games as rg

# --- relational games: the rules, written from the task definitions -------------------------------------


def occupied(grid):
    """(row, column, object) of every drawn object, row-major."""
    return [(r, c, o) for r, row in enumerate(grid) for c, o in enumerate(row) if o is not None]


def row_pattern(objects):
    """Which positions of a row of three hold identical objects: the pattern up to renaming letters."""
    a, b, c = objects
    return (a == b, a == c, b == c)


def rule_same(grid):
    objs = occupied(grid)
    assert len(objs) == 2
    return int(objs[0][2] == objs[1][2])


def rule_between(grid):
    objs = occupied(grid)
    assert len(objs) == 3
    rows, cols = {r for r, _, _ in objs}, {c for _, c, _ in objs}
    assert len(rows) == 1 or len(cols) == 1, "the three objects fill one row or one column"
    return int(objs[0][2] == objs[2][2])


def occurs_layout(grid):
    """The top object and the bottom row, after checking the layout: one top object, empty middle row."""
    top = [o for o in grid[0] if o is not None]
    assert len(top) == 1 and all(o is None for o in grid[1]) and all(o is not None for o in grid[2])
    return top[0], grid[2]


def rule_occurs(grid):
    top, bottom = occurs_layout(grid)
    return int(sum(o == top for o in bottom) >= 1)


def rule_xoccurs(grid):
    top, bottom = occurs_layout(grid)
    return int(sum(o == top for o in bottom) == 1)


ALLOWED_PATTERNS = {row_pattern(p) for p in ("ABC", "ABA", "ABB", "AAB")}


def rule_match_pattern(grid):
    top, middle, bottom = grid
    assert all(o is not None for o in top + bottom) and all(o is None for o in middle)
    assert row_pattern(top) in ALLOWED_PATTERNS and row_pattern(bottom) in ALLOWED_PATTERNS
    assert not set(top) & set(bottom), "each row has its own objects"
    return int(row_pattern(top) == row_pattern(bottom))


RULES = {"same": rule_same, "between": rule_between, "occurs": rule_occurs, "xoccurs": rule_xoccurs,
         "match_pattern": rule_match_pattern}
PALETTE = {tuple(int(v) for v in c) for c in rg.PALETTE}


def as_key(mask: np.ndarray) -> tuple:
    return tuple(tuple(bool(v) for v in row) for row in mask)


def edge_connected(mask) -> bool:
    cells = [(r, c) for r in range(3) for c in range(3) if mask[r][c]]
    seen, todo = {cells[0]}, [cells[0]]
    while todo:
        r, c = todo.pop()
        for nb in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if nb in cells and nb not in seen:
                seen.add(nb)
                todo.append(nb)
    return len(seen) == len(cells)


def test_rule_helpers_spot_patterns():
    assert row_pattern("ABA") == (False, True, False) and row_pattern("AAB") == (True, False, False)
    assert len(ALLOWED_PATTERNS) == 4 and row_pattern("AAA") not in ALLOWED_PATTERNS


# --- relational games: shapes ------------------------------------------------------------------------------


def test_shape_sets_have_the_documented_counts_and_connectivity():
    pent, hexo, stripes = (rg.shape_set(s) for s in rg.SHAPE_SETS)
    assert (len(pent), len(hexo), len(stripes)) == (49, 48, 11)
    assert all(m.sum() == 5 and edge_connected(m) for m in pent)
    assert all(m.sum() == 6 and edge_connected(m) for m in hexo)
    for shapes in (pent, hexo, stripes):
        assert len({as_key(m) for m in shapes}) == len(shapes), "no repeated mask"
    keys = [{as_key(m) for m in s} for s in (pent, hexo, stripes)]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_stripes_are_unions_of_whole_lines():
    lines = [np.zeros((3, 3), bool) for _ in range(8)]
    for i in range(3):
        lines[i][i, :] = True
        lines[3 + i][:, i] = True
    lines[6], lines[7] = np.eye(3, dtype=bool), np.fliplr(np.eye(3, dtype=bool))
    for mask in rg.shape_set("stripes"):
        covering = [ln for ln in lines if (ln <= mask).all()]
        assert covering and (np.logical_or.reduce(covering) == mask).all()
        assert not (mask.sum() in (5, 6) and edge_connected(mask))


# --- relational games: generated images --------------------------------------------------------------------


@pytest.mark.parametrize("shapes", rg.SHAPE_SETS)
@pytest.mark.parametrize("task", list(rg.TASKS))
def test_every_label_follows_the_task_rule(task, shapes):
    images, labels = rg.generate(task, 240, shapes=shapes, seed=3)
    assert images.shape == (240, 36, 36, 3) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert labels.sum() == 120, "exactly balanced"
    masks = {as_key(m) for m in rg.shape_set(shapes)}
    for image, label in zip(images, labels):
        grid = rg.decode(image)
        for _, _, obj in occupied(grid):
            assert obj.mask in masks and obj.colour in PALETTE
        assert RULES[task](grid) == label


def test_generation_is_deterministic_per_seed():
    a, la = rg.generate("between", 50, seed=7)
    b, lb = rg.generate("between", 50, seed=7)
    c, _ = rg.generate("between", 50, seed=8)
    assert np.array_equal(a, b) and np.array_equal(la, lb)
    assert not np.array_equal(a, c)


def test_same_negatives_differ_in_colour_only_shape_only_or_both():
    images, labels = rg.generate("same", 600, seed=1)
    kinds = {"colour only": 0, "shape only": 0, "both": 0}
    for image in images[labels == 0]:
        (_, _, a), (_, _, b) = occupied(rg.decode(image))
        same_shape, same_colour = a.mask == b.mask, a.colour == b.colour
        assert not (same_shape and same_colour)
        kinds["colour only" if same_shape else "shape only" if same_colour else "both"] += 1
    assert all(count > 60 for count in kinds.values()), kinds


def test_hard_negatives_of_between_and_xoccurs():
    images, labels = rg.generate("between", 600, seed=2)
    middle_copies = sum(
        (objs := occupied(rg.decode(img)))[1][2] in (objs[0][2], objs[2][2]) for img in images[labels == 0]
    )
    assert middle_copies > 50, "some negatives have an identical pair that is not the outer one"
    images, labels = rg.generate("xoccurs", 400, seed=2)
    counts = []
    for img in images[labels == 0]:
        top, bottom = occurs_layout(rg.decode(img))
        counts.append(sum(o == top for o in bottom))
    assert set(counts) == {0, 2}, "negatives hold the top object zero times or twice"


def test_splits_are_balanced_and_held_out_images_are_unseen():
    splits = rg.make_splits("same", 3000, 400, seed=0)
    assert set(splits) == {"train", "test", "test_hexominoes", "test_stripes"}
    train = set(rg.image_hashes(splits["train"][0]))
    for name in ("test", "test_hexominoes", "test_stripes"):
        images, labels = splits[name]
        hashes = rg.image_hashes(images)
        assert len(images) == 400 and labels.sum() == 200
        assert len(set(hashes)) == 400 and not train & set(hashes)
    n_cells = {name: {o.n_cells for img in splits[name][0][:50] for _, _, o in occupied(rg.decode(img))}
               for name in ("train", "test", "test_hexominoes")}
    assert n_cells == {"train": {5}, "test": {5}, "test_hexominoes": {6}}


def test_decode_refuses_images_it_did_not_draw():
    images, _ = rg.generate("same", 1, seed=0)
    broken = images[0].copy()
    broken[0, 0] = 255  # the border of a cell
    with pytest.raises(ValueError, match="outside"):
        rg.decode(broken)
    assert rg.decode(np.zeros((36, 36, 3), np.uint8)) == [[None] * 3] * 3


def test_tensors_and_speed():
    start = time.perf_counter()
    images, labels = rg.generate("match_pattern", 10_000, seed=0)
    assert time.perf_counter() - start < 10
    x, y = rg.as_tensors(images[:4], labels[:4])
    assert x.shape == (4, 3, 36, 36) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(y, torch.from_numpy(labels[:4]))
    with pytest.raises(ConfigError):
        rg.generate("count", 4)


# --- mathematics: answers checked with sympy --------------------------------------------------------------


def parse(text: str, local: dict | None = None):
    return sympy.parse_expr(text, local_dict=local or {}, evaluate=True)


def check_differentiate(q: str, a: str) -> None:
    m = re.fullmatch(r"(?:Find the (\w+) derivative of|What is the (\w+ )?derivative of|Differentiate) (.+?)"
                     r"(?: (?:wrt|with respect to) (\w))?[.?]", q)
    assert m, q
    nth = m.group(1) or (m.group(2) or "first ").strip()
    order = {"first": 1, "second": 2, "third": 3}[nth]
    expr = parse(m.group(3))
    var = sympy.Symbol(m.group(4)) if m.group(4) else expr.free_symbols.pop()
    assert m.group(4) or len(expr.free_symbols) == 1
    assert sympy.expand(sympy.diff(expr, var, order) - parse(a)) == 0


def check_sequence(q: str, a: str) -> None:
    m = re.fullmatch(r"(?:What is next in|What comes next:|What is the next term in) (.+)\?", q)
    terms = [int(t) for t in m.group(1).split(", ")]
    n = sympy.Symbol("n")
    poly = sympy.interpolate(list(zip(range(1, len(terms) + 1), terms)), n)
    assert sympy.degree(poly, n) <= min(3, len(terms) - 2), "enough terms to pin the rule down"
    assert poly.subs(n, len(terms) + 1) == int(a)


def check_linear(q: str, a: str) -> None:
    m = re.fullmatch(r"Solve (.+) = (.+) for (\w)\.", q)
    var = sympy.Symbol(m.group(3))
    assert sympy.solve(sympy.Eq(parse(m.group(1)), parse(m.group(2))), var) == [int(a)]


def check_expand(q: str, a: str) -> None:
    m = re.fullmatch(r"Expand (.+)\.", q)
    assert sympy.expand(parse(m.group(1))) - parse(a) == 0


def check_add(q: str, a: str) -> None:
    lets = re.findall(r"Let (\w)\((\w)\) = ([^.]+)\.", q)
    assert len(lets) == 2
    funcs = {f: sympy.Lambda(sympy.Symbol(x), parse(body)) for f, x, body in lets}
    m = re.search(r"(?:What is|Calculate|Give|Determine) (.+)[.?]$", q)
    assert sympy.expand(parse(m.group(1), funcs) - parse(a)) == 0


CHECKS = {
    "calculus__differentiate": check_differentiate,
    "algebra__sequence_next_term": check_sequence,
    "algebra__linear_1d": check_linear,
    "polynomials__expand": check_expand,
    "polynomials__add": check_add,
}


@pytest.mark.parametrize("module", list(mp.MODULES))
def test_math_answers_are_right_and_in_sympy_form(module):
    problems = mp.generate(module, 60, seed=0) + mp.generate(module, 30, seed=1, difficulty=(1.0, 1.0))
    for p in problems:
        assert p.module == module
        assert len(p.question) <= mp.MAX_QUESTION and 0 < len(p.answer) <= mp.MAX_ANSWER
        CHECKS[module](p.question, p.answer)
        assert str(sympy.sympify(p.answer)) == p.answer, "the answer is spelled as sympy prints it"


@pytest.mark.parametrize("module", list(mp.MODULES))
def test_interpolation_set_shares_no_question_with_training(module):
    splits = mp.make_splits(module, 400, 100, seed=0)
    train = {p.question for p in splits["train"]}
    test = [p.question for p in splits["interpolate"]]
    assert len(splits["train"]) == 400 and len(test) == 100 == len(set(test))
    assert not train & set(test)
    assert splits == mp.make_splits(module, 400, 100, seed=0)


def test_difficulty_grows_the_problems():
    easy = mp.generate("algebra__linear_1d", 300, seed=0, difficulty=(0.0, 0.0))
    hard = mp.generate("algebra__linear_1d", 300, seed=0, difficulty=(1.0, 1.0))
    assert max(abs(int(p.answer)) for p in easy) <= 5 < max(abs(int(p.answer)) for p in hard)
    assert np.mean([len(p.question) for p in easy]) < np.mean([len(p.question) for p in hard])
    with pytest.raises(ConfigError):
        mp.generate("algebra__linear_1d", 3, difficulty=(0.5, 0.2))


@pytest.mark.parametrize(("terms", "variables"), [
    ({(1,): -1, (0,): 2}, ("x",)), ({(2,): -3, (0,): 5}, ("x",)), ({(2,): -1, (1,): 1}, ("x",)),
    ({(1, 0): -1, (0, 1): 1}, ("y", "x")), ({(3, 2): -2, (1, 1): 3, (0, 3): -5, (0, 0): 7}, ("a", "b")),
    ({(2, 1): -1, (0, 0): 1}, ("x", "y")), ({(1, 3): 4, (2, 0): -1}, ("t", "c")), ({}, ("x",)),
])
def test_format_poly_writes_what_sympy_prints(terms, variables):
    symbols = sympy.symbols(variables)
    expr = sum((c * sympy.Mul(*[s**e for s, e in zip(symbols, exps)]) for exps, c in terms.items()),
               sympy.Integer(0))
    assert mp.format_poly(terms, variables) == str(expr)


def test_char_tokenizer_round_trip():
    tok = mp.CharTokenizer()
    problems = [p for m in mp.MODULES for p in mp.generate(m, 30, seed=5)]
    texts = [t for p in problems for t in (p.question, p.answer)]
    assert set("".join(texts)) <= set(tok.alphabet)
    for text in texts:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and tok.pad_id not in ids
        assert tok.decode(ids) == text
    assert tok.vocab_size == 98 and tok.vocab[:3] == ["<pad>", "<s>", "</s>"]
    assert tok.encode("ab", add_special=False) == [tok.vocab.index("a"), tok.vocab.index("b")]
    batch = tok.encode_batch(["12", "3"], length=5)
    assert batch.tolist() == [[1, tok.vocab.index("1"), tok.vocab.index("2"), 2, 0],
                              [1, tok.vocab.index("3"), 2, 0, 0]]
    small = mp.CharTokenizer.from_texts(["b+a", "a"])
    assert small.vocab == ["<pad>", "<s>", "</s>", "+", "a", "b"]
    with pytest.raises(ConfigError):
        small.encode("c")
    with pytest.raises(ConfigError):
        tok.encode_batch(["12345"], length=3)


# --- images -----------------------------------------------------------------------------------------------


def test_digits_split_is_stratified_disjoint_and_seeded():
    pytest.importorskip("sklearn", reason="scikit-learn ships the digits images")
    train, test = im.load_digits(test_fraction=0.2, seed=0)
    assert len(train) + len(test) == 1797 and abs(len(test) - 359) <= 10
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.float32
    assert 0 <= float(train.images.min()) and float(train.images.max()) == 1.0
    train_counts = torch.bincount(train.labels, minlength=10).numpy()
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * (train_counts + test_counts)) <= 0.5)
    pixels = [{t.numpy().tobytes() for t in d.images} for d in (train, test)]
    assert len(pixels[0] & pixels[1]) <= 5, "only pixel-identical digits may sit on both sides"
    again, _ = im.load_digits(test_fraction=0.2, seed=0)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    few = train.first_per_class(3)
    assert torch.bincount(few.labels).tolist() == [3] * 10
    first_zero = int(np.flatnonzero(train.labels.numpy() == 0)[0])
    assert torch.equal(few.images[few.labels == 0][0], train.images[first_zero])


def test_stratified_split_indices_are_a_partition():
    labels = np.repeat(np.arange(4), [10, 20, 30, 41])
    train, test = im.stratified_split(labels, 0.25, seed=1)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(labels)))
    assert np.bincount(labels[test]).tolist() == [2, 5, 8, 10]
    assert im.first_per_class(np.array([2, 1, 2, 2, 1, 0]), 2).tolist() == [0, 1, 2, 4, 5]


def make_folder(root):
    """Two classes: three red 10×12 images in cat/, two blue ones in dog/ (one JPEG), and a stray text file."""
    from PIL import Image

    for name, colour, files in (("cat", (255, 0, 0), ("a.png", "b.png", "c.png")),
                                ("dog", (0, 0, 255), ("x.png", "y.jpg"))):
        (root / name).mkdir(parents=True)
        for f in files:
            Image.new("RGB", (12, 10), colour).save(root / name / f)
    (root / "cat" / "notes.txt").write_text("not an image")


def test_image_folder_loader(tmp_path):
    make_folder(tmp_path)
    data = im.load_image_folder(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images.shape == (5, 3, 10, 12)
    assert torch.allclose(data.images[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert float(data.images[3, 2].mean()) == 1.0 and float(data.images[4, 2].mean()) > 0.95  # JPEG
    gray = im.load_image_folder(tmp_path, size=(4, 6), channels=1)
    assert gray.images.shape == (5, 1, 4, 6)
    from PIL import Image

    Image.new("RGB", (5, 5)).save(tmp_path / "dog" / "z.png")
    with pytest.raises(DataError, match="size"):
        im.load_image_folder(tmp_path)
    with pytest.raises(DataError):
        im.load_image_folder(tmp_path / "missing")


def test_hugging_face_image_dataset_from_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    pictures = [Image.new("RGB", (6, 6), (0, 40 * i, 0)) for i in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["no", "yes"])})
    ds = datasets.Dataset.from_dict({"image": pictures, "label": [0, 1, 1, 0]}, features=features)
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    data = im.load_hf_images(tmp_path / "ds", split="train")
    assert data.class_names == ["no", "yes"] and data.labels.tolist() == [0, 1, 1, 0]
    assert data.images.shape == (4, 3, 6, 6)
    assert torch.allclose(data.images[:, 1, 0, 0], torch.tensor([0, 40, 80, 120]) / 255.0)
    with pytest.raises(DataError, match="splits"):
        im.load_hf_images(tmp_path / "ds", split="test")
    with pytest.raises(DataError, match="columns"):
        im.load_hf_images(tmp_path / "ds", label_column="target")
