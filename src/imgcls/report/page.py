"""The one page builder (Jinja2, template page.html) for the pages imgcls writes: report.html,
quality.html (check) and audit.html. A page is a title and sections of paragraphs, a list, a picture
and a table; everything is escaped unless it is `bold(...)`/`Markup`, so file and class names cannot
break the page."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup

from ..engine.checkpoint import write_text


@dataclass
class Section:
    heading: str | None = None
    paragraphs: list = field(default_factory=list)  # str (escaped) or Markup
    items: list = field(default_factory=list)
    png: bytes | None = None  # embedded, so the page is one self-contained file
    alt: str | None = None
    header: list[str] | None = None  # a table when given
    rows: list[list] = field(default_factory=list)

    @property
    def image(self) -> str | None:
        return base64.b64encode(self.png).decode("ascii") if self.png else None


def html(template: str, *args) -> Markup:
    """A paragraph with markup: `template` is trusted, every argument is escaped (markupsafe)."""
    return Markup(template).format(*args)


def render_page(title: str, sections: list[Section]) -> str:
    from jinja2 import Environment, FileSystemLoader

    environment = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)
    return environment.get_template("page.html").render(title=title, sections=sections)


def write_page(path: Path, title: str, sections: list[Section]) -> Path:
    write_text(path, render_page(title, sections))
    return path
