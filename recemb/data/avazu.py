"""Reader of the Avazu Click-Through Rate Prediction data (Kaggle 2014), schema `data/avazu.yaml`.

Kaggle's `train.csv`: 40,428,967 mobile-ad impressions over 10 days, sorted by hour; a
header and 24 comma-separated columns. The Kaggle file has CRLF line endings, DeepCTR's
sample LF: both are read (the generic reader cuts lines at LF and drops a trailing CR).

- `click` is the label (0/1; anything else is a malformed line).
- `id` is dropped: a unique impression id is no feature.
- `hour` (YYMMDDHH) becomes two categorical features, `hour` (hour of day, 0-23) and
  `weekday` (0 = Monday); the date itself is dropped, as it would not generalize across a
  time split.
- the other 21 columns are categorical, the integer ones included (codes, not amounts).

Rows are split in file order, 70/10/20 by default; vocabularies are fitted on the
training rows with min_count 2 (from the schema file; `min_count=` changes it). The file
is read in chunks, twice, like every delimited file: see `recemb.data.csv_reader`.
"""

from __future__ import annotations

from pathlib import Path

from recemb.data.csv_reader import load_csv
from recemb.data.schema_file import SchemaFile
from recemb.data.tabular import LoadedData, ReadOptions
from recemb.data.vocab import Vocabulary


def load_avazu(
    path: str | Path,
    schema: SchemaFile | str | Path = "avazu",
    options: ReadOptions = ReadOptions(),
    vocabularies: dict[str, Vocabulary] | None = None,
) -> LoadedData:
    """Read, check and encode an Avazu file (the full `train.csv` or a sample of it)."""
    return load_csv(path, schema, options, vocabularies)
