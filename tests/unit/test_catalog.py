"""The catalog in the stream: record decoding, later updated_at wins, the stock/deleted rule,
and new items reaching cold-start candidates through content similarity."""

import tracemalloc

import msgpack
import pytest

from streamrec.catalog_files import catalog_for_events, catalog_records, read_catalog_file, write_catalog_jsonl
from streamrec.lab.generator import generate_events
from udfs.candidates import SRC_NEW, CandidateTables, generate_candidates
from udfs.catalog import (
    Catalog,
    CatalogFull,
    CatalogItem,
    catalog_item_from_map,
    decode_catalog_item,
    encode_catalog_item,
    title_words,
)
from udfs.config import CatalogConfig, load_config
from udfs.events import DecodeError, Event, InvalidId, max_event_ts
from udfs.reasons import list_reasons
from udfs.runtime import build_recommender
from udfs.state import StateLimits, UserState, update_state

T0 = 1_700_000_000_000


def item(item_id, category=1, *, brand=None, price=None, stock=None, title=None, at=T0, deleted=False):
    return CatalogItem(item_id, category, brand, price, stock, title, at, deleted)


def packed(**fields):
    return msgpack.packb(fields, use_bin_type=True)


def shopper(*touches):
    """A state from ``(item, category)`` views."""
    st = UserState()
    for i, (item_id, cat) in enumerate(touches):
        update_state(st, Event(1, item_id, cat, "pv", T0 + i * 1000), StateLimits())
    return st


# --- decoding -------------------------------------------------------------------------------

def test_a_full_record_round_trips():
    rec = item(7, 3, brand="Acme", price=12.5, stock=4, title="Red wool scarf", at=T0 + 5, deleted=False)
    assert decode_catalog_item(encode_catalog_item(rec)) == rec


def test_optional_fields_may_be_null_or_missing_and_deleted_defaults_to_false():
    rec = decode_catalog_item(packed(item_id="42", category_id=3, updated_at=T0, brand=None, price=None))
    assert rec == item(42, 3)  # "42" is the integer id 42, as for events
    assert rec.deleted is False and rec.available


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xc1", "not_msgpack"),
    (msgpack.packb([1, 2]), "not_a_map"),
    (packed(category_id=1, updated_at=T0), "missing_field:item_id"),
    (packed(item_id=1, updated_at=T0), "missing_field:category_id"),
    (packed(item_id=1, category_id=1), "missing_field:updated_at"),
    (packed(item_id=1.5, category_id=1, updated_at=T0), "bad_type:item_id"),
    (packed(item_id="a\x00b", category_id=1, updated_at=T0), "bad_id:item_id"),
    (packed(item_id=1, category_id=1, updated_at="today"), "bad_type:updated_at"),
    (packed(item_id=1, category_id=1, updated_at=-1), "out_of_range:updated_at"),
    (packed(item_id=1, category_id=1, updated_at=T0, stock=-1), "out_of_range:stock"),
    (packed(item_id=1, category_id=1, updated_at=T0, stock="3"), "bad_type:stock"),
    (packed(item_id=1, category_id=1, updated_at=T0, price=float("nan")), "out_of_range:price"),
    (packed(item_id=1, category_id=1, updated_at=T0, price=True), "bad_type:price"),
    (packed(item_id=1, category_id=1, updated_at=T0, brand=5), "bad_type:brand"),
    (packed(item_id=1, category_id=1, updated_at=T0, title="x" * 600), "out_of_range:title"),
    (packed(item_id=1, category_id=1, updated_at=T0, deleted="yes"), "bad_type:deleted"),
    (b"\x80" + b"x" * 20000, "too_large"),
])
def test_bad_records_are_values_with_a_dead_letter_reason(raw, reason):
    out = decode_catalog_item(raw)
    assert isinstance(out, DecodeError)
    assert out.reason.startswith(reason), out.reason
    assert out.raw == raw


@pytest.mark.parametrize("raw", [None, b""])
def test_a_tombstone_is_a_dead_letter_whether_read_as_null_or_as_the_jobs_empty_bytes(raw):
    """The job reads a null value as empty bytes (RawRecordDeserializer, ``as_bytes``) and no key, so
    it cannot delete by key; the peer and the lookup service read None: one reason for both."""
    out = decode_catalog_item(raw)
    assert isinstance(out, DecodeError)
    assert out.reason.startswith("tombstone:") and out.raw == b""


def test_an_updated_at_past_now_plus_the_skew_is_a_future_timestamp_dead_letter():
    max_ts = max_event_ts(300_000)
    far = decode_catalog_item(packed(item_id=1, category_id=1, updated_at=9_999_999_999_999), max_ts)
    assert isinstance(far, DecodeError) and far.reason.startswith("future_timestamp:"), far
    assert decode_catalog_item(packed(item_id=1, category_id=1, updated_at=max_ts), max_ts) == item(1, at=max_ts)


def test_publishing_validates_with_the_same_rule():
    with pytest.raises(InvalidId) as info:
        catalog_item_from_map({"item_id": 1, "category_id": 1, "updated_at": T0, "stock": -2})
    assert info.value.reason.startswith("out_of_range:stock")


# --- later updated_at wins --------------------------------------------------------------------

def test_a_later_updated_at_wins_whatever_the_arrival_order():
    old, new = item(5, stock=0, at=T0), item(5, stock=9, at=T0 + 1)
    for order in ([old, new], [new, old]):
        cat = Catalog()
        for rec in order:
            cat.apply(rec)
        assert cat.items[5] == new
        assert 5 not in cat.unavailable


def test_a_tie_keeps_the_first_record():
    cat = Catalog()
    assert cat.apply(item(5, stock=3))
    assert not cat.apply(item(5, stock=0))
    assert cat.items[5].stock == 3


# --- the stock / deleted rule -------------------------------------------------------------------

def test_out_of_stock_and_deleted_items_are_unavailable_until_restocked():
    cat = Catalog()
    cat.apply(item(1, stock=0))
    cat.apply(item(2, deleted=True))
    cat.apply(item(3, stock=None))  # unknown stock: sellable
    assert cat.unavailable == {1, 2}
    cat.apply(item(1, stock=5, at=T0 + 1))
    assert cat.unavailable == {2}


def test_blocked_items_are_no_candidate_from_any_source():
    tables = CandidateTables(covisit={"A": [("X", 1.0), ("Y", 2.0)]}, trending=["T", "X", "U"],
                             category_top={1: ["Y", "C"]}, item_category={"X": 1, "Y": 1, "C": 1, "T": 2, "U": 2})
    st = shopper(("A", 1), ("B", 1))
    everything = set(generate_candidates(st, tables, n=20).items)
    assert {"X", "Y", "C", "T", "A", "B"} <= everything
    blocked = {"X", "Y", "C", "T", "A"}
    left = set(generate_candidates(st, tables, n=20, blocked=blocked).items)
    assert not left & blocked
    assert {"B", "U"} <= left


# --- new items: cold-start candidates ---------------------------------------------------------------

def test_a_new_item_reaches_a_shopper_through_its_category():
    cat = Catalog(known={"A", "B"})
    cat.apply(item("A", 1))
    cat.apply(item("NEW", 1))
    cat.apply(item("OTHER", 2))
    found = cat.new_item_candidates(shopper(("A", 1)), 5)
    assert [i for i, _, _ in found] == ["NEW"]
    assert found[0][1] == 1


def test_brand_and_title_words_reach_across_categories():
    cat = Catalog(known={"A"})
    cat.apply(item("A", 1, brand="Acme", title="Wool winter scarf"))
    cat.apply(item("SAME_BRAND", 9, brand="Acme"))
    cat.apply(item("SAME_WORDS", 8, title="Scarf of merino wool"))
    cat.apply(item("UNRELATED", 7, brand="Zed", title="garden hose"))
    found = [i for i, _, _ in cat.new_item_candidates(shopper(("A", 1)), 5)]
    assert set(found) == {"SAME_BRAND", "SAME_WORDS"}
    assert title_words("Wool winter-scarf, 2 x") == {"wool", "winter", "scarf"}


def test_a_new_item_stops_being_new_once_touched_or_unavailable():
    cat = Catalog()
    cat.apply(item("N1", 1))
    cat.apply(item("N2", 1))
    st = shopper(("Z", 1))
    cat.touched("N1")
    cat.apply(item("N2", 1, stock=0, at=T0 + 1))
    assert cat.new_item_candidates(st, 5) == []


def test_an_item_known_from_behavior_is_never_new():
    cat = Catalog(known={"OLD"})
    cat.apply(item("OLD", 1))
    assert not cat.is_new("OLD")
    assert cat.new_item_candidates(shopper(("Z", 1)), 5) == []


def test_new_items_are_candidates_with_the_new_in_catalog_reason():
    tables = CandidateTables(trending=["T"], item_category={"T": 2})
    c = generate_candidates(shopper(("A", 1)), tables, n=10, new_items=[("NEW", 1, 0.9)])
    row = c.items.index("NEW")
    assert c.sources[row] & SRC_NEW
    assert list_reasons(c, [row]) == [{"code": "new_in_catalog"}]


def test_the_recommender_lists_a_new_item_for_a_cold_shopper_and_never_a_blocked_one(fixture_artifact):
    rec = build_recommender(load_config(environ={}, overrides={"ranking": {
        "artifact_dir": str(fixture_artifact), "provider": "cpu", "top_k": 10}}), catalog=True)
    assert rec.catalog is not None
    tables = rec.artifact.tables
    first = rec.artifact.tables.trending[0]
    category = tables.item_category[first]
    st = UserState()
    ev = Event(9, first, category, "pv", T0)
    rec.apply(st, ev)
    before = rec.recommend([rec.request(st, ev)])[0]
    popular = [i for i in before["items"] if i != first][:3]
    assert popular
    for n, blocked in enumerate(popular):
        rec.catalog.apply(item(blocked, tables.item_category[blocked], stock=0, at=T0 + n))
    rec.catalog.apply(item("brand-new", category, title="a new thing", at=T0))
    after = rec.recommend([rec.request(st, ev)])[0]
    assert not set(after["items"]) & set(popular)
    assert "brand-new" in after["items"]
    reason = after["reasons"][after["items"].index("brand-new")]
    assert reason == {"code": "new_in_catalog"}


# --- catalog files (`streamrec catalog publish`) and the generated catalog -----------------------------

def test_a_csv_catalog_is_read_by_the_jobs_rule_with_bad_rows_named(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("item_id,category_id,brand,price,stock,title,updated_at,deleted\n"
                    f"1,2,Acme,3.5,0,red mug,{T0},false\n"
                    f"2,2,,,,,{T0},\n"
                    f"3,2,,,-1,,{T0},\n"
                    f"4,2,,,,,{T0},maybe\n")
    found = read_catalog_file(path)
    assert found.items == [item(1, 2, brand="Acme", price=3.5, stock=0, title="red mug"), item(2, 2)]
    assert [line for line, _ in found.rejected] == [4, 5]
    assert found.rejected[0][1].startswith("out_of_range:stock")
    assert found.rejected[1][1].startswith("bad_type:deleted")


def test_a_json_lines_catalog_round_trips_and_keys_records_by_item(tmp_path):
    items = [item(1, 2, title="blue lamp"), item("sku-9", 3, deleted=True)]
    path = tmp_path / "c.jsonl"
    assert write_catalog_jsonl(items, path) == 2
    with path.open("a") as f:
        f.write("{not json\n")
    found = read_catalog_file(path)
    assert found.items == items
    assert found.rejected[0][0] == 3 and found.rejected[0][1].startswith("not_json")
    keys = [k for k, _ in catalog_records(found.items)]
    assert keys == [b"1", b"sku-9"]


def test_the_generated_catalog_holds_every_item_of_the_log_in_its_category():
    events = generate_events(500, n_users=20, n_items=100, n_categories=5, seed=1)
    catalog = catalog_for_events(events, seed=1, updated_at=T0)
    assert {c.item_id: c.category_id for c in catalog} == {e.item_id: e.category_id for e in events}
    assert all(c.available and c.brand and c.title for c in catalog)
    assert catalog == catalog_for_events(events, seed=1, updated_at=T0)  # seeded


def test_new_items_survive_the_cut_at_n_for_a_shopper_with_many_candidates():
    # n=20: 10 co-visited, 3 recent, 2 popular from each of 3 categories = 19, then 2 new ones: 21 > 20.
    tables = CandidateTables(covisit={"A": [(f"c{k}", 1.0) for k in range(60)]},
                             category_top={c: [f"p{c}-{k}" for k in range(50)] for c in (1, 2, 3)})
    st = shopper(("A", 1), ("B", 2), ("C", 3))
    c = generate_candidates(st, tables, n=20, new_items=[("NEW", 1, 0.5), ("NEW2", 1, 0.4)])
    assert len(c.items) == 20
    assert {"NEW", "NEW2"} <= set(c.items)


# --- bounds: every instance holds the whole catalog ---------------------------------------------------

def new_words_title(n: int) -> str:
    """A 511-character title of 128 three-letter words no other title has (as a shop's SKU codes)."""
    first = 128 * n
    return " ".join(chr(0x4E00 + w % 20000) + chr(0x4E00 + w // 20000) + "x" for w in range(first, first + 128))


def test_new_title_words_cost_bounded_memory_and_their_keys_go_when_items_are_deleted_or_touched():
    """2,000 records of new items with 128 new title words each: the index keeps at most
    catalog.max_title_words of each, and no key outlives the items that put it there."""
    cat = Catalog()
    records = [decode_catalog_item(encode_catalog_item(item(f"n{n}", n % 7, brand=f"b{n}", title=new_words_title(n))))
               for n in range(2000)]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for rec in records:
        cat.apply(rec)
    per_record = (tracemalloc.get_traced_memory()[0] - before) / len(records)
    tracemalloc.stop()
    # The record (about 2 KiB as Python objects) and its 34 keys (category, brand, 32 words) at under
    # 0.5 KiB each: 20 KiB, where the unbounded index took ~120 KiB.
    assert per_record < 20 * 1024, per_record
    assert cat.index_keys() <= 7 + 2000 * (1 + CatalogConfig().max_title_words)
    assert cat.take_counts()["catalog_title_words_dropped"] == 2000 * (128 - CatalogConfig().max_title_words)
    for n, rec in enumerate(records):
        if n % 2:
            cat.apply(rec._replace(deleted=True, updated_at=T0 + 1))
        else:
            cat.touched(rec.item_id)
    assert cat.index_keys() == 0


def test_a_changed_title_releases_its_old_words():
    cat = Catalog(known={"A"})
    cat.apply(item("A", 1, title="alpha gamma"))
    cat.apply(item("NEW", 9, title="alpha beta"))
    cat.apply(item("NEW", 9, title="delta", at=T0 + 1))
    assert cat.new_item_candidates(shopper(("A", 1)), 5) == []
    assert cat.index_keys() == 2  # category 9 and "delta"


def test_only_the_first_title_words_up_to_the_cap_find_an_item():
    cat = Catalog(known={"A", "B"}, limits=CatalogConfig(max_title_words=2))
    cat.apply(item("A", 1, title="alpha"))
    cat.apply(item("B", 1, title="gamma"))
    cat.apply(item("NEW", 9, title="alpha beta gamma delta"))
    assert [i for i, _, _ in cat.new_item_candidates(shopper(("A", 1)), 5)] == ["NEW"]
    assert cat.new_item_candidates(shopper(("B", 1)), 5) == []
    assert cat.take_counts() == {"catalog_title_words_dropped": 2}


def test_at_max_index_keys_the_key_least_recently_added_to_is_evicted_and_counted():
    cat = Catalog(known={"A"}, limits=CatalogConfig(max_index_keys=2))
    cat.apply(item("A", 1, title="alpha"))
    cat.apply(item("N1", 5))  # ("c", 5)
    cat.apply(item("N2", 6))  # ("c", 6)
    cat.apply(item("N3", 5, at=T0))  # ("c", 5) again: now the most recently added to
    cat.apply(item("N4", 7))  # evicts ("c", 6)
    assert cat.index_keys() == 2
    assert cat.take_counts() == {"catalog_index_evicted": 1}
    st = UserState()
    for k, c in enumerate((5, 6, 7)):
        update_state(st, Event(1, f"x{c}", c, "pv", T0 + k), StateLimits())
    assert {i for i, _, _ in cat.new_item_candidates(st, 9)} == {"N1", "N3", "N4"}


def test_at_max_items_a_record_for_another_item_is_refused_and_held_items_still_update():
    cat = Catalog(limits=CatalogConfig(max_items=2))
    cat.apply(item(1))
    cat.apply(item(2))
    with pytest.raises(CatalogFull) as info:
        cat.apply(item(3))
    assert info.value.reason.startswith("catalog_full:")
    assert cat.apply(item(1, deleted=True, at=T0 + 1))
    assert 3 not in cat.items and cat.unavailable == {1}
    assert cat.take_counts() == {"catalog_refused": 1}
