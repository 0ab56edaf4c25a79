"""The item catalog in the stream: the record contract, decoding, and the job's view of it.

A catalog record says what an item is (category, brand, price, title) and whether it can
be sold (``stock``, ``deleted``). Decoding never raises: a bad record comes back as a
:class:`~udfs.events.DecodeError` value, like a bad event, so the job dead-letters it and
keeps running. :class:`Catalog` is what the recommender consults: which items must never
be listed (out of stock or deleted) and which new items, with no behavior yet, can reach a
shopper through what they touched (category, brand, title words).
"""

from __future__ import annotations

import math
import re
import sys
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

import msgpack

from udfs.events import MAX_TS_MS, DecodeError, Id, InvalidId, canonical_id
from udfs.state import UserState

MAX_CATALOG_BYTES = 16 * 1024
MAX_TEXT_LEN = 512
"""Longest ``brand`` or ``title`` accepted (code points)."""
REQUIRED_FIELDS = ("item_id", "category_id", "updated_at")
OPTIONAL_FIELDS = ("brand", "price", "stock", "title", "deleted")
NEW_PER_KEY = 8
"""New items remembered per category, brand and title word (the most recent ones)."""
PROFILE_ITEMS = 10
"""The shopper's last distinct items whose brand and title words find similar new items."""
PROFILE_CATEGORIES = 3
"""The shopper's top categories (by affinity) whose new items are candidates, as for popular ones."""
_WORD = re.compile(r"[^\W_]{3,}")


class CatalogItem(NamedTuple):
    """One catalog record. ``stock`` None means unknown (sellable); ``updated_at`` is ms."""

    item_id: Id
    category_id: Id
    brand: str | None
    price: float | None
    stock: int | None
    title: str | None
    updated_at: int
    deleted: bool = False

    @property
    def available(self) -> bool:
        """False once the shop says it cannot be sold: deleted, or ``stock == 0``."""
        return not self.deleted and self.stock != 0

    def to_wire(self) -> dict[str, Any]:
        return dict(self._asdict())


def encode_catalog_item(item: CatalogItem) -> bytes:
    return msgpack.packb(item.to_wire(), use_bin_type=True)


def catalog_key(item_id: Id) -> str:
    """The Kafka key of an item's records (and its broadcast-state key): compaction keeps one per item."""
    return str(item_id)


def _text(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidId(f"bad_type:{name}: expected str or null, got {type(value).__name__}")
    if len(value) > MAX_TEXT_LEN:
        raise InvalidId(f"out_of_range:{name}: {len(value)} characters > {MAX_TEXT_LEN}")
    return value


def _interned(text: str | None) -> str | None:
    """One string object per brand: a shop has few brands and many items, and every instance of the
    job holds every item's record."""
    return None if text is None else sys.intern(text)


def _price(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidId(f"bad_type:price: expected number or null, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InvalidId(f"out_of_range:price: {value} is not a finite non-negative number")
    return float(value)


def _int_field(value: Any, name: str, upper: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidId(f"bad_type:{name}: expected int, got {type(value).__name__}")
    if not 0 <= value < upper:
        raise InvalidId(f"out_of_range:{name}: {value} not in 0..{upper - 1}")
    return value


def catalog_item_from_map(obj: Any) -> CatalogItem:
    """Validate one decoded record; raises :class:`InvalidId` whose ``reason`` is a dead-letter reason.

    Missing optional fields are null; ``deleted`` defaults to false."""
    if not isinstance(obj, dict):
        raise InvalidId(f"not_a_map: top level is {type(obj).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise InvalidId(f"missing_field:{name}")
    item = canonical_id(obj["item_id"], "item_id")
    category = canonical_id(obj["category_id"], "category_id")
    stock = obj.get("stock")
    deleted = obj.get("deleted", False)
    if deleted is None:
        deleted = False
    if not isinstance(deleted, bool):
        raise InvalidId(f"bad_type:deleted: expected bool, got {type(deleted).__name__}")
    return CatalogItem(
        item_id=item,
        category_id=category,
        brand=_interned(_text(obj, "brand")),
        price=_price(obj.get("price")),
        stock=None if stock is None else _int_field(stock, "stock", 2**63),
        title=_text(obj, "title"),
        updated_at=_int_field(obj["updated_at"], "updated_at", MAX_TS_MS),
        deleted=deleted,
    )


def decode_catalog_item(raw: bytes) -> CatalogItem | DecodeError:
    """Decode one catalog record; reasons start with the events' codes (README "Catalog")."""
    if len(raw) > MAX_CATALOG_BYTES:
        return DecodeError(f"too_large: {len(raw)} bytes > {MAX_CATALOG_BYTES}", raw)
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=MAX_CATALOG_BYTES,
                              max_str_len=MAX_CATALOG_BYTES, max_array_len=64, max_map_len=64, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        return DecodeError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}", raw)
    try:
        return catalog_item_from_map(obj)
    except InvalidId as exc:
        return DecodeError(exc.reason, raw)


def title_words(title: str | None) -> frozenset[str]:
    """Lower-cased words of three or more letters or digits: what content similarity compares."""
    return frozenset(w.lower() for w in _WORD.findall(title)) if title else frozenset()


class Catalog:
    """The latest record per item, the items that must not be listed, and an index of new items.

    ``known``: items that already have behavior (the artifact's popularity table); an item
    the catalog adds that is not among them is *new* until a shopper touches it
    (:meth:`touched`). New items are indexed by category, brand and title word, the most
    recent :data:`NEW_PER_KEY` per key; entries are checked against the current record when
    read, so an update never has to find and remove old index entries.
    """

    def __init__(self, known: Collection[Id] = ()) -> None:
        self.items: dict[Id, CatalogItem] = {}
        self.unavailable: set[Id] = set()
        self._known = known
        self._new: set[Id] = set()
        self._words: dict[Id, frozenset[str]] = {}
        """Title words of indexed new items, computed once (similarity reads them per event)."""
        self._by_category: dict[Id, deque[Id]] = {}
        self._by_brand: dict[str, deque[Id]] = {}
        self._by_word: dict[str, deque[Id]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def apply(self, item: CatalogItem) -> bool:
        """Take a record unless the item's current one is as recent or later; True when taken.

        A later ``updated_at`` wins whatever the order records arrive in (a compacted topic
        read from several partitions, a replay); a tie keeps the first seen."""
        current = self.items.get(item.item_id)
        if current is not None and current.updated_at >= item.updated_at:
            return False
        self.items[item.item_id] = item
        if item.available:
            self.unavailable.discard(item.item_id)
        else:
            self.unavailable.add(item.item_id)
        if current is None and item.item_id not in self._known:
            self._new.add(item.item_id)
        if item.item_id in self._new and item.available:
            self._index(item)
        return True

    def touched(self, item_id: Id) -> None:
        """A shopper acted on the item: it has behavior now and leaves the new-item candidates."""
        if item_id in self._new:
            self._new.discard(item_id)
            self._words.pop(item_id, None)

    def is_new(self, item_id: Id) -> bool:
        return item_id in self._new

    def _index(self, item: CatalogItem) -> None:
        keys: list[tuple[dict[Any, deque[Id]], Any]] = [(self._by_category, item.category_id)]
        if item.brand:
            keys.append((self._by_brand, item.brand))
        words = self._words[item.item_id] = title_words(item.title)
        keys.extend((self._by_word, w) for w in words)
        for index, key in keys:
            entries = index.get(key)
            if entries is None:
                entries = index[key] = deque(maxlen=NEW_PER_KEY)
            if item.item_id in entries:
                entries.remove(item.item_id)
            entries.appendleft(item.item_id)

    def _live_new(self, item_id: Id) -> CatalogItem | None:
        item = self.items.get(item_id)
        return item if item is not None and item_id in self._new and item.available else None

    def new_item_candidates(self, state: UserState, limit: int) -> list[tuple[Id, Id, float]]:
        """Up to ``limit`` new items similar to what the shopper touched: ``(item, category, score)``.

        Content similarity, no behavior needed: the item's category's share of the shopper's
        category affinity, plus 1 for a brand of an item they touched, plus the Jaccard overlap
        of its title words with theirs. Looked up from the shopper's top
        :data:`PROFILE_CATEGORIES` categories and the brands and title words of their last
        :data:`PROFILE_ITEMS` distinct items, so the work per event is bounded whatever the
        catalog's size. Best first; ties keep the most recent item first."""
        if limit <= 0 or not self._new:
            return []
        total = sum(state.affinity.values()) or 1.0
        cat_share = {c: a / total for c, a in state.affinity.items()}
        brands: set[str] = set()
        words: set[str] = set()
        seen: set[Id] = set()
        for row in reversed(state.seq):
            if row[1] in seen:
                continue
            seen.add(row[1])
            touched = self.items.get(row[1])
            if touched is not None:
                if touched.brand:
                    brands.add(touched.brand)
                words |= title_words(touched.title)
            if len(seen) >= PROFILE_ITEMS:
                break
        pool: dict[Id, None] = {}
        for cat in sorted(cat_share, key=lambda c: -cat_share[c])[:PROFILE_CATEGORIES]:
            pool.update(dict.fromkeys(self._by_category.get(cat, ())))
        for brand in brands:
            pool.update(dict.fromkeys(self._by_brand.get(brand, ())))
        for word in words:
            pool.update(dict.fromkeys(self._by_word.get(word, ())))
        scored: list[tuple[Id, Id, float]] = []
        for item_id in pool:
            item = self._live_new(item_id)
            if item is None:
                continue
            score = cat_share.get(item.category_id, 0.0) + (1.0 if item.brand in brands else 0.0)
            if words:
                mine = self._words.get(item_id, frozenset())
                score += len(mine & words) / len(mine | words) if mine else 0.0
            if score > 0:
                scored.append((item_id, item.category_id, score))
        scored.sort(key=lambda t: -t[2])
        return scored[:limit]


def load_catalog(items: Iterable[CatalogItem], known: Collection[Id] = ()) -> Catalog:
    catalog = Catalog(known)
    for item in items:
        catalog.apply(item)
    return catalog
