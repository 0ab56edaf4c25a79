"""Prequential (test-then-train) evaluation through the streaming job itself.

Protocol, precisely:

1. The log is sorted stably by event time and written to a temporary
   msgpack replay file (ids and ms times as loaded); the bounded job (:func:`jobs.entry.run_job`, file source
   to file sink, checkpointing off, parallelism 1) runs on it with
   ``job.since_ms = until`` (the artifact's ``train_span.until_ms`` unless
   given), so every user's state is built from all earlier events but lists
   are emitted only for *held-out* events (``ts >= until``). State limits and
   ``n_candidates`` come from the artifact's manifest; ``ranking.top_k`` is
   ``top_k`` (default 10): the lists are what the job serves. (Whole ranked
   candidate lists, ``top_k = n_candidates``, would give MRR and AUC over all
   candidates as offline, but the bounded job's collect path decodes output
   bytes one by one through py4j: ~10x the run time on users_head.)
2. From the sink's JSON lines, per user, the lists in ``seq`` order: the list
   emitted for held-out event ``e_{i-1}`` is *tested* on the next held-out
   event ``e_i`` of the same user, i.e. each held-out event after the user's
   first emitted list is predicted from the last list emitted for that user
   before it (the one its previous event triggered). Events the job rejects
   as redeliveries (same item, behavior and ts) emit nothing and are not
   tested, as offline.
3. Per tested event, ``rank`` = position of ``e_i.item_id`` in that list
   (miss if absent). ``hr@10``, ``ndcg@10`` (1/log2(rank+2) if rank < 10),
   ``mrr`` (1/(rank+1), 0 for a miss: with ``top_k`` = 10 this is MRR@10,
   lower than the offline MRR over all candidates) and ``auc``
   ((n-1-rank)/(n-1) over lists of n > 1 items that contain the item; null
   unless the lists hold every candidate) are averaged over tested events;
   ``novel_*`` over tested events whose item the user never touched before
   (any earlier event of the user in the sorted log); ``coverage@10``
   = distinct items in all tested lists' top 10 / catalog (distinct items in
   the whole log). Whole-list metrics (:func:`udfs.ranking_metrics.list_quality`) over the
   same tested lists: ``precision@10``, ``recall@10`` and ``f1@10`` against the items of the
   user's later held-out events (what the shopper went on to touch), ``ild@10`` (share of
   item pairs in a list whose categories differ), ``novelty@10`` (mean self-information of
   the served items, from how many users touched each before the split).
4. Baselines get the same candidates: a pure-Python replay of the same sorted
   log through :class:`udfs.recommend.Recommender` (the job's own state update,
   candidate generation and, for ``model``, ranking) yields per held-out
   event the candidate list, which every rule of
   :data:`model_export.evaluate.BASELINES` re-ranks from the serving dense
   features (:func:`model_export.evaluate.rank_lists`), cut to ``top_k``. The replay's ``model``
   lists must equal the job's (``consistency`` in the result says how many do).

The set of tested (list, next event) pairs is the offline held-out set of
:mod:`model_export.dataset`; what differs is that the ``model`` lists here are
the ones the job actually emitted.

The job also scores each tested event itself, as it would online (:mod:`udfs.feedback`:
the shopper's last list kept in state); ``online`` in the result is HR@10 and NDCG@10
from those feedback records, which must equal the ``model`` figures computed here from
the lists (``tests/integration/test_feedback_job.py`` checks it).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.entry import Endpoint, run_job
from model_export.dataset import ExampleSet, snapshot
from model_export.evaluate import BASELINES, rank_lists
from model_export.online_baselines import online_lists
from model_export.onnx_io import onnx_session
from streamrec.lab.evaluation.paired import compare
from udfs.artifact import MODEL_FILE, TABLES_FILE, VOCAB_FILE, verify_manifest
from udfs.config import load_config
from udfs.errors import InputError
from udfs.events import Event, Id
from udfs.features import DENSE_FEATURES, UserRequest, build_batch
from udfs.feedback import OnlineFigures
from udfs.logs import write_events_msgpack
from udfs.ranking_metrics import K, list_metrics, list_quality
from udfs.records import FeedbackRecord, decode_feedback_record
from udfs.runtime import build_recommender, item_knowledge, state_settings
from udfs.state import UserState

log = logging.getLogger(__name__)

# (user_id, seq): one emitted list; seq counts a user's emitted lists from 1.
ListKey = tuple[Id, int]


@dataclass
class EmittedList:
    """One emitted (or replayed) list: the trigger event and the ranked items."""

    user_id: Id
    seq: int
    trigger: tuple[Id, str, int]  # item_id, behavior, ts
    items: list[Id]
    reasons: list[dict[str, Any]] = field(default_factory=list)
    """One per item from schema version 2; empty for version 1 lists and baselines."""


def sort_log(events: Iterable[Event]) -> list[Event]:
    """Stable sort by event time: the order the job reads the temporary replay file in."""
    return sorted(events, key=lambda e: e.ts)


def artifact_until_ms(artifact_dir: str | Path) -> int:
    return verify_manifest(artifact_dir).until_ms


def job_config(artifact_dir: str | Path, since_ms: int, *, provider: str = "cpu", top_k: int | None = K,
               max_per_category: int | None = None, online_items: bool = True) -> Any:
    """The job's config for a prequential run: the artifact's state limits and candidate
    count, lists of ``top_k`` (None: all candidates), the diversity cap ``max_per_category``
    (``ranking.max_per_category``, None: its default; the job and the replay both apply it), emission from
    ``since_ms``, no checkpoints. ``online_items`` is ``items.online``: off, the co-visitation rows stay
    the artifact's (what the offline evaluation of the training half scores).

    The environment and config files are ignored (``environ={}``) so a run is reproducible."""
    manifest = verify_manifest(artifact_dir)
    n_candidates = manifest.n_candidates
    state = state_settings(manifest.state_limits)
    overrides: dict[str, dict[str, Any]] = {
        "ranking": {"artifact_dir": str(Path(artifact_dir).resolve()), "provider": provider,
                    "n_candidates": n_candidates,
                    "top_k": n_candidates if top_k is None else min(int(top_k), n_candidates),
                    # The model is evaluated on the candidates it was trained on (the artifact's
                    # trending list); in-stream trending would make the protocols differ.
                    "trending_half_life_s": 0},
        "job": {"since_ms": int(since_ms), "checkpoint_interval_ms": 0, "parallelism": 1},
        "state": state,
        "items": {"online": bool(online_items)},
    }
    if max_per_category is not None:
        overrides["ranking"]["max_per_category"] = int(max_per_category)
    return load_config(overrides=overrides, environ={})


def run_job_lists(
    events: Sequence[Event], config: Any, workdir: str | Path
) -> tuple[dict[ListKey, EmittedList], dict[str, int], list[FeedbackRecord]]:
    """Write the (already sorted) log to a replay file, run the bounded job, read its lists and
    its feedback records.

    msgpack, not CSV: it keeps string ids and millisecond times as loaded, and the
    loader's stray-timestamp rule is not applied a second time."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    path = wd / "events_sorted.msgpack"
    out = wd / "recommendations.jsonl"
    write_events_msgpack(events, path)
    counts = run_job(config, Endpoint("file", path), Endpoint("file", out)) or {}
    return read_lists(out), counts, read_feedback(out.with_name(out.name + ".feedback.jsonl"))


def read_feedback(path: str | Path) -> list[FeedbackRecord]:
    """The bounded job's feedback records (JSON lines; none written when there are none)."""
    if not Path(path).exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [decode_feedback_record(json.loads(line)) for line in f if line.strip()]


def online_metrics(records: Iterable[FeedbackRecord], k: int = K) -> dict[str, float]:
    """HR@k and NDCG@k of the job's own feedback records, all versions and arms together."""
    figures = OnlineFigures(k)
    for fb in records:
        figures.add(fb)
    return {"events": figures.n, f"hr@{k}": figures.hr, f"ndcg@{k}": figures.ndcg}


def read_lists(path: str | Path) -> dict[ListKey, EmittedList]:
    """The job's output JSON lines, keyed by (user_id, seq); schema versions 1 and 2 (reasons if present)."""
    lists: dict[ListKey, EmittedList] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            t = r["trigger"]
            key = (r["user_id"], int(r["seq"]))
            if key in lists:
                raise ValueError(f"{path}: two lists for user {key[0]} seq {key[1]}")
            lists[key] = EmittedList(r["user_id"], int(r["seq"]), (t["item_id"], t["behavior"], int(t["ts"])),
                                     list(r["items"]), list(r.get("reasons") or []))
    return lists


def novelty(events: Sequence[Event]) -> dict[tuple[Id, Id, str, int], bool]:
    """Per (user, item, behavior, ts) of an event (first occurrence): was the item new to the user?"""
    touched: dict[Id, set[Id]] = defaultdict(set)
    out: dict[tuple[Id, Id, str, int], bool] = {}
    for e in events:
        key = (e.user_id, e.item_id, e.behavior, e.ts)
        seen = touched[e.user_id]
        if key not in out:
            out[key] = e.item_id not in seen
        seen.add(e.item_id)
    return out


@dataclass
class Pair:
    """One tested held-out event: the list emitted before it (by key) and its item."""

    list_key: ListKey
    target: Id
    novel: bool


def held_out_pairs(lists: Mapping[ListKey, EmittedList], novel: Mapping[tuple[Id, Id, str, int], bool]) -> list[Pair]:
    """Pair each user's list ``seq = i`` with the trigger of list ``i + 1`` (the next held-out event)."""
    by_user: dict[Id, list[EmittedList]] = defaultdict(list)
    for lst in lists.values():
        by_user[lst.user_id].append(lst)
    out: list[Pair] = []
    for user, ls in by_user.items():
        ls.sort(key=lambda x: x.seq)
        for prev, cur in zip(ls, ls[1:], strict=False):
            item, beh, ts = cur.trigger
            out.append(Pair((user, prev.seq), item, novel.get((user, item, beh, ts), False)))
    out.sort(key=lambda t: (str(t.list_key[0]), t.list_key[1]))
    return out


@dataclass
class Replay:
    """The pure-Python replay: per emitted list, the candidates and each ranker's list."""

    candidates: dict[ListKey, list[Id]]
    lists: dict[str, dict[ListKey, EmittedList]]
    seconds: float


def replay_lists(events: Sequence[Event], config: Any, *, baselines: Iterable[str] = tuple(BASELINES),
                 chunk: int = 2048, model_batch: int = 64,
                 scorers: Mapping[str, Any] | None = None, recommend: bool = True) -> Replay:
    """Replay the sorted log through the job's :class:`Recommender` (same config): state update and
    candidates one event at a time as the job does; ``model`` lists come from
    ``Recommender.recommend`` on ``model_batch`` requests per call (the job calls it with one;
    the scores of a row do not depend on the batch) and the baselines re-rank the same
    candidates by the rules of :mod:`model_export.evaluate`.

    ``scorers`` (name -> onnxruntime session of a model with this artifact's inputs, vocabulary
    and tables): each re-ranks the same candidates by its scores, highest first, ties in
    generation order (the recommender's order without its fallbacks), into ``lists[name]``.
    Scoring other models this way costs one model call per chunk, not a second replay.

    ``recommend=False`` skips ``Recommender.recommend`` (a second feature build and model pass
    over every request); ``lists["model"]`` is then empty and a caller uses a scorer's lists."""
    t0 = time.perf_counter()
    rec = build_recommender(config)
    knowledge, kept_rows = item_knowledge(config, rec.artifact), config.items.kept_rows
    top_k = int(config.ranking.top_k)
    since = int(config.job.since_ms)
    states: dict[Id, UserState] = {}
    requests: list[tuple[ListKey, UserRequest]] = []
    model: dict[ListKey, EmittedList] = {}
    candidates: dict[ListKey, list[Id]] = {}
    for e in events:
        state = states.get(e.user_id)
        if state is None:
            state = states[e.user_id] = UserState()
        row = knowledge.observe(e.user_id, e) if knowledge is not None else None
        if not rec.apply(state, e, row, kept_rows):
            continue
        if e.ts < since:
            continue
        req = rec.request(state, e)
        frozen = UserRequest(snapshot(state), req.candidates, e)
        state.emitted += 1  # what recommend() does to the live state; it will do it to the copy
        key = (e.user_id, state.emitted)
        candidates[key] = list(req.candidates.items)
        requests.append((key, frozen))
    lists: dict[str, dict[ListKey, EmittedList]] = {name: {} for name in baselines}
    art = rec.artifact
    for s in range(0, len(requests), chunk):
        part = requests[s : s + chunk]
        for m in range(0, len(part) if recommend else 0, model_batch):
            sub = part[m : m + model_batch]
            for (key, r), record in zip(sub, rec.recommend([r for _, r in sub]), strict=True):
                if (record["user_id"], int(record["seq"])) != key:
                    raise AssertionError(f"replay seq mismatch at {key}")
                t = r.trigger
                model[key] = EmittedList(t.user_id, key[1], (t.item_id, t.behavior, t.ts), list(record["items"]))
        batch = build_batch([r for _, r in part], art.vocab, art.tables, art.seq_len)
        lens = np.array([len(r.candidates.items) for _, r in part], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
        items = [i for _, r in part for i in r.candidates.items]
        n = len(part)
        es = ExampleSet(batch, np.zeros(len(items), dtype=np.float32), offsets, items,
                        np.zeros(n, dtype=bool), np.zeros(n, dtype=bool),
                        np.array([r.trigger.ts for _, r in part], dtype=np.int64))
        pos = np.arange(es.n_rows) - np.repeat(es.offsets[:-1], es.n_rows_per_request)
        dense = batch["dense"]
        keys = {name: BASELINES[name](dense, pos) for name in baselines}
        for name, session in (scorers or {}).items():
            keys[name] = [_score_rows(session, es, model_batch)]
        if DIRECT in keys:
            # The model's order with every item the shopper touched moved below every new one:
            # how many novel requests it would hit if all k slots went to new items.
            keys[NEW_ONLY] = [keys[DIRECT][0], (dense[:, IN_HISTORY] <= 0).astype(np.float64)]
        for name, key_arrays in keys.items():
            lists.setdefault(name, {})
            ranked = rank_lists(es, key_arrays)
            for (key, r), order in zip(part, ranked, strict=True):
                t = r.trigger
                lists[name][key] = EmittedList(t.user_id, key[1], (t.item_id, t.behavior, t.ts),
                                               [items[int(i)] for i in order[:top_k]])
    lists["model"] = model
    return Replay(candidates, lists, time.perf_counter() - t0)


def _score_rows(session: Any, es: ExampleSet, requests_per_call: int) -> np.ndarray:
    """Scores of every row of ``es``, ``requests_per_call`` requests per model call: one call
    over a whole chunk would hold [rows, seq_len, dim] tensors of gigabytes in the session's arena."""
    out = [session.run(["score"], es.batch(np.arange(s, min(s + requests_per_call, len(es))))[0])[0]
           for s in range(0, len(es), requests_per_call)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


DIRECT, OTHER = "model:direct", "model:other"
NEW_ONLY = "model:new-items-only"
IN_HISTORY = DENSE_FEATURES.index("in_history")
# What must be equal for two artifacts' models to be scored on one replay's candidates.
SHARED_FILES = (VOCAB_FILE, TABLES_FILE)
SHARED_FIELDS = ("seq_len", "dense_features")


def check_same_serving(a: str | Path, b: str | Path) -> None:
    """Raise ValueError unless artifacts ``a`` and ``b`` have the same vocabulary, tables,
    sequence length, features, candidate count and state limits (only their models differ)."""
    ma, mb = verify_manifest(a), verify_manifest(b)
    diffs = [f for f in SHARED_FILES if ma["files"].get(f) != mb["files"].get(f)]
    diffs += [f for f in SHARED_FIELDS if ma.get(f) != mb.get(f)]
    if ma.n_candidates != mb.n_candidates:
        diffs.append("n_candidates")
    if ma.state_limits != mb.state_limits:
        diffs.append("state limits")
    if diffs:
        raise InputError(f"artifacts {a} and {b} differ in {', '.join(diffs)}: score them on separate replays")


@dataclass
class ListContext:
    """What the whole-list metrics need besides the lists (:func:`udfs.ranking_metrics.list_quality`)."""

    catalog_size: int
    future: dict[ListKey, set[Id]]
    """Per list: the items of the user's later held-out events (the relevant set for precision/recall)."""
    category_of: dict[Id, Id]
    popularity: dict[Id, int]
    """Per item: distinct users who touched it before the split (novelty)."""
    n_users: int
    """Distinct users before the split."""


def future_items(lists: Mapping[ListKey, EmittedList]) -> dict[ListKey, set[Id]]:
    """Per list, the trigger items of the same user's later lists: what the shopper went on to touch."""
    by_user: dict[Id, list[EmittedList]] = defaultdict(list)
    for lst in lists.values():
        by_user[lst.user_id].append(lst)
    out: dict[ListKey, set[Id]] = {}
    for user, ls in by_user.items():
        ls.sort(key=lambda x: x.seq, reverse=True)
        later: set[Id] = set()
        for lst in ls:
            out[(user, lst.seq)] = set(later)
            later.add(lst.trigger[0])
    return out


def list_context(events: Sequence[Event], since_ms: int, lists: Mapping[ListKey, EmittedList]) -> ListContext:
    users_of: dict[Id, set[Id]] = defaultdict(set)
    for e in events:
        if e.ts < since_ms:
            users_of[e.item_id].add(e.user_id)
    return ListContext(
        catalog_size=len({e.item_id for e in events}),
        future=future_items(lists),
        category_of={e.item_id: e.category_id for e in events},
        popularity={i: len(u) for i, u in users_of.items()},
        n_users=len({e.user_id for e in events if e.ts < since_ms}),
    )


def online_rankers(events: Sequence[Event], model: Mapping[ListKey, EmittedList], top_k: int
                   ) -> dict[str, dict[ListKey, EmittedList]]:
    """The online baselines' lists at the model's moments: after each event the model listed."""
    at = {(lst.trigger[0], lst.trigger[1], lst.trigger[2], lst.user_id): lst.seq for lst in model.values()}
    made = online_lists(events, at, top_k)
    return {name: {key: EmittedList(key[0], key[1], model[key].trigger, items) for key, items in lists.items()}
            for name, lists in made.items()}


def _score(lists: Mapping[ListKey, EmittedList], tested: Sequence[Pair], ctx: ListContext,
           k: int) -> dict[str, float]:
    """Rank metrics of the true next item, then the whole-list ones, over the tested lists."""
    ranked = [lists[t.list_key].items if t.list_key in lists else [] for t in tested]
    m = list_metrics(ranked, [t.target for t in tested], [t.novel for t in tested], ctx.catalog_size, k)
    m.update(list_quality(ranked, [ctx.future.get(t.list_key, set()) for t in tested], ctx.category_of,
                          ctx.popularity, ctx.n_users, ctx.catalog_size, k))
    return m


def prequential(
    events: Iterable[Event],
    artifact_dir: str | Path,
    *,
    since_ms: int | None = None,
    provider: str = "cpu",
    workdir: str | Path | None = None,
    use_job: bool = True,
    k: int = K,
    top_k: int | None = K,
    others: Sequence[str | Path] = (),
    max_per_category: int | None = None,
    baselines: Iterable[str] = tuple(BASELINES),
    replay_model: str = "recommend",
    online: bool = False,
    online_items: bool = True,
) -> dict[str, Any]:
    """Run the protocol of the module doc; returns metrics per ranker (``model`` from the job
    when ``use_job``, else from the replay) plus candidate recall and a job/replay consistency check.
    ``max_per_category`` is the job's diversity cap (None: the config default; it re-ranks ``model``
    lists only).

    ``others``: more artifacts trained on the same part of the log (same vocabulary, tables and
    serving settings, e.g. other seeds), scored on this replay's candidates by their model
    alone (:func:`replay_lists` ``scorers``, no diversity cap); their metrics go to
    ``result["others"]``, and ``result["direct_consistency"]`` counts how many of this
    artifact's lists, scored the same way, equal the recommender's.

    ``replay_model="direct"``: the replay's ``model`` lists are this artifact's model alone
    re-ranking the candidates (as ``others`` are), not ``Recommender.recommend``; with the
    diversity cap off they are the job's lists, which ``consistency`` then checks. It saves a
    second feature build and model pass over every request.

    ``online``: also the baselines that learn online from the same stream and make their own
    lists (:mod:`model_export.online_baselines`), as ``online:*`` rankers, and in
    ``result["paired"]`` per online baseline the model's difference to it on the same tested
    events (the mean over this artifact and ``others``), with a shopper-bootstrap interval
    (:mod:`streamrec.lab.evaluation.paired`).

    ``online_items``: the job's item rows learn from the stream (``items.online``, the default); off,
    the candidates come from the artifact's frozen tables, as in the offline evaluation."""
    if replay_model not in ("recommend", "direct"):
        raise ValueError(f"replay_model must be 'recommend' or 'direct', not {replay_model!r}")
    evs = sort_log(events)
    since = artifact_until_ms(artifact_dir) if since_ms is None else int(since_ms)
    config = job_config(artifact_dir, since, provider=provider, top_k=top_k, max_per_category=max_per_category,
                        online_items=online_items)
    scorers = {DIRECT: onnx_session(Path(artifact_dir) / MODEL_FILE)}
    for i, other in enumerate(others):
        check_same_serving(artifact_dir, other)
        scorers[f"{OTHER}{i}"] = onnx_session(Path(other) / MODEL_FILE)
    full = config.ranking.top_k == config.ranking.n_candidates
    catalog = len({e.item_id for e in evs})
    novel = novelty(evs)
    result: dict[str, Any] = {"since_ms": since, "k": k, "catalog_size": catalog,
                              "held_out_events": sum(1 for e in evs if e.ts >= since)}
    names = list(baselines)
    job_lists: dict[ListKey, EmittedList] | None = None
    # The job first, then the replay, one after the other: with the replay in a thread beside
    # the job, PyFlink at times failed to load the project's Java classes while building the
    # job (``Could not found the Java class ...EventEnvelope``; tmall2014_brand, twice).
    if use_job:
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            job_lists, counts, feedback = run_job_lists(evs, config, tmp)
        result["seconds_job"] = round(time.perf_counter() - t0, 2)
        result["job_counts"] = counts
        result["online"] = online_metrics(feedback, k)
    replay = replay_lists(evs, config, baselines=names, scorers=scorers, recommend=replay_model == "recommend")
    if replay_model == "direct":
        replay.lists["model"] = replay.lists[DIRECT]
    tested = held_out_pairs(replay.lists["model"], novel)
    ctx = list_context(evs, since, replay.lists["model"])
    result["seconds_replay"] = round(replay.seconds, 2)
    if job_lists is not None:
        job_tested = held_out_pairs(job_lists, novel)
        if [(t.list_key, t.target, t.novel) for t in job_tested] != [(t.list_key, t.target, t.novel)
                                                                       for t in tested]:
            log.warning("the job's tested events differ from the replay's: scoring the job's")
        same = sum(1 for key, lst in job_lists.items()
                   if key in replay.lists["model"] and replay.lists["model"][key].items == lst.items)
        result["consistency"] = {
            "job_lists": len(job_lists), "replay_lists": len(replay.lists["model"]),
            "identical_lists": same,
            "identical_top10": sum(1 for key, lst in job_lists.items() if key in replay.lists["model"]
                                   and replay.lists["model"][key].items[:k] == lst.items[:k]),
        }
        tested_job = job_tested
    else:
        tested_job = tested
    n = len(tested)
    has = [t.target in set(replay.candidates.get(t.list_key, ())) for t in tested]
    nov = [t.novel for t in tested]
    result.update({
        "requests": n,
        "novel_requests": int(sum(nov)),
        "candidate_recall": float(np.mean(has)) if n else 0.0,
        "novel_candidate_recall": float(np.mean([h for h, v in zip(has, nov, strict=True) if v]))
        if any(nov) else 0.0,
        "model_source": "job" if use_job else "replay",
        "rankers": {},
    })
    for name in names:
        result["rankers"][name] = _score(replay.lists[name], tested, ctx, k)
    result["rankers"]["model"] = _score(job_lists if job_lists is not None else replay.lists["model"],
                                        tested_job, ctx, k)
    result["replay_model"] = _score(replay.lists["model"], tested, ctx, k)
    result["max_per_category"] = int(config.ranking.max_per_category)
    result["replay_model_source"] = replay_model
    if replay_model == "recommend":  # (with "direct" the job/replay consistency is this check)
        direct = replay.lists[DIRECT]
        result["direct_consistency"] = {
            "lists": len(direct),
            "identical": sum(1 for key, lst in direct.items() if replay.lists["model"][key].items == lst.items)}
    if NEW_ONLY in replay.lists:
        result["model_new_items_only"] = _score(replay.lists[NEW_ONLY], tested, ctx, k)
    result["others"] = {str(other): _score(replay.lists[f"{OTHER}{i}"], tested, ctx, k)
                        for i, other in enumerate(others)}
    if online:
        models = [job_lists if job_lists is not None else replay.lists["model"],
                  *(replay.lists[f"{OTHER}{i}"] for i in range(len(others)))]
        result["paired"] = {}
        for name, lists in online_rankers(evs, replay.lists["model"], int(config.ranking.top_k)).items():
            result["rankers"][name] = _score(lists, tested, ctx, k)
            result["paired"][name] = compare([{key: lst.items for key, lst in m.items()} for m in models],
                                             {key: lst.items for key, lst in lists.items()}, tested, k)
    result["top_k"] = int(config.ranking.top_k)
    if not full:  # AUC of a truncated list is not the AUC over the candidates
        for m in [*result["rankers"].values(), result["replay_model"]]:
            m["auc"] = float("nan")
    return result
