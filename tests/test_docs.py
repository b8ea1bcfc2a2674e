"""The documentation: a short README, links and anchors that resolve, and words that describe the software only.

Links are checked the way a code host renders Markdown: a relative link or image must name an existing
file (or folder), and a ``#anchor`` must be the slug of a heading in the target file (GitHub's rules:
lowercase, punctuation other than ``-`` and ``_`` removed, spaces turned into ``-``, duplicates suffixed
``-1``, ``-2``...). External links (http, https, mailto) are not fetched.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_README_LINES = 250

# Words about how the software was made rather than what it is; none may appear in the docs or the code.
BANNED = re.compile(r"\bsession|\bVM\b|lent to|the issue|seed .?00[0-4]", re.IGNORECASE)
# In prose (Markdown and suite comments), not even the bare word.
BANNED_IN_PROSE = re.compile(r"\bissues?\b", re.IGNORECASE)


def markdown_files() -> list[Path]:
    """README.md, every page under docs/, and the Markdown files under benchmarks/."""
    files = [README, *sorted((ROOT / "docs").rglob("*.md")), *sorted((ROOT / "benchmarks").rglob("*.md"))]
    return [f for f in files if f.is_file()]


def prose_files() -> list[Path]:
    """The text files of the docs: the Markdown pages and the benchmark suites (YAML)."""
    return markdown_files() + sorted((ROOT / "benchmarks").rglob("*.yaml"))


def code_files() -> list[Path]:
    return sorted((ROOT / "attnlab").rglob("*.py"))


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# --- Markdown parsing -------------------------------------------------------------------------------------

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target "title") and ![alt](target); the target may be wrapped in <...>.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_LINK = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]*)\"", re.IGNORECASE)
HTML_ANCHOR = re.compile(r"<[a-z]+\b[^>]*?\b(?:id|name)\s*=\s*\"([^\"]*)\"", re.IGNORECASE)


def lines_outside_fences(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks, as written."""
    lines, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence = None
            continue
        lines.append(line)
    return lines


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown text outside fenced code blocks, inline code spans blanked out."""
    return [INLINE_CODE.sub(lambda c: " " * len(c.group(0)), line) for line in lines_outside_fences(text)]


def heading_text(raw: str) -> str:
    """The rendered text of a heading: links reduced to their text, backticks and emphasis markers dropped."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", raw)
    text = re.sub(r"<[^>]+>", "", text)
    return text.replace("`", "").replace("*", "")


def slugify(text: str) -> str:
    """GitHub's anchor for a heading's text: lowercase; keep letters, marks, digits, `_`, `-` and spaces;
    then every space becomes `-`."""
    kept = []
    for ch in heading_text(text).strip().lower():
        category = unicodedata.category(ch)
        if ch in " -_" or category[0] in "LM" or category == "Nd":
            kept.append(ch)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link may name in a Markdown file: heading slugs (duplicates get -1, -2, ...) and
    explicit HTML ids/names."""
    seen: dict[str, int] = {}
    result = set()
    # Headings are read outside code blocks, but with their backticks intact (code spans are heading text).
    for line in lines_outside_fences(path.read_text(encoding="utf-8")):
        h = HEADING.match(line)
        if h:
            slug = slugify(h.group(2))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            result.add(slug if n == 0 else f"{slug}-{n}")
        result.update(HTML_ANCHOR.findall(line))
    return result


def links(path: Path) -> list[str]:
    """Every link and image target in a Markdown file, outside code."""
    found = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        found += INLINE_LINK.findall(line)
        found += HTML_LINK.findall(line)
        m = REFERENCE_DEF.match(line)
        if m:
            found.append(m.group(1))
    return found


def is_external(target: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE) is not None or target.startswith("//")


def link_problem(source: Path, target: str) -> str | None:
    """Why a relative link from ``source`` does not resolve, or None when it does (or is external)."""
    if not target or is_external(target):
        return None
    path_part, _, anchor = target.partition("#")
    path_part = path_part.split("?", 1)[0]
    dest = source if not path_part else (source.parent / path_part).resolve()
    if not dest.exists():
        return f"{target}: no such file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if anchor and dest.is_file() and dest.suffix.lower() == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading with anchor #{anchor} in {rel(dest)}"
    return None


# --- the tests ----------------------------------------------------------------------------------------------


def test_slugify_follows_github_rules():
    assert slugify("Quality: every family on Shakespeare at one budget") == (
        "quality-every-family-on-shakespeare-at-one-budget"
    )
    assert slugify("MoA metric LM (`moa`, model_type `moa_metric`)") == "moa-metric-lm-moa-model_type-moa_metric"
    assert slugify("Speed and memory: `attnlab bench --suite cpu-small`") == (
        "speed-and-memory-attnlab-bench---suite-cpu-small"
    )
    assert slugify("What the demo does — and reaches") == "what-the-demo-does--and-reaches"


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A\n## Results\n```\n# not a heading\n```\n## Results\n## Results\n", encoding="utf-8")
    assert anchors(page) == {"a", "results", "results-1", "results-2"}


def test_links_skip_code(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "see [x](a.md#b) and ![img](p.png 'no') `[not](c.md)`\n```\n[no](d.md)\n```\n[ref]: e.md\n",
        encoding="utf-8",
    )
    assert links(page) == ["a.md#b", "p.png", "e.md"]


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it under {MAX_README_LINES} and move detail to docs/"


@pytest.mark.parametrize("page", markdown_files(), ids=rel)
def test_relative_links_and_anchors_resolve(page):
    problems = [p for t in links(page) if (p := link_problem(page, t))]
    assert not problems, f"{rel(page)}:\n  " + "\n  ".join(problems)


def banned_hits(files: list[Path], pattern: re.Pattern) -> list[str]:
    hits = []
    for f in files:
        for i, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{rel(f)}:{i}: {line.strip()[:120]}")
    return hits


def test_docs_describe_the_software_only():
    hits = banned_hits(prose_files(), BANNED) + banned_hits(prose_files(), BANNED_IN_PROSE)
    assert not hits, "development words in the docs:\n" + "\n".join(hits)


def test_code_describes_the_software_only():
    hits = banned_hits(code_files(), BANNED)
    assert not hits, "development words in attnlab/:\n" + "\n".join(hits)
