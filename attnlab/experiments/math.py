"""``math``: sequence-to-sequence Transformer against DAT on mathematics problems, accuracy vs training steps.

The DAT paper trains encoder-decoders (its math preset: 2 + 2 layers, d_model 128, 8 heads, post-LN) on five
modules of DeepMind's mathematics dataset and plots the teacher-forcing per-character accuracy on the
interpolation test set against training time: DAT learns faster and ends higher. Here the problems come from
``math_problems`` (the same modules, formats and length limits, generated offline); at several training steps
each run records

* ``char_acc``: teacher-forcing per-character accuracy (the true previous characters fed in; padding not
  counted, the end token counted, as in the authors' script), and
* ``exact_match``: greedy decoding with the model's cache (``generate``), the share of answers right in every
  character and the end.

The claims: DAT's final per-character accuracy (and exact match) is higher than the Transformer's, per module,
judged by the Welch interval over seeds. Every seed draws its own training problems and initialisation (shared
by the arms); the interpolation set is drawn with the seed too, disjoint from that seed's training questions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import math_problems as mp
from .base import Claim, Experiment, Progress, RunResult, RunSpec
from .training import (
    Seq2SeqData,
    TrainSettings,
    device_of,
    greedy_exact_match,
    parameter_count,
    seq2seq_loss,
    set_seed,
    teacher_forcing_accuracy,
    train,
)

ARMS = {"Transformer": "math-transformer", "DAT": "math-dat"}
PAPER_ARMS = dict(ARMS, **{"DAT (encoder)": "math-dat-encoder"})
TOKENIZER = mp.CharTokenizer()
# Our character ids (pad 0, start 1, end 2, then printable ASCII) instead of the authors' 85-character table.
TOKEN_OVERRIDES = dict(vocab_size=TOKENIZER.vocab_size, pad_token_id=TOKENIZER.pad_id, eos_token_id=TOKENIZER.eos_id,
                       decoder_start_token_id=TOKENIZER.bos_id, source_block_size=mp.MAX_QUESTION + 1,
                       block_size=mp.MAX_ANSWER + 1)

# Teacher-forcing per-character accuracy on the interpolation set in the paper's figure (the project page's
# data): after 5 epochs and after 100, Transformer vs DAT's two configurations.
PAPER = {
    "algebra__linear_1d": {"epoch 5": (.482, .551, .547), "epoch 100": (.625, .665, .663)},
    "algebra__sequence_next_term": {"epoch 5": (.435, .812, .805), "epoch 100": (.911, .916, .921)},
    "calculus__differentiate": {"epoch 5": (.850, .977, .994), "epoch 100": (.999, 1.0, 1.0)},
    "polynomials__add": {"epoch 5": (.726, .804, .813), "epoch 100": (.833, .856, .859)},
    "polynomials__expand": {"epoch 5": (.661, .701, .711), "epoch 100": (.740, .778, .779)},
}

SCALES: dict[str, dict[str, Any]] = {
    # The paper's appendix and the authors' experiments/math/train_model.py: every module, trained on its whole
    # training data (train-easy + train-medium + train-hard: 3 × 666,666 problems), batch 128, Adam (lr 6e-4,
    # betas 0.9/0.995) at a constant rate, dropout 0.1; 100 epochs (the figure's x axis), evaluated every 5
    # epochs on the 10,000 interpolation problems.
    "paper": dict(modules=list(mp.MODULES), arms=PAPER_ARMS, n_train=1_999_998, n_test=10_000, batch_size=128,
                  epochs=100, evals=20, lr=6e-4, betas=(0.9, 0.995), warmup_steps=0, schedule="constant",
                  model={}),
    # The two modules where the paper's early gap is widest (sequence_next_term, differentiate), a few hundred
    # steps of the same models: one pass over freshly drawn problems, warmup then cosine.
    "laptop": dict(modules=["calculus__differentiate", "algebra__sequence_next_term"], arms=ARMS, n_train=None,
                   steps=300, n_test=300, batch_size=48, evals=3, lr=1e-3, betas=(0.9, 0.995), warmup_steps=30,
                   schedule="cosine", model={}),
    "smoke": dict(modules=["algebra__linear_1d"], arms=ARMS, n_train=None, steps=4, n_test=8, batch_size=4,
                  evals=2, lr=1e-3, betas=(0.9, 0.995), warmup_steps=0, schedule="constant",
                  model=dict(d_model=16, d_ff=32, n_layers=1, decoder_layers=1, cross_heads=2)),
}


def encode(problems: list[mp.Problem]) -> Seq2SeqData:
    """Questions as source ids (the characters, then the end token) and answers as labels (likewise), both
    right-padded to the dataset's limits."""
    source = TOKENIZER.encode_batch([p.question for p in problems], add_special=False, length=mp.MAX_QUESTION + 1)
    labels = TOKENIZER.encode_batch([p.answer for p in problems], add_special=False, length=mp.MAX_ANSWER + 1)
    for ids, texts in ((source, [p.question for p in problems]), (labels, [p.answer for p in problems])):
        lengths = [len(t) for t in texts]
        ids[range(len(texts)), lengths] = TOKENIZER.eos_id
    return Seq2SeqData(source=source, labels=labels, pad_id=TOKENIZER.pad_id)


class MathProblems(Experiment):
    name = "math"
    description = ("Mathematics problems (seq2seq, character level): teacher-forcing per-character accuracy and "
                   "greedy exact-match accuracy on the interpolation set against training steps, Transformer vs "
                   "DAT, the DAT paper's math models.")
    metrics = {"char_acc": True, "exact_match": True, "train_loss": False}
    scales = ("laptop", "paper", "smoke")
    settings = SCALES

    def plan(self, scale: str, seeds: int, sizes: list[int] | None = None) -> list[RunSpec]:
        s = self.scale_settings(scale)
        if sizes:
            raise ConfigError("the math experiment has no grid of sizes (its budget is in training steps)")
        return [RunSpec(arm, seed, {"module": module})
                for module in s["modules"] for seed in range(seeds) for arm in s["arms"]]

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        s = self.scale_settings(scale)
        claims = []
        for module in s["modules"]:
            early, late = PAPER[module]["epoch 5"], PAPER[module]["epoch 100"]
            source = (f"paper, Transformer vs DAT (two configurations): {early[0]:.3f} vs {early[1]:.3f} / "
                      f"{early[2]:.3f} after 5 epochs, {late[0]:.3f} vs {late[1]:.3f} / {late[2]:.3f} after 100")
            claims.append(Claim(text=f"DAT ends with a higher per-character accuracy than the Transformer on "
                                     f"`{module}`", better="DAT", worse="Transformer", metric="char_acc",
                                higher_is_better=True, where={"module": module}, source=source))
            claims.append(Claim(text=f"DAT ends with a higher exact-match accuracy than the Transformer on "
                                     f"`{module}`", better="DAT", worse="Transformer", metric="exact_match",
                                higher_is_better=True, where={"module": module},
                                source="paper: per-character accuracy only"))
        return claims

    def _budget(self, s: dict[str, Any]) -> tuple[int, int, list[int]]:
        """(training problems, steps, evaluation steps)."""
        if s["n_train"] is None:
            steps = s["steps"]
            n_train = steps * s["batch_size"]
        else:
            n_train = s["n_train"]
            steps = s["epochs"] * (n_train // s["batch_size"])
        evals = sorted({round(steps * (i + 1) / s["evals"]) for i in range(s["evals"])})
        return n_train, steps, evals

    def configs(self, scale: str) -> dict[str, Any]:
        import torch

        import attnlab

        s = self.scale_settings(scale)
        n_train, steps, evals = self._budget(s)
        arms = {}
        for arm, preset in s["arms"].items():
            overrides = {**TOKEN_OVERRIDES, **s["model"]}
            with torch.device("meta"):
                model = attnlab.create_model("dat-seq2seq", preset, **overrides)
            arms[arm] = {"kind": "dat-seq2seq", "preset": preset, "overrides": overrides,
                         "parameters": parameter_count(model)}
        return {"arms": arms, "modules": s["modules"], "n_train": n_train, "n_test": s["n_test"],
                "training": {"steps": steps, "eval_steps": evals, "batch_size": s["batch_size"], "lr": s["lr"],
                             "betas": list(s["betas"]), "schedule": s["schedule"],
                             "warmup_steps": s["warmup_steps"], "optimizer": "AdamW, weight decay 0 (Adam)"},
                "data": "math_problems.make_splits(module, n_train, n_test, seed=seed): training difficulty "
                        "uniform in [0, 1], interpolation set at 5/7, disjoint questions",
                "tokenizer": "math_problems.CharTokenizer(): pad 0, start 1, end 2, printable ASCII"}

    def run(self, spec: RunSpec, scale: str, out_dir: Path, progress: Progress) -> RunResult:
        import attnlab

        s = self.scale_settings(scale)
        n_train, steps, evals = self._budget(s)
        splits = mp.make_splits(spec.params["module"], n_train, s["n_test"], seed=spec.seed)
        train_data, test_data = encode(splits["train"]), encode(splits["interpolate"])
        set_seed(spec.seed)
        model = attnlab.create_model("dat-seq2seq", s["arms"][spec.arm], **TOKEN_OVERRIDES, **s["model"])
        model = model.to(device_of(self.device))
        lengths = (train_data.source_lengths, train_data.label_lengths)
        curves: dict[str, list[list[float]]] = {"char_acc": [], "exact_match": []}

        def evaluate(step: int) -> None:
            curves["char_acc"].append([step, teacher_forcing_accuracy(model, test_data)])
            curves["exact_match"].append([step, greedy_exact_match(model, test_data)])

        settings = TrainSettings(steps=steps, batch_size=s["batch_size"], lr=s["lr"], betas=tuple(s["betas"]),
                                 warmup_steps=s["warmup_steps"], schedule=s["schedule"])
        train_loss = train(model, lambda index: seq2seq_loss(model, train_data, index, lengths), len(train_data),
                           settings, seed=spec.seed, progress=progress, evaluate=evaluate, eval_steps=evals)
        final = {"char_acc": curves["char_acc"][-1][1], "exact_match": curves["exact_match"][-1][1],
                 "train_loss": train_loss}
        return RunResult(final=final, curves=curves)


MATH = MathProblems()
