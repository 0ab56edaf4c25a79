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
from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple

import msgpack

from udfs.config import CatalogConfig
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
TOMBSTONE = "tombstone"
"""The reason code of a null (or empty) value: the job reads no key with a record, so it cannot delete by key."""


class CatalogFull(InvalidId):
    """A record for an item the catalog does not hold yet, once it holds ``catalog.max_items``: refused
    (the caller dead-letters it), since dropping a held item could make a deleted one sellable again."""


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


def decode_catalog_item(raw: bytes | None, max_ts_ms: int | None = None) -> CatalogItem | DecodeError:
    """Decode one catalog record; reasons start with the events' codes (docs/contracts.md "Catalog").

    ``max_ts_ms``: the latest ``updated_at`` accepted (:func:`~udfs.events.max_event_ts`, as for
    events' ``ts``): a later one would win over every real update, a delete included, so it is a
    ``future_timestamp`` dead letter. A null value (a Kafka tombstone) reaches the job as empty
    bytes, with no key, so null and empty are one :data:`TOMBSTONE` dead letter wherever read."""
    if not raw:
        return DecodeError(f"{TOMBSTONE}: null or empty value; a record is never deleted by key, "
                           "publish deleted: true to delist an item", b"")
    if len(raw) > MAX_CATALOG_BYTES:
        return DecodeError(f"too_large: {len(raw)} bytes > {MAX_CATALOG_BYTES}", raw)
    try:
        obj = msgpack.unpackb(raw, raw=False, strict_map_key=False, max_bin_len=MAX_CATALOG_BYTES,
                              max_str_len=MAX_CATALOG_BYTES, max_array_len=64, max_map_len=64, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        return DecodeError(f"not_msgpack: {type(exc).__name__}: {str(exc)[:120]}", raw)
    try:
        item = catalog_item_from_map(obj)
    except InvalidId as exc:
        return DecodeError(exc.reason, raw)
    if max_ts_ms is not None and item.updated_at > max_ts_ms:
        return DecodeError(f"future_timestamp: updated_at {item.updated_at} is {item.updated_at - max_ts_ms} ms "
                           "beyond now + job.max_future_skew_ms", raw)
    return item


def title_words(title: str | None) -> frozenset[str]:
    """Lower-cased words of three or more letters or digits: what content similarity compares."""
    return frozenset(ordered_title_words(title))


def ordered_title_words(title: str | None) -> list[str]:
    """:func:`title_words` in title order, each once: which ones a cap keeps is then the title's first."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(title))) if title else []


DEFAULT_LIMITS = CatalogConfig()
IndexKey = tuple[str, Any]
"""A key of the new-item index: ``("c", category)``, ``("b", brand)`` or ``("w", title word)``."""
COUNTS = ("catalog_refused", "catalog_title_words_dropped", "catalog_index_evicted")
"""What the caps did, by the job's counter names (:meth:`Catalog.take_counts`)."""


class Catalog:
    """The latest record per item, the items that must not be listed, and an index of new items.

    ``known``: items that already have behavior (the artifact's popularity table); an item
    the catalog adds that is not among them is *new* until a shopper touches it
    (:meth:`touched`). New items are indexed by category, brand and title word, the most
    recent :data:`NEW_PER_KEY` per key. Every instance holds the whole catalog, so ``limits``
    (the ``catalog`` config section) bound it: at ``max_items`` a new item's record is refused
    (:class:`CatalogFull`), past ``max_title_words`` an item's further title words are not indexed, and at
    ``max_index_keys`` the key least recently added to is evicted. An item leaves the index
    (and a key with no item left goes) when it is updated, touched or becomes unavailable.
    """

    def __init__(self, known: Collection[Id] = (), limits: CatalogConfig = DEFAULT_LIMITS) -> None:
        self.items: dict[Id, CatalogItem] = {}
        self.unavailable: set[Id] = set()
        self.limits = limits
        self.counts: Counter[str] = Counter()
        """What the caps did since :meth:`take_counts` (names in :data:`COUNTS`)."""
        self._known = known
        self._new: set[Id] = set()
        self._words: dict[Id, frozenset[str]] = {}
        """Title words of indexed new items, computed once (similarity reads them per event)."""
        self._indexed: dict[Id, tuple[IndexKey, ...]] = {}
        """The keys each indexed item was added under, so they can be released."""
        self._index: OrderedDict[IndexKey, list[Id]] = OrderedDict()
        """Key -> newest items first; in order of the last addition, so the first is the one evicted."""

    def __len__(self) -> int:
        return len(self.items)

    def index_keys(self) -> int:
        return len(self._index)

    def take_counts(self) -> Counter[str]:
        """The counts since the last call, reset (the job adds them to its counters)."""
        counts, self.counts = self.counts, Counter()
        return counts

    def apply(self, item: CatalogItem) -> bool:
        """Take a record unless the item's current one is as recent or later; True when taken.

        A later ``updated_at`` wins whatever the order records arrive in (a compacted topic
        read from several partitions, a replay); a tie keeps the first seen. Raises
        :class:`CatalogFull` for a new item at ``max_items``."""
        current = self.items.get(item.item_id)
        if current is not None and current.updated_at >= item.updated_at:
            return False
        if current is None and len(self.items) >= self.limits.max_items:
            self.counts["catalog_refused"] += 1
            raise CatalogFull(f"catalog_full: {len(self.items)} items held, catalog.max_items; "
                              "a record for another item is refused")
        self.items[item.item_id] = item
        if item.available:
            self.unavailable.discard(item.item_id)
        else:
            self.unavailable.add(item.item_id)
        if current is None and item.item_id not in self._known:
            self._new.add(item.item_id)
        self._unindex(item.item_id)
        if item.item_id in self._new and item.available:
            self._add_to_index(item)
        return True

    def touched(self, item_id: Id) -> None:
        """A shopper acted on the item: it has behavior now and leaves the new-item candidates."""
        if item_id in self._new:
            self._new.discard(item_id)
            self._unindex(item_id)

    def is_new(self, item_id: Id) -> bool:
        return item_id in self._new

    def _add_to_index(self, item: CatalogItem) -> None:
        words = ordered_title_words(item.title)
        cap = self.limits.max_title_words
        if len(words) > cap:
            self.counts["catalog_title_words_dropped"] += len(words) - cap
            words = words[:cap]
        keys: list[IndexKey] = [("c", item.category_id)]
        if item.brand:
            keys.append(("b", item.brand))
        keys.extend(("w", w) for w in words)
        self._words[item.item_id] = frozenset(words)
        self._indexed[item.item_id] = tuple(keys)
        for key in keys:
            entries = self._index.get(key)
            if entries is None:
                if len(self._index) >= self.limits.max_index_keys:
                    self._index.popitem(last=False)
                    self.counts["catalog_index_evicted"] += 1
                entries = self._index[key] = []
            else:
                self._index.move_to_end(key)
            entries.insert(0, item.item_id)
            del entries[NEW_PER_KEY:]

    def _unindex(self, item_id: Id) -> None:
        """Take the item out of every key it was added under; a key left empty goes."""
        self._words.pop(item_id, None)
        for key in self._indexed.pop(item_id, ()):
            entries = self._index.get(key)
            if entries is not None and item_id in entries:
                entries.remove(item_id)
                if not entries:
                    del self._index[key]

    def _lookup(self, key: IndexKey) -> list[Id]:
        return self._index.get(key, [])

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
            pool.update(dict.fromkeys(self._lookup(("c", cat))))
        for brand in brands:
            pool.update(dict.fromkeys(self._lookup(("b", brand))))
        for word in words:
            pool.update(dict.fromkeys(self._lookup(("w", word))))
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


def load_catalog(items: Iterable[CatalogItem], known: Collection[Id] = (),
                 limits: CatalogConfig = DEFAULT_LIMITS) -> Catalog:
    catalog = Catalog(known, limits)
    for item in items:
        catalog.apply(item)
    return catalog
