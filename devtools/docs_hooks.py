"""mkdocs hooks (``mkdocs.yml``: ``hooks``): what the documentation site takes from the code.

- The Python reference: the marker ``<!-- api-reference ... -->`` becomes a mkdocstrings block a
  public name of ``producer`` (its ``__all__``), so none is left out.
- The settings table: the marker ``<!-- settings-table ... -->`` in a page becomes one table a group
  of ``promptq_core.settings.SETTINGS``, so the table is the code's own list and cannot drift.
- The benchmark reports (``bench/*.md``) become pages under ``bench/``, and the operations kit
  (``deploy/``: manifests, alert rules, the Grafana dashboard) files under ``deploy/``, so the
  pages link to them and the strict build checks those links too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from promptq_core.settings import GROUPS, SETTINGS, Setting

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- settings-table\b.*?-->")
API_MARKER = re.compile(r"<!-- api-reference\b.*?-->")
READERS = {"worker": "worker", "producer": "Python API", "HTTP API": "HTTP API", "CLI": "CLI"}


def settings_table() -> str:
    """The settings, a section and a table a group, in the order of ``GROUPS``."""
    out = [
        "Jump to: " + ", ".join(f"[{group}](#{_slug(group)})" for group in GROUPS) + ".",
        "",
    ]
    for group in GROUPS:
        out += [f"## {group}", "", "| variable | default | read by | meaning |", "|---|---|---|---|"]
        out += [_row(s) for s in SETTINGS if s.group == group]
        out.append("")
    return "\n".join(out)


def _row(setting: Setting) -> str:
    readers = ", ".join(READERS[r] for r in setting.readers)
    cells = (f"`{setting.name}`", setting.default, readers, setting.meaning)
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _slug(heading: str) -> str:
    """The anchor mkdocs' table of contents gives a heading."""
    return re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower())


def api_reference() -> str:
    """A mkdocstrings block for each public name of ``producer``, from the module that defines it."""
    import producer

    homes: dict[str, str] = producer._HOME
    return "\n\n".join(f"::: {homes[name]}.{name}" for name in producer.__all__)


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = API_MARKER.sub(lambda _m: api_reference(), markdown)
    return MARKER.sub(lambda _m: settings_table(), markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for path in sorted((ROOT / "bench").glob("*.md")):
        files.append(File.generated(config, f"bench/{path.name}", abs_src_path=str(path)))
    for path in sorted((ROOT / "deploy").rglob("*")):
        if path.is_file():
            files.append(File.generated(config, path.relative_to(ROOT).as_posix(), abs_src_path=str(path)))
    return files
