"""The documentation: the MkDocs site builds with warnings as errors, every page is in the navigation, links stay
inside the repository, and the methods page covers every registered method."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_site_builds_with_warnings_as_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert "score_images" in api and "prompt_mean_se" in api  # the API pages render the docstrings


def test_every_page_is_in_the_navigation_and_every_link_stays_in_the_repository():
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    listed = {page for entry in nav for page in entry.values()}
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    assert pages == listed
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        for target, _ in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"{doc.name}: {target}"
    assert "../shared" not in (REPO / "README.md").read_text()


def test_the_methods_page_covers_every_registered_method():
    from flowrl.core.advantages import ADVANTAGES
    from flowrl.core.losses import LOSSES
    from flowrl.samplers.modes import ROLLOUT_MODES

    text = (REPO / "docs" / "methods.md").read_text()
    for registry in (ROLLOUT_MODES, ADVANTAGES, LOSSES):
        missing = [name for name in registry.names() if f"`{name}`" not in text]
        assert not missing, missing


def test_the_readme_is_a_five_minute_read():
    readme = (REPO / "README.md").read_text()
    assert len(readme.split()) < 1200 and "make demo" in readme and "make test" in readme


def test_the_docs_spell_each_methods_options_by_their_nested_keys():
    """The methods page lists every method's own options under ``<section>.<method>.``, and no page or preset
    comment uses an old flat name (``loss.awm_weighting``) except where it says the name is old."""
    import dataclasses

    from flowrl.core.advantages import ADVANTAGES
    from flowrl.core.losses import LOSSES
    from flowrl.core.method_options import flat_names
    from flowrl.samplers.modes import ROLLOUT_MODES

    text = (REPO / "docs" / "methods.md").read_text()
    old = set()
    for registry, section in ((LOSSES, "loss"), (ADVANTAGES, "advantage"), (ROLLOUT_MODES, "sampler")):
        for name in registry.names():
            options = registry.options(name)
            if options is None:
                continue
            prefix = f"{section}.{name}."
            assert prefix in text, prefix
            for f in dataclasses.fields(options):
                assert f"`{f.name}`" in text or f"{prefix}{f.name}`" in text, prefix + f.name
            old |= {f"{section}.{flat}" for flat, field in flat_names(options).items() if flat != field}
            old |= {f"{section}.{flat}=" for flat, field in flat_names(options).items() if flat == field}
    pages = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "configs").rglob("*.yaml")]
    found = [
        f"{page.name}: {line.strip()}"
        for page in pages
        for line in page.read_text().splitlines()
        if any(name in line for name in old) and not re.search(r"old (flat )?name|is now", line)
    ]
    assert not found, "\n".join(found)
