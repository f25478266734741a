"""mkdocs hooks (``mkdocs.yml``: ``hooks``): what the documentation site takes from the code.

- The Python reference: the marker ``<!-- api-reference ... -->`` becomes a mkdocstrings block a
  public name of ``producer`` (its ``__all__``), so none is left out.
- The HTTP API's routes: the marker ``<!-- openapi-routes ... -->`` becomes a table of the routes
  of ``docs/openapi.json`` (itself checked against the live schema by a test).
- The settings table: what stands between ``<!-- settings-table: start ... -->`` and ``<!--
  settings-table: end -->`` in a page is made anew, one table a group of
  ``promptq_core.settings.SETTINGS``, so the site's table is the code's own list. Each row's first
  cell carries an anchor, the variable's name in lower case (``configuration.md#promptq_max_jobs``),
  so a link leads to the setting itself. The page keeps the table as text too, for readers of the
  Markdown: ``python -m devtools.docs_hooks`` writes it there, and a test fails while it is not the
  current one.
- The benchmark reports (``bench/*.md``) become pages under ``bench/``, and the operations kit
  (``deploy/``: manifests, alert rules, the Grafana dashboard) files under ``deploy/``, so the
  pages' links to them (``../bench/...``, right in the repository) lead there in the site too, and
  the strict build checks them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from markdown.extensions.toc import slugify

from promptq_core.settings import GROUPS, SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- settings-table: start\b.*?-->\n).*?(<!-- settings-table: end -->)", re.S)
CONFIGURATION = ROOT / "docs" / "configuration.md"
API_MARKER = re.compile(r"<!-- api-reference\b.*?-->")
ROUTES_MARKER = re.compile(r"<!-- openapi-routes\b.*?-->")
READERS = {"worker": "worker", "producer": "Python API", "HTTP API": "HTTP API", "CLI": "CLI"}


def settings_table() -> str:
    """The settings, a section and a table a group, in the order of ``GROUPS``."""
    out = [
        "Jump to: " + ", ".join(f"[{group}](#{slugify(group, '-')})" for group in GROUPS) + ".",
        "",
    ]
    for group in GROUPS:
        out += [f"## {group}", "", "| variable | default | read by | meaning |", "|---|---|---|---|"]
        out += [_row(s) for s in SETTINGS if s.group == group]
        out.append("")
    return "\n".join(out)


def anchor(name: str) -> str:
    """The id of a setting's row in the table: its name in lower case."""
    return name.lower()


def _row(setting: Setting) -> str:
    readers = ", ".join(READERS[r] for r in setting.readers)
    first = f'<a id="{anchor(setting.name)}"></a>`{setting.name}`'
    cells = (first, setting.default, readers, setting.meaning)
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def api_reference() -> str:
    """A mkdocstrings block for each public name of ``producer``, from the module that defines it."""
    import producer

    homes: dict[str, str] = producer._HOME
    return "\n\n".join(f"::: {homes[name]}.{name}" for name in producer.__all__)


OUTSIDE = re.compile(r"\]\(\.\./(bench|deploy)/")
"""A page's link to the project's ``bench/`` or ``deploy/`` (``../bench/...``, as it reads in the
repository), which the site holds inside itself."""


def openapi_routes() -> str:
    """A table of the HTTP API's routes: method, path, what it does, the statuses it answers."""
    import json

    schema = json.loads((ROOT / "docs" / "openapi.json").read_text())
    rows = ["| route | what it does | statuses |", "|---|---|---|"]
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            statuses = ", ".join(sorted(operation.get("responses", {})))
            rows.append(f"| `{method.upper()} {path}` | {operation.get('summary', '')} | {statuses} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = OUTSIDE.sub(lambda m: f"]({m.group(1)}/", markdown)
    markdown = ROUTES_MARKER.sub(lambda _m: openapi_routes(), markdown)
    markdown = API_MARKER.sub(lambda _m: api_reference(), markdown)
    return with_settings_table(markdown)


def with_settings_table(markdown: str) -> str:
    """``markdown`` with the current settings table between its markers."""
    return MARKER.sub(lambda m: m.group(1) + "\n" + settings_table() + "\n" + m.group(2), markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "bench").glob("*.md")):
        files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.is_file():
            files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files


if __name__ == "__main__":  # python -m devtools.docs_hooks: the table written into docs/configuration.md
    CONFIGURATION.write_text(with_settings_table(CONFIGURATION.read_text()))
