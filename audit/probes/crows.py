"""CrowS-Pairs (Nangia et al., EMNLP 2020) from its official csv: each pair as a two-sentence item.

Option 0 is `sent_more`, option 1 `sent_less`. As in the dataset's reference metric, the
sentence that counts as stereotypical is `sent_more` in both directions: for a "stereo" pair
it expresses a stereotype about a historically disadvantaged group, for an "antistereo"
pair the less stereotypical sentence is the one violating it. The direction is kept with
each item so results are also reported per direction.
"""

from __future__ import annotations

import csv
from pathlib import Path

from audit.errors import UserError
from audit.probes.items import SENTENCES, ProbeItem

REQUIRED_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")


def load_crows(path: Path) -> tuple[list[ProbeItem], list[str]]:
    """The pairs of the csv, and "file:line: reason" for each row skipped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"CrowS-Pairs file {path} does not exist")
    items: list[ProbeItem] = []
    skipped: list[str] = []
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise UserError(f"{path}: missing required column(s) {', '.join(missing)}")
        # The official file's first column has an empty header and holds the pair's index.
        id_column = "" if "" in columns else None
        for row_number, row in enumerate(reader):
            line = reader.line_num
            where = f"{path}:{line}"
            if None in row or any(row.get(c) is None for c in REQUIRED_COLUMNS):
                skipped.append(f"{where}: wrong number of fields")
                continue
            more, less = row["sent_more"].strip(), row["sent_less"].strip()
            direction = row["stereo_antistereo"].strip()
            bias_type = row["bias_type"].strip()
            if not more or not less:
                skipped.append(f"{where}: empty sentence")
                continue
            if direction not in DIRECTIONS:
                skipped.append(f"{where}: stereo_antistereo {direction!r} is not stereo or antistereo")
                continue
            if not bias_type:
                skipped.append(f"{where}: empty bias_type")
                continue
            pair_id = (row.get(id_column) or "").strip() if id_column is not None else ""
            items.append(
                ProbeItem(
                    item_id=f"crows:{pair_id or row_number}",
                    category=bias_type,
                    kind=SENTENCES,
                    options=(more, less),
                    bias_aligned=(0,),
                    meta={"direction": direction},
                )
            )
    return items, skipped
