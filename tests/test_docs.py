"""The documentation shows the example plugin's real files, not a copy that drifts."""

from __future__ import annotations

import re

from conftest import REPO_DIR

LISTING = re.compile(r'```\w+ title="(?P<path>[^"]+)"\n(?P<body>.*?)```\n', re.DOTALL)


def test_plugin_guide_listings_match_the_plugin_sources():
    guide = (REPO_DIR / "docs" / "plugins.md").read_text()
    listings = list(LISTING.finditer(guide))
    assert len(listings) >= 3
    for listing in listings:
        assert listing["body"] == (REPO_DIR / listing["path"]).read_text(), listing["path"]


def test_readme_links_point_to_existing_docs():
    readme = (REPO_DIR / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)]+)\)", readme)
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        assert (REPO_DIR / path).is_file(), link
        if anchor:  # a heading of that page, as GitHub turns headings into anchors
            headings = re.findall(r"^#+ (.+)$", (REPO_DIR / path).read_text(), flags=re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}
            assert anchor in slugs, link
