"""MkDocs hook: the README is the site's home page, and the pages' links to it resolve.

The README links to the pages as `docs/<page>.md` (so that the links work where the repository is browsed),
and the pages link to it as `../README.md`; on the site the README is `index.md`, beside the pages.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

README = Path(__file__).resolve().parents[2] / "README.md"
TO_PAGES = re.compile(r"\]\(docs/")
TO_README = re.compile(r"\]\(\.\./README\.md")


def on_files(files, config):
    text = TO_PAGES.sub("](", README.read_text(encoding="utf-8"))
    files.append(File.generated(config, "index.md", content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    return TO_README.sub("](index.md", markdown)
