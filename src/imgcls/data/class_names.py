"""--class-names: readable names for classes the data labels with numbers (Fashion-MNIST's 0..9).

Three spellings: a file with one name a line (in class order), a CSV file of `label,name` rows (an
optional header), or the names inline, comma-separated. The names then stand for the classes in
model.json and every plot, CSV, report, page and submission the run writes.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import UserError


def _from_csv_rows(rows: list[list[str]], classes: list[str], source: str) -> list[str]:
    if rows and rows[0][0].strip().lower() in ("label", "class", "id") and rows[0][0].strip() not in classes:
        rows = rows[1:]  # a header
    mapping = {row[0].strip(): row[1].strip() for row in rows if len(row) >= 2}
    unknown = sorted(set(mapping) - set(classes))
    missing = [c for c in classes if c not in mapping]
    if unknown or missing:
        detail = (f"labels {', '.join(unknown[:5])} that the data does not have" if unknown
                  else f"no name for {', '.join(missing[:5])}")
        raise UserError(f"Received: --class-names {source} with {detail}; expected one label,name row per class "
                        f"({', '.join(classes[:10])})")
    return [mapping[c] for c in classes]


def parse_class_names(spec: str | list[str], classes: list[str]) -> list[str]:
    """The names for `classes` (the data's labels, in class order) from a file, a CSV or 'a,b,c'."""
    if isinstance(spec, (list, tuple)):
        names = [str(n).strip() for n in spec]
    elif Path(spec).is_file():
        text = Path(spec).read_text(encoding="utf-8-sig")
        rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
        if rows and all(len(row) >= 2 for row in rows):
            names = _from_csv_rows(rows, classes, spec)
        else:
            names = [line.strip() for line in text.splitlines() if line.strip()]
    elif "," in spec:
        names = [n.strip() for n in spec.split(",")]
    else:
        raise UserError(f"Received: --class-names {spec!r}, neither a file nor comma-separated names; expected "
                        "FILE (one name a line, or label,name rows) or 'name0,name1,...'")
    if len(names) != len(classes):
        raise UserError(f"Received: --class-names with {len(names)} names for {len(classes)} classes "
                        f"({', '.join(classes[:10])}); expected one name per class, in class order")
    if any(not n for n in names) or len(set(names)) < len(names):
        raise UserError("Received: --class-names with an empty or repeated name; expected distinct names")
    return names
