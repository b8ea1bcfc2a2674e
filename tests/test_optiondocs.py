"""Options are documented once, where they are declared; --help and the docs tables are generated from there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from attnlab.models.config import AttnLabConfig, declared_options, option_help, own_options
from attnlab.models.registry import FAMILIES
from attnlab.optiondocs import DOCS, REGENERATE, main, pages, regenerate, render, stale_pages, write_pages
from attnlab.training.config import TrainConfig


def squeeze(text: str) -> str:
    """Text without whitespace, so argparse's line wrapping (even inside hyphenated words) does not matter."""
    return "".join(text.split())


def test_every_train_option_has_help_and_a_group():
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no help"
        assert f.metadata.get("group"), f"TrainConfig.{f.name} has no group"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_model_config_option_has_help(family):
    config_class = FAMILIES[family].config_class
    names = declared_options(config_class) + own_options(config_class)
    missing = [name for name in names if not option_help(config_class, name)]
    assert not missing, f"{config_class.__name__} options without help: {missing}"


def test_train_help_shows_the_metadata(run_cli):
    code, out, _ = run_cli("train", "--help")
    assert code == 0
    shown = squeeze(out)
    for f in dataclasses.fields(TrainConfig):
        assert squeeze(f.metadata["help"].replace("`", "")) in shown, f.name
    assert squeeze("(default: min(100, max_steps/10))") in shown and "--no-progress" in out and "--set KEY=VALUE" in out


def test_models_options_lists_a_family_and_the_skeleton(run_cli):
    code, out, _ = run_cli("models", "--options", "moa")
    assert code == 0
    assert "mqa_q_heads" in out and "query heads of the metric MQA head" in out
    assert "the MoA-100M model card's name of d_model" in out  # the card's aliases
    assert "skeleton options" in out and "tie_word_embeddings" in out
    code, _, err = run_cli("models", "--options", "nope")
    assert code == 2 and "unknown model family" in err


def test_family_tables_list_own_and_changed_options():
    lsw = render("options-lsw")
    names = [row.split(" | ")[0].strip("| `") for row in lsw.splitlines()[2:]]
    assert "mem_len" in names and "d_model" not in names  # its own options, not the unchanged skeleton ones
    assert "| `pos` | `rope` |" in lsw  # a skeleton option the family gives another default
    assert "adds no options" in render("options-gpt")
    shared = render("options-shared")
    assert all(f"`{name}`" in shared for name in declared_options(AttnLabConfig))


def test_generated_docs_blocks_are_current():
    marked = pages(DOCS)
    assert DOCS / "cli.md" in marked
    stale = [str(p.relative_to(DOCS.parent)) for p in stale_pages(DOCS)]
    assert not stale, f"generated option tables are stale in {', '.join(stale)}: run `{REGENERATE}`"


def test_regenerate_rewrites_only_between_markers():
    text = ("intro\n<!-- BEGIN GENERATED: options-leap -->\nold table\n<!-- END GENERATED: options-leap -->\n"
            "outro\n")
    new = regenerate(text)
    assert new.startswith("intro\n<!-- BEGIN GENERATED: options-leap -->\n| option |")
    assert new.endswith("<!-- END GENERATED: options-leap -->\noutro\n") and "old table" not in new
    assert regenerate(new) == new
    with pytest.raises(ValueError, match="unknown generated block"):
        regenerate("<!-- BEGIN GENERATED: nope -->\n<!-- END GENERATED: nope -->")
    with pytest.raises(ValueError, match="without a matching END"):
        regenerate("<!-- BEGIN GENERATED: options-leap -->\n")


def test_the_command_rewrites_stale_pages_and_leaves_others_alone(tmp_path: Path):
    plain = tmp_path / "plain.md"
    plain.write_text("no markers here\n")
    page = tmp_path / "families" / "lsw.md"
    page.parent.mkdir()
    page.write_text("# LSW\n<!-- BEGIN GENERATED: options-lsw -->\n<!-- END GENERATED: options-lsw -->\n")
    assert main(["--docs", str(tmp_path), "--check"]) == 1
    assert write_pages(tmp_path) == [page]
    assert "`n_registers`" in page.read_text() and plain.read_text() == "no markers here\n"
    assert main(["--docs", str(tmp_path), "--check"]) == 0
