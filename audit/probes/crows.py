"""CrowS-Pairs (Nangia et al., EMNLP 2020) from its official csv: each pair as a two-sentence item.

Option 0 is `sent_more`, option 1 `sent_less`. As in the dataset's reference metric, the
sentence that counts as stereotypical is `sent_more` in both directions: for a "stereo" pair
it expresses a stereotype about a historically disadvantaged group, for an "antistereo"
pair the less stereotypical sentence is the one violating it. The direction is kept with
each item so results are also reported per direction.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from audit.errors import UserError, first_line
from audit.paths import read_text
from audit.probes.items import REASON_CHARS, SENTENCES, ProbeItem, shown

REQUIRED_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
DIRECTIONS = ("stereo", "antistereo")


def load_crows(path: Path) -> tuple[list[ProbeItem], list[str]]:
    """The pairs of the csv, and "file:line: reason" for each row skipped.

    A file that is not a CrowS-Pairs csv as a whole (not UTF-8, not CSV, missing columns) is
    an error; one bad row is skipped with its reason."""
    path = Path(path)
    # A byte-order mark (a spreadsheet's export) is dropped: it would stick to the first column's name.
    text = read_text(path, "CrowS-Pairs file", expected="crows_pairs_anonymized.csv")
    items: list[ProbeItem] = []
    skipped: list[str] = []
    seen: dict[str, str] = {}
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise UserError(f"CrowS-Pairs file {path}: missing required column(s) {', '.join(missing)}")
        # The official file's first column has an empty header and holds the pair's index.
        id_column = "" if "" in columns else None
        for row_number, row in enumerate(reader):
            where = f"{path}:{reader.line_num}"
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
                skipped.append(f"{where}: stereo_antistereo {shown(direction)} is not stereo or antistereo")
                continue
            if not bias_type:
                skipped.append(f"{where}: empty bias_type")
                continue
            pair_id = (row.get(id_column) or "").strip() if id_column is not None else ""
            item_id = f"crows:{pair_id or row_number}"
            if item_id in seen:
                skipped.append(f"{where}: pair {shown(pair_id or row_number)} repeats {seen[item_id]}")
                continue
            seen[item_id] = where
            items.append(
                ProbeItem(
                    item_id=item_id,
                    category=bias_type,
                    kind=SENTENCES,
                    options=(more, less),
                    bias_aligned=(0,),
                    meta={"direction": direction},
                )
            )
    except csv.Error as exc:
        # DictReader's own line_num moves only once a whole row is read: the csv reader's is the line that failed.
        raise UserError(f"CrowS-Pairs file {path}:{reader.reader.line_num}: not valid CSV ({first_line(exc, REASON_CHARS)})") from None
    return items, skipped
