"""Catalog files (CSV or JSON lines) for `streamrec catalog publish`, and the catalog of a
generated log (`streamrec generate` writes one beside the events).

A file row is checked by the job's own rule (:func:`udfs.catalog.catalog_item_from_map`)
before it is published, so a bad row is reported with the reason the job would give it,
and never reaches the topic.
"""

from __future__ import annotations

import csv
import json
import random
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from udfs.catalog import CatalogItem, catalog_item_from_map, catalog_key, encode_catalog_item
from udfs.errors import InputError
from udfs.events import Event, Id, InvalidId

BRANDS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Tyrell", "Soylent", "Wonka")
WORDS = ("red", "blue", "green", "black", "white", "wool", "cotton", "leather", "steel", "wood", "classic",
         "modern", "compact", "deluxe", "travel", "home", "garden", "kitchen", "sport", "winter")
NOUNS = ("scarf", "lamp", "kettle", "jacket", "bottle", "chair", "watch", "bag", "shoe", "mug")


@dataclass
class CatalogFile:
    """The valid records of a file, and ``(line, reason)`` for every row left out."""

    items: list[CatalogItem] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def _csv_value(name: str, text: str) -> Any:
    """CSV cells are text: empty is null, numbers and booleans are parsed for the fields that hold them."""
    if text == "":
        return None
    if name in ("stock", "updated_at"):
        return int(text)
    if name == "price":
        return float(text)
    if name == "deleted":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0"):
            raise InputError(f"bad_type:deleted: {text[:16]!r} is not true/false/1/0")
        return lowered in ("true", "1")
    return text  # ids stay text: canonical_id makes "42" the integer 42, as the job does


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open(newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                yield n, {k: _csv_value(k, v or "") for k, v in row.items() if k is not None}
            except ValueError as exc:
                reason = str(exc)
                yield n, ValueError(reason if reason.startswith("bad_type:") else f"bad_type: {reason}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, ValueError(f"not_json: {exc.msg}")


def read_catalog_file(path: Path) -> CatalogFile:
    """CSV (a header naming the fields) by suffix ``.csv``, else JSON lines."""
    out = CatalogFile()
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    for line, obj in rows:
        if isinstance(obj, ValueError):
            out.rejected.append((line, str(obj)))
            continue
        try:
            out.items.append(catalog_item_from_map(obj))
        except InvalidId as exc:
            out.rejected.append((line, exc.reason))
    return out


def catalog_records(items: Iterable[CatalogItem]) -> Iterator[tuple[bytes, bytes]]:
    """The catalog topic's records: keyed by item id (compaction keeps each item's latest), msgpack value."""
    for item in items:
        yield catalog_key(item.item_id).encode(), encode_catalog_item(item)


def write_catalog_jsonl(items: Iterable[CatalogItem], path: Path) -> int:
    n = 0
    with path.open("w") as f:
        for item in items:
            f.write(json.dumps(item.to_wire(), separators=(",", ":")) + "\n")
            n += 1
    return n


def catalog_for_events(events: Sequence[Event], seed: int, updated_at: int) -> list[CatalogItem]:
    """A catalog for a generated log: every item it holds, in its category, with a seeded brand
    (one of a few per category, so brands mean something), price, stock and a short title."""
    rng = random.Random(seed)
    categories: dict[Id, Id] = {}
    for e in events:
        categories.setdefault(e.item_id, e.category_id)
    items = []
    for item_id in sorted(categories, key=str):
        cat = categories[item_id]
        brand = BRANDS[(zlib.crc32(str(cat).encode()) + rng.randrange(3)) % len(BRANDS)]
        title = f"{rng.choice(WORDS)} {rng.choice(WORDS)} {rng.choice(NOUNS)}"
        items.append(CatalogItem(item_id, cat, brand, round(rng.uniform(2, 200), 2), rng.randrange(1, 500),
                                 title, updated_at, False))
    return items


def catalog_path(events_path: Path) -> Path:
    """Where `streamrec generate` writes the catalog of ``events_path``: beside it."""
    return events_path.with_name(events_path.stem + ".catalog.jsonl")
