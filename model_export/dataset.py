"""Training and evaluation examples, replayed exactly as the stream sees them.

Events are replayed in event-time order through the job's item-knowledge updater
(``udfs/item_knowledge.py``: every event counts its co-visitation pairs first, as the
job's item steps do) and, per user, :func:`update_state` with the job's
:class:`StateLimits`. After each accepted event ``e_t`` (the
state includes it) whose user has a next accepted event ``e_{t+1}``, the
candidates the job would generate at that moment form one *request*; the
candidate equal to ``e_{t+1}.item_id`` is the positive.

* Training requests (``e_t`` and ``e_{t+1}`` before ``until``): the positive
  (forced in with ``sources=0`` if the generators missed it), a seeded
  subsample of the other candidates (hard negatives) and a few
  popularity-sampled negatives from outside the candidate list.
* Evaluation requests (``e_t`` at/after ``until``): the candidate list exactly
  as generated, nothing forced in; a request whose next item is not a
  candidate is a miss for every ranker.

Features come from :func:`udfs.features.build_batch`, the function the job
calls, so training features are serving features. Candidate tables and the
vocabulary use only events before ``until``; user state keeps accumulating
across the boundary, as it does in the stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from model_export.online_baselines import Moment
from udfs.candidates import Candidates, CandidateTables, bought_items_recur, build_tables, generate_candidates
from udfs.catalog import CatalogItem
from udfs.config import ItemsConfig
from udfs.errors import InputError
from udfs.events import Event, Id
from udfs.features import INPUT_NAMES, UserRequest, Vocab, build_batch
from udfs.item_knowledge import ItemKnowledge, ItemKnowledgeParams, keep_row
from udfs.state import StateLimits, UserState, update_state
from udfs.timescales import (
    derive_covisit_window_ms,
    derive_popularity_half_life_ms,
    derive_seq_window_ms,
    derive_table_period,
)


@dataclass
class ExampleSet:
    """Model inputs of many requests, concatenated; request ``i`` owns rows
    ``offsets[i]:offsets[i+1]`` and history row ``i``."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray  # float32 [B]
    offsets: np.ndarray  # int64 [N+1]
    items: list[Id]  # raw candidate item id per row
    novel: np.ndarray  # bool [N]: next item never touched by the user before
    has_positive: np.ndarray  # bool [N]
    trigger_ts: np.ndarray  # int64 [N]
    n_rows_per_request: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.n_rows_per_request = np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_rows(self) -> int:
        return int(self.offsets[-1])

    def batch(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Inputs and labels of requests ``idx`` (histories re-indexed 0..len(idx)-1)."""
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        total = int(lens.sum())
        first = np.cumsum(lens) - lens
        rows = np.arange(total, dtype=np.int64) + np.repeat(starts - first, lens)
        out = {name: self.arrays[name][idx] for name in INPUT_NAMES[:4]}
        out["cand_user"] = np.repeat(np.arange(len(idx), dtype=np.int64), lens)
        for name in INPUT_NAMES[5:]:
            out[name] = self.arrays[name][rows]
        return out, self.labels[rows]

    def select(self, idx: np.ndarray) -> ExampleSet:
        """A new set of requests ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        arrays, labels = self.batch(idx)
        lens = self.offsets[idx + 1] - self.offsets[idx]
        items = [self.items[r] for i in idx for r in range(self.offsets[i], self.offsets[i + 1])]
        return ExampleSet(arrays, labels, np.concatenate([[0], np.cumsum(lens)]).astype(np.int64), items,
                          self.novel[idx], self.has_positive[idx], self.trigger_ts[idx])


@dataclass
class _Pending:
    state: UserState
    candidates: Candidates
    trigger: Event
    touched: bool  # filled when the next event arrives: was it touched before?
    tables: CandidateTables


@dataclass
class TrainingData:
    tables: CandidateTables
    vocab: Vocab
    train: ExampleSet
    eval: ExampleSet
    validation: ExampleSet  # the validation slice's requests as served (empty without one)
    validation_train: ExampleSet  # the same requests as training examples (not in ``train``)
    validation_since_ms: int  # where the validation slice starts (``until_ms`` without one)
    validation_moments: list[Moment]  # the validation requests, as the online baselines are scored on them
    train_part: list[Event]  # the events before ``until_ms``, sorted by time (what the online baselines count)
    until_ms: int
    table_period_ms: int | None
    covisit_window_ms: int
    exclude_bought: bool
    limits: StateLimits  # the shoppers' state limits the examples were built with (the job's)
    popularity_half_life_ms: int
    train_users: int
    train_start_ms: int
    train_end_ms: int
    catalog_size: int

    @property
    def train_events(self) -> int:
        """How many events the training part holds."""
        return len(self.train_part)


def snapshot(state: UserState) -> UserState:
    """A copy that later updates cannot change (seq rows are never mutated in place)."""
    return UserState(list(state.seq), list(state.counts), dict(state.affinity), state.ref_ts,
                     list(state.bought), state.emitted, state.max_ts)


def sort_events(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda e: e.ts)


# The job's [items] defaults: what training replays with unless told otherwise.
DEFAULT_ITEMS = ItemsConfig()
HELD_OUT_SHARE = (0.1, 0.5)  # the default split holds out between 10% and 50% of the events


def default_until(
    events: Sequence[Event], frac: float = 0.8, held_out: tuple[float, float] | None = HELD_OUT_SHARE
) -> int:
    """The time at ``frac`` of the log's span. The span starts at the 0.1% quantile of
    event time, so a few stray early timestamps (real logs have them) do not move it.

    ``held_out`` (min, max share of the events at or after the split) moves the
    split for logs whose events are not spread evenly over their span (a log of a
    few bursts, or one that grows over years), so that neither part is starved."""
    ts = np.fromiter((e.ts for e in events), dtype=np.int64, count=len(events))
    lo = int(np.quantile(ts, 0.001)) if len(ts) >= 1000 else int(ts.min())
    hi = int(ts.max())
    until = lo + int(frac * (hi - lo))
    if held_out is not None and len(ts) >= 10:
        ts.sort()
        n = len(ts)
        earliest = int(ts[min(n - 1, int(n * (1 - held_out[1])))])
        latest = int(ts[min(n - 1, int(n * (1 - held_out[0])))])
        until = min(max(until, earliest), latest)
    return until


def build_vocab(events: Iterable[Event], min_count: int = 2) -> Vocab:
    items: Counter[Id] = Counter()
    cats: Counter[Id] = Counter()
    for e in events:
        items[e.item_id] += 1
        cats[e.category_id] += 1
    return Vocab.build(items, cats, min_count=min_count)


@dataclass
class _Shopper:
    state: UserState = field(default_factory=UserState)
    touched: set[Id] = field(default_factory=set)
    pending: _Pending | None = None


def replay_requests(
    events: Sequence[Event],
    tables: CandidateTables | Callable[[int], CandidateTables | None],
    limits: StateLimits,
    n_candidates: int,
    items: ItemKnowledge | None = None,
    items_until: int | None = None,
    exclude_bought: bool = True,
) -> Iterable[tuple[_Pending, Event]]:
    """Yield ``(request, next_event)`` for every accepted event with a successor, in event-time order
    (input order breaks ties).

    ``tables`` may be a function of the trigger time (None: make no request). ``items``: item rows
    that learn from every event before it (the job's ``items.online``): each event first updates
    them, as the job's item steps do (a redelivery too), then the shopper keeps the touched item's
    fresh row, so a request's candidates see the rows as the stream left them, never the next event.
    From ``items_until`` on, the rows stop learning and requests use ``tables`` alone (held-out
    requests scored offline, as the artifact ships them)."""
    choose = tables if callable(tables) else (lambda ts: tables)
    shoppers: dict[Id, _Shopper] = {}
    for e in sorted(events, key=lambda e: e.ts):
        learning = items is not None and (items_until is None or e.ts < items_until)
        row = items.observe(e.user_id, e) if learning and items is not None else None
        shopper = shoppers.get(e.user_id)
        if shopper is None:
            shopper = shoppers[e.user_id] = _Shopper()
        state = shopper.state
        if not update_state(state, e, limits):
            continue  # a redelivery: the job emits nothing and it is no "next event"
        if row is not None and items is not None:
            keep_row(state, e.item_id, row, items.params.kept_rows)
        elif state.rows:
            state.rows.clear()  # past items_until: the artifact's rows
        if shopper.pending is not None:
            shopper.pending.touched = e.item_id in shopper.touched
            yield shopper.pending, e
        shopper.touched.add(e.item_id)
        t = choose(e.ts)
        if t is None:
            shopper.pending = None
            continue
        cands = generate_candidates(state, t, n_candidates, exclude_bought=exclude_bought)
        shopper.pending = _Pending(snapshot(state), cands, e, False, t)


def _to_example_set(
    requests: list[UserRequest],
    labels: list[list[float]],
    novel: list[bool],
    has_pos: list[bool],
    vocab: Vocab,
    tables: CandidateTables,
    seq_len: int,
    chunk: int = 2048,
    attributes: Mapping[Id, CatalogItem] | None = None,
) -> ExampleSet:
    parts: dict[str, list[np.ndarray]] = {n: [] for n in INPUT_NAMES}
    for start in range(0, len(requests), chunk):
        b = build_batch(requests[start : start + chunk], vocab, tables, seq_len, attributes)
        b["cand_user"] = b["cand_user"] + start
        for n in INPUT_NAMES:
            parts[n].append(b[n])
    if requests:
        arrays = {n: np.concatenate(v) for n, v in parts.items()}
    else:
        empty = build_batch([], vocab, tables, seq_len)
        arrays = empty
    lens = np.array([len(r.candidates.items) for r in requests], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    flat_labels = np.array([x for lab in labels for x in lab], dtype=np.float32)
    items = [i for r in requests for i in r.candidates.items]
    return ExampleSet(
        arrays=arrays,
        labels=flat_labels,
        offsets=offsets,
        items=items,
        novel=np.array(novel, dtype=bool),
        has_positive=np.array(has_pos, dtype=bool),
        trigger_ts=np.array([r.trigger.ts for r in requests], dtype=np.int64),
    )


def _subset(c: Candidates, keep: Sequence[int]) -> Candidates:
    return Candidates(
        items=[c.items[i] for i in keep],
        categories=[c.categories[i] for i in keep],
        sources=[c.sources[i] for i in keep],
        covisit=[c.covisit[i] for i in keep],
    )


class _PopularitySampler:
    def __init__(self, tables: CandidateTables, rng: np.random.Generator) -> None:
        items = list(tables.popularity)
        self.items = items
        weights = np.array([tables.popularity[i] for i in items], dtype=np.float64)
        total = weights.sum()
        self.p = weights / total if total > 0 else None
        self.rng = rng
        self.cats = tables.item_category

    def sample(self, k: int, exclude: set[Id]) -> list[tuple[Id, Id]]:
        if k <= 0 or not self.items:
            return []
        idx = self.rng.choice(len(self.items), size=2 * k, p=self.p)
        out: list[tuple[Id, Id]] = []
        for i in idx:
            item = self.items[int(i)]
            if item in exclude:
                continue
            exclude.add(item)
            out.append((item, self.cats.get(item, -1)))
            if len(out) >= k:
                break
        return out


def concat_sets(sets: Sequence[ExampleSet]) -> ExampleSet:
    sets = [x for x in sets if len(x)] or list(sets[:1])
    arrays = {}
    for n in INPUT_NAMES:
        parts = [x.arrays[n] for x in sets]
        if n == "cand_user":
            base = np.cumsum([0] + [len(x) for x in sets[:-1]])
            parts = [p + b for p, b in zip(parts, base, strict=True)]
        arrays[n] = np.concatenate(parts)
    offsets = [np.zeros(1, dtype=np.int64)]
    end = 0
    for x in sets:
        offsets.append(x.offsets[1:] + end)
        end += x.n_rows
    return ExampleSet(
        arrays, np.concatenate([x.labels for x in sets]), np.concatenate(offsets),
        [i for x in sets for i in x.items], np.concatenate([x.novel for x in sets]),
        np.concatenate([x.has_positive for x in sets]), np.concatenate([x.trigger_ts for x in sets]),
    )


class _Collector:
    def __init__(self) -> None:
        self.req: list[UserRequest] = []
        self.lab: list[list[float]] = []
        self.novel: list[bool] = []
        self.has: list[bool] = []

    def add(self, req: UserRequest, lab: list[float], novel: bool, has: bool) -> None:
        self.req.append(req)
        self.lab.append(lab)
        self.novel.append(novel)
        self.has.append(has)

    def build(self, vocab: Vocab, tables: CandidateTables, seq_len: int,
              attributes: Mapping[Id, CatalogItem] | None = None) -> ExampleSet:
        return _to_example_set(self.req, self.lab, self.novel, self.has, vocab, tables, seq_len,
                               attributes=attributes)


def build_training_data(
    events: Iterable[Event],
    *,
    until_ms: int | None = None,
    limits: StateLimits | None = None,
    n_candidates: int = 100,
    seq_len: int = 50,
    hard_negatives: int = 20,
    popularity_negatives: int = 5,
    force_positive: bool = False,
    table_period_ms: int | str | None = "auto",
    min_count: int = 2,
    seed: int = 0,
    progress: bool = False,
    validation_share: float = 0.0,
    max_eval_requests: int | None = None,
    attributes: Mapping[Id, CatalogItem] | None = None,
    online_items: ItemsConfig | None = DEFAULT_ITEMS,
) -> TrainingData:
    """Tables, vocabulary, training and evaluation examples (see module doc).

    Point-in-time tables: with ``table_period_ms`` set, a training request at
    time ``t`` gets candidates and popularity from tables built on events before
    the period boundary ``until - k * period`` at or before ``t`` (requests before
    the first boundary that has a full period of history are skipped). Tables
    built on the whole training span would have counted the very transitions
    being predicted (candidate recall ~89% in training vs ~20% held out on the
    Taobao sample) and the model would learn to trust co-visitation too much.
    Evaluation requests use the tables built on everything before ``until``:
    the tables the artifact ships. ``table_period_ms=None`` uses those for
    training too; ``"auto"`` derives the period from the training part's span
    and density (:func:`derive_table_period`: one day on the Taobao sample,
    minutes on a log of hours, days or weeks on one of months).

    ``validation_share``: the latest share of the training events forms a
    validation slice inside the training part. Its requests go to
    ``validation`` as the job would serve them (every candidate, nothing forced
    in, the point-in-time tables) and, as training examples, to
    ``validation_train`` instead of ``train``, so a choice made on them is made
    on requests the model was not fitted to. The held-out part is never touched.

    ``max_eval_requests``: keep only the first that many held-out requests (a caller
    that scores the held-out part elsewhere needs a sample, for the export parity check).

    ``attributes``: the catalog's records by item, for the brand and price features
    (``udfs.features.CATALOG_FEATURES``); without it they are 0.

    ``limits``: the shoppers' state limits; by default :class:`StateLimits` with ``max_seq_len``
    ``seq_len`` and the sequence window derived from the training part
    (:func:`udfs.timescales.derive_seq_window_ms`); ``TrainingData.limits`` says which.

    ``online_items``: the job's item rows that learn from the stream (``[items]``, its defaults unless
    given; None: off, every row from the point-in-time tables). The replay runs the job's updater over
    the training part from empty rows, each event counted before its own request and never before the
    request that predicts it, so the rows of a shopper's last items at training time are what the job
    would have had (the job starts from the artifact's table, the same counts, and goes on from there).
    Evaluation requests use the artifact's tables alone, as the offline protocol and
    :func:`held_out_requests` do; ``streamrec evaluate --protocol prequential`` scores the rows learning.
    """
    from tqdm import tqdm

    evs = sort_events(events)
    if not evs:
        raise InputError("no events to train on: the log is empty after loading")
    until = default_until(evs) if until_ms is None else int(until_ms)
    train_events = [e for e in evs if e.ts < until]
    if not train_events:
        raise InputError(f"no events before the split until_ms={until} (the log starts at {evs[0].ts} ms): "
                         "move the split later with --until (Unix seconds)")
    limits = limits or StateLimits(max_seq_len=seq_len,
                                   seq_window_ms=derive_seq_window_ms([e.ts for e in train_events]))
    scales = {"window_ms": derive_covisit_window_ms(train_events),
              "popularity_half_life_ms": derive_popularity_half_life_ms(train_events)}
    tables = build_tables(train_events, **scales)
    vocab = build_vocab(train_events, min_count=min_count)
    rng = np.random.default_rng(seed)

    if table_period_ms == "auto":
        period: int | None = derive_table_period([e.ts for e in train_events])
    elif isinstance(table_period_ms, str):
        raise InputError(f"table_period_ms must be a number of ms, None or 'auto', not {table_period_ms!r}")
    else:
        period = int(table_period_ms) if table_period_ms else None
    # Point-in-time tables: a request at ts gets the tables of the events before the
    # latest boundary until - k * period at or before ts, built on demand (one per
    # distinct prefix: a log with quiet stretches needs few).
    start = default_until(train_events, 0.0, held_out=None)
    ts_sorted = np.fromiter((e.ts for e in evs), dtype=np.int64, count=len(evs))
    prefix_tables: dict[int, CandidateTables] = {}

    def choose(ts: int) -> CandidateTables | None:
        if ts >= until or not period:
            return tables
        b = until - -(-(until - ts) // period) * period
        if b - start < period:
            return None  # no full period of history before the boundary
        idx = int(np.searchsorted(ts_sorted, b, side="left"))
        t = prefix_tables.get(idx)
        if t is None:
            t = prefix_tables[idx] = build_tables(evs[:idx], **scales)
        return t

    if not 0.0 <= validation_share < 1.0:
        raise InputError(f"validation_share must be in [0, 1), not {validation_share}")
    val_until = (train_events[min(len(train_events) - 1, int(len(train_events) * (1.0 - validation_share)))].ts
                 if validation_share > 0 else until)
    samplers: dict[int, _PopularitySampler] = {}
    collectors: dict[int, _Collector] = {}
    late: dict[int, _Collector] = {}
    served: dict[int, _Collector] = {}
    moments: list[Moment] = []
    evaluation = _Collector()
    knowledge = (ItemKnowledge({}, ItemKnowledgeParams.configured(online_items, scales["window_ms"]))
                 if online_items is not None else None)
    exclude_bought = not bought_items_recur(train_events)
    it = replay_requests(evs, choose, limits, n_candidates, knowledge, items_until=until,
                         exclude_bought=exclude_bought)
    if progress:
        it = tqdm(it, desc="replay", unit="req", mininterval=1.0)
    for p, nxt in it:
        target = nxt.item_id
        cands = p.candidates
        pos = next((i for i, item in enumerate(cands.items) if item == target), -1)
        novel = not p.touched
        if p.trigger.ts >= until:
            if max_eval_requests is not None and len(evaluation.req) >= max_eval_requests:
                continue
            evaluation.add(UserRequest(p.state, cands, p.trigger),
                           [1.0 if item == target else 0.0 for item in cands.items], novel, pos >= 0)
            continue
        if nxt.ts >= until:
            continue  # the label lies past the split: neither train nor eval
        key = id(p.tables)
        in_validation = p.trigger.ts >= val_until
        if in_validation:
            moments.append(Moment(p.trigger, target, novel))
            served.setdefault(key, _Collector()).add(
                UserRequest(p.state, cands, p.trigger), [1.0 if item == target else 0.0 for item in cands.items],
                novel, pos >= 0)
        if pos < 0 and not force_positive:
            continue
        if key not in samplers:
            samplers[key] = _PopularitySampler(p.tables, rng)
        sink = (late if in_validation else collectors).setdefault(key, _Collector())
        others = [i for i in range(len(cands.items)) if i != pos]
        if len(others) > hard_negatives:
            others = sorted(rng.choice(others, size=hard_negatives, replace=False).tolist())
        sub = _subset(cands, ([pos] if pos >= 0 else []) + others)
        if pos < 0:
            sub.items.insert(0, target)
            sub.categories.insert(0, nxt.category_id)
            sub.sources.insert(0, 0)
            sub.covisit.insert(0, 0.0)
        exclude = set(cands.items)
        exclude.add(target)
        for item, cat in samplers[key].sample(popularity_negatives, exclude):
            sub.items.append(item)
            sub.categories.append(cat)
            sub.sources.append(0)
            sub.covisit.append(0.0)
        sink.add(UserRequest(p.state, sub, p.trigger), [1.0] + [0.0] * (len(sub.items) - 1), novel, pos >= 0)

    by_id = {id(t): t for t in [tables, *prefix_tables.values()]}

    def build(groups: dict[int, _Collector]) -> ExampleSet:
        parts = [c.build(vocab, by_id[k], seq_len, attributes) for k, c in groups.items()]
        return concat_sets(parts) if parts else _Collector().build(vocab, tables, seq_len)

    train = build(collectors)
    collectors.clear()
    ev = evaluation.build(vocab, tables, seq_len, attributes)
    return TrainingData(
        tables=tables,
        vocab=vocab,
        train=train,
        eval=ev,
        validation=build(served),
        validation_train=build(late),
        validation_since_ms=val_until,
        validation_moments=moments,
        train_part=train_events,
        until_ms=until,
        table_period_ms=period,
        covisit_window_ms=scales["window_ms"],
        exclude_bought=exclude_bought,
        limits=limits,
        popularity_half_life_ms=scales["popularity_half_life_ms"],
        train_users=len({e.user_id for e in train_events}),
        train_start_ms=train_events[0].ts,
        train_end_ms=train_events[-1].ts,
        catalog_size=len({e.item_id for e in evs}),
    )


def held_out_requests(
    events: Sequence[Event],
    until_ms: int,
    *,
    vocab: Vocab,
    tables: CandidateTables,
    limits: StateLimits,
    n_candidates: int,
    seq_len: int,
    attributes: Mapping[Id, CatalogItem] | None = None,
    exclude_bought: bool = True,
) -> ExampleSet:
    """The held-out requests of ``events`` (trigger at/after ``until_ms``) as a given artifact
    would serve them: its vocabulary, its candidate tables and state limits, every candidate,
    nothing forced in. With the artifact's own split and tables these are exactly the
    ``eval`` requests of :func:`build_training_data`; with another artifact's, they are the same
    events scored by a model that ships other tables, which is how two versions are compared
    on one slice (``streamrec retrain``). User state accumulates over every event, as in the stream."""
    evs = sort_events(events)
    choose: Callable[[int], CandidateTables | None] = lambda ts: tables if ts >= until_ms else None  # noqa: E731
    out = _Collector()
    for p, nxt in replay_requests(evs, choose, limits, n_candidates, exclude_bought=exclude_bought):
        if p.trigger.ts < until_ms:
            continue
        labels = [1.0 if item == nxt.item_id else 0.0 for item in p.candidates.items]
        out.add(UserRequest(p.state, p.candidates, p.trigger), labels, not p.touched, max(labels, default=0.0) > 0)
    return out.build(vocab, tables, seq_len, attributes)
