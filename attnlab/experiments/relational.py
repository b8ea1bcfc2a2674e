"""``relational-games``: data efficiency of DAT against a Transformer on visual relational reasoning.

The DAT paper trains Vision-Transformer-style classifiers (its relational-games preset: 36×36 RGB images in
12×12 patches, 2 layers, d_model 128, SwiGLU, mean pooling) on growing numbers of training images of each
relational-games task and plots held-out accuracy against the number of images: a Transformer (2 self-attention
heads) against DAT with 1 + 1 and 0 + 2 self-attention + relational heads. Our images come from
``relational_games`` (training on pentominoes; tests on unseen pentomino images and on hexominoes and stripes,
the out-of-distribution shapes); each seed draws its own training and test images and initialisation, shared
by the three arms.

**How a claim is scored.** "DAT is more data-efficient than the Transformer on a task" is judged on the mean
held-out accuracy over the task's grid of training-set sizes, per seed (with equally spaced sizes, the
normalised area under the learning curve); the verdict comes from the Welch interval of DAT's mean minus the
Transformer's over seeds. Each size is also tabulated beside the paper's number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import relational_games as rg
from .base import Claim, Experiment, Progress, RunResult, RunSpec
from .training import (
    TrainSettings,
    device_of,
    parameter_count,
    set_seed,
    steps_for_epochs,
    train_image_classifier,
)

ARMS = {"Transformer": "relgames-transformer", "DAT(1,1)": "relgames-dat", "DAT(0,2)": "relgames-dat-ra"}
PAPER_SIZES = {task: list(range(250, 2501, 250)) for task in ("same", "occurs", "xoccurs", "between")}
PAPER_SIZES["match_pattern"] = list(range(5000, 25001, 2500))

# The paper's learning curves (held-out accuracy vs training images; the project page's figure data).
PAPER_CURVES: dict[str, dict[str, list[float]]] = {
    "same": {"Transformer": [.659, .788, .855, .887, .916, .925, .934, .943, .949, .949],
             "DAT(1,1)": [.639, .744, .828, .880, .899, .902, .917, .929, .937, .940],
             "DAT(0,2)": [.652, .744, .815, .863, .882, .898, .906, .914, .929, .926]},
    "occurs": {"Transformer": [.537, .576, .623, .658, .736, .789, .847, .856, .910, .928],
               "DAT(1,1)": [.619, .775, .855, .895, .900, .913, .918, .928, .926, .929],
               "DAT(0,2)": [.632, .787, .854, .886, .899, .910, .920, .916, .930, .931]},
    "xoccurs": {"Transformer": [.511, .519, .534, .545, .564, .565, .597, .614, .625, .684],
                "DAT(1,1)": [.522, .543, .585, .634, .716, .723, .827, .852, .866, .873],
                "DAT(0,2)": [.520, .556, .620, .666, .754, .772, .823, .860, .873, .886]},
    "between": {"Transformer": [.597, .665, .742, .787, .829, .859, .875, .891, .920, .924],
                "DAT(1,1)": [.640, .711, .816, .869, .898, .911, .923, .929, .930, .938],
                "DAT(0,2)": [.614, .750, .836, .881, .897, .908, .920, .929, .926, .931]},
    "match_pattern": {"Transformer": [.515, .519, .524, .529, .538, .550, .556, .564, .639],
                      "DAT(1,1)": [.546, .606, .639, .742, .740, .762, .832, .901, .855],
                      "DAT(0,2)": [.528, .682, .773, .792, .888, .915, .930, .918, .928]},
}

# Per scale: tasks, sizes (None: the paper's per task), the training budget and the test-set size.
SCALES: dict[str, dict[str, Any]] = {
    # The paper's appendix and the authors' eval_relational_games_learning_curve.py: 50 epochs, batch 512,
    # Adam (lr 1e-3, betas 0.9/0.99) at a constant rate, no weight decay; 10,000 test images per set.
    "paper": dict(tasks=list(rg.TASKS), sizes=None, epochs=50, min_steps=1, batch_size=512, lr=1e-3,
                  betas=(0.9, 0.99), warmup_steps=0, schedule="constant", n_test=10_000, model={}),
    # The two tasks where the paper's gap is wide at a few hundred images, three sizes; batches of 64 and at
    # least 500 steps, so that a few hundred images still get trained on (40 epochs of 1,000 images: 640 steps).
    "laptop": dict(tasks=["occurs", "between"], sizes=[250, 500, 1000], epochs=40, min_steps=500,
                   batch_size=64, lr=1e-3, betas=(0.9, 0.99), warmup_steps=0, schedule="constant", n_test=1000,
                   model={}),
    # Seconds: tests of the runner and the CLI.
    "smoke": dict(tasks=["same"], sizes=[16], epochs=1, min_steps=2, batch_size=8, lr=1e-3, betas=(0.9, 0.99),
                  warmup_steps=0, schedule="constant", n_test=16, model=dict(d_model=16, d_ff=32)),
}


def _task_sizes(scale: dict[str, Any], task: str, sizes: list[int] | None) -> list[int]:
    if sizes:
        return [int(s) for s in sizes]
    return list(scale["sizes"]) if scale["sizes"] is not None else PAPER_SIZES[task]


class RelationalGames(Experiment):
    name = "relational-games"
    description = ("Relational games: held-out accuracy against the number of training images, Transformer "
                   "(2 self-attention heads) vs DAT(1,1) vs DAT(0,2) (self-attention + relational heads), the DAT "
                   "paper's relational-games models; tests on unseen pentomino images (`accuracy`) and on the "
                   "out-of-distribution hexominoes and stripes.")
    metrics = {"accuracy": True, "accuracy_hexominoes": True, "accuracy_stripes": True, "train_loss": False}
    scales = ("laptop", "paper", "smoke")
    settings = SCALES
    x_param = "size"
    x_label = "training images"

    def plan(self, scale: str, seeds: int, sizes: list[int] | None = None) -> list[RunSpec]:
        s = self.scale_settings(scale)
        return [RunSpec(arm, seed, {"task": task, "size": size})
                for task in s["tasks"] for size in _task_sizes(s, task, sizes)
                for seed in range(seeds) for arm in ARMS]

    def claims(self, scale: str, sizes: list[int] | None = None) -> list[Claim]:
        s = self.scale_settings(scale)
        claims = []
        for task in s["tasks"]:
            grid = _task_sizes(s, task, sizes)
            for dat in ("DAT(1,1)", "DAT(0,2)"):
                claims.append(Claim(
                    text=f"{dat} is more data-efficient than the Transformer on `{task}` (mean accuracy over "
                         f"{len(grid)} training-set sizes)",
                    better=dat, worse="Transformer", metric="accuracy", higher_is_better=True,
                    where={"task": task}, source=self._published(task, dat, grid)))
        return claims

    @staticmethod
    def _published(task: str, dat: str, grid: list[int]) -> str:
        """The paper's mean accuracy over the same sizes, where the paper has all of them."""
        curve = dict(zip(PAPER_SIZES[task], PAPER_CURVES[task][dat]))
        base = dict(zip(PAPER_SIZES[task], PAPER_CURVES[task]["Transformer"]))
        if not all(size in curve for size in grid):
            return f"paper (sizes {PAPER_SIZES[task][0]}–{PAPER_SIZES[task][-1]}): no point at every size here"
        mean = sum(curve[s] for s in grid) / len(grid)
        mean_base = sum(base[s] for s in grid) / len(grid)
        return f"paper, same sizes: {dat} {mean:.3f} vs Transformer {mean_base:.3f}"

    def reference(self, arm: str, params: dict[str, Any], metric: str) -> float | None:
        if metric != "accuracy" or params.get("task") not in PAPER_CURVES or arm not in ARMS:
            return None
        curve = dict(zip(PAPER_SIZES[params["task"]], PAPER_CURVES[params["task"]][arm]))
        return curve.get(params.get("size"))

    def _settings(self, s: dict[str, Any], size: int) -> TrainSettings:
        steps = steps_for_epochs(s["epochs"], size, s["batch_size"], s["min_steps"])
        return TrainSettings(steps=steps, batch_size=s["batch_size"], lr=s["lr"], betas=tuple(s["betas"]),
                             warmup_steps=s["warmup_steps"], schedule=s["schedule"])

    def configs(self, scale: str) -> dict[str, Any]:
        import attnlab

        s = self.scale_settings(scale)
        arms = {}
        for arm, preset in ARMS.items():
            config = attnlab.build_config("dat-vision", preset, **s["model"])
            arms[arm] = {"kind": "dat-vision", "preset": preset, "overrides": s["model"],
                         "config": _config_dict(config), "parameters": _count("dat-vision", preset, s["model"])}
        sizes = {task: _task_sizes(s, task, None) for task in s["tasks"]}
        return {"arms": arms, "tasks": s["tasks"], "sizes": sizes, "n_test": s["n_test"],
                "training": {"epochs": s["epochs"], "min_steps": s["min_steps"], "batch_size": s["batch_size"],
                             "optimizer": "AdamW, weight decay 0 (Adam)", "lr": s["lr"], "betas": list(s["betas"]),
                             "schedule": s["schedule"], "warmup_steps": s["warmup_steps"],
                             "steps": "max(min_steps, ceil(epochs · size / min(batch_size, size)))"},
                "data": "relational_games.make_splits(task, size, n_test, seed=seed): pentomino training images; "
                        "test sets of unseen pentominoes, hexominoes and stripes"}

    def run(self, spec: RunSpec, scale: str, out_dir: Path, progress: Progress) -> RunResult:
        import attnlab

        s = self.scale_settings(scale)
        task, size = spec.params["task"], int(spec.params["size"])
        splits = rg.make_splits(task, size, s["n_test"], seed=spec.seed)
        images, labels = rg.as_tensors(*splits["train"])
        tests = {name: rg.as_tensors(*splits[name]) for name in ("test", "test_hexominoes", "test_stripes")}
        set_seed(spec.seed)
        device = device_of(self.device)
        model = attnlab.create_model("dat-vision", ARMS[spec.arm], **s["model"]).to(device)
        final = train_image_classifier(model, images, labels, self._settings(s, size), seed=spec.seed,
                                       tests=tests, progress=progress)
        return RunResult(final=final)


def _config_dict(config: Any) -> dict[str, Any]:
    """The config's own fields as JSON values (what configs.json records)."""
    d = config.to_diff_dict() if hasattr(config, "to_diff_dict") else config.to_dict()
    return {k: v for k, v in d.items() if k not in ("transformers_version", "architectures")}


def _count(kind: str, preset: str, overrides: dict[str, Any]) -> int:
    """Parameters of the arm's model, built on the meta device (no memory, no time)."""
    import torch

    import attnlab

    with torch.device("meta"):
        model = attnlab.create_model(kind, preset, **overrides)
    return parameter_count(model)


RELATIONAL_GAMES = RelationalGames()
