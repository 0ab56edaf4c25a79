"""Scoring requests: what the batched ranking stage needs to finish a shopper's list.

With ``ranking.batching`` the job splits the per-event work in two. The stage keyed by
shopper updates state, generates candidates and builds the model inputs, and sends a
:class:`PreparedRequest` (as bytes, :func:`encode_request`) to a stage keyed by a shard
of the shopper, which buffers requests and ranks many shoppers' rows in one model call
(:meth:`udfs.recommend.Recommender.rank`). Everything a list depends on (candidates, the
trigger, ``seq``, the fresh hits, the features) is fixed in the request, so a list does
not depend on which other requests share its call.

No Flink here: the buffer and its timers are in ``jobs/functions.py``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgpack
import numpy as np

from udfs.candidates import Candidates
from udfs.events import Event, Id
from udfs.features import DENSE_FEATURES, UserRequest

# One user's model inputs as build_batch gives them, without ``cand_user`` (rebuilt when merged).
HIST_INPUTS: tuple[str, ...] = ("hist_item", "hist_cat", "hist_beh", "hist_gap")
ROW_INPUTS: tuple[str, ...] = ("cand_item", "cand_cat")
# Ids and buckets fit int32 (vocab indices, behaviors, gap buckets): half the bytes on the wire.
WIRE_INT = np.dtype("<i4")
WIRE_FLOAT = np.dtype("<f4")


@dataclass
class PreparedRequest:
    """One shopper's list, ready to rank: candidates, trigger, ``seq`` and model inputs."""

    seq: int
    trigger: Event
    candidates: Candidates
    fresh_hits: frozenset[Id]
    features: dict[str, np.ndarray] | None
    """One user's inputs (``hist_*`` ``[1, L]``, ``cand_item``/``cand_cat`` ``[n]``, ``dense``
    ``[n, D]``); None when there is no model or they could not be built (``error`` says why)."""
    error: str | None = None

    @classmethod
    def of(cls, req: UserRequest, seq: int, features: Mapping[str, np.ndarray] | None,
           error: str | None = None) -> PreparedRequest:
        inputs = None if features is None else {k: v for k, v in features.items() if k != "cand_user"}
        return cls(seq, req.trigger, req.candidates, req.fresh_hits, inputs, error)

    @property
    def rows(self) -> int:
        return len(self.candidates.items)


def merge_features(requests: Sequence[PreparedRequest]) -> dict[str, np.ndarray]:
    """Many users' inputs as one model batch: exactly what ``build_batch`` gives for them together.

    Raises when a request has no inputs (the call then falls back as on a model fault).
    """
    missing = next((r for r in requests if r.features is None), None)
    if missing is not None:
        raise ValueError(f"model inputs missing for a request: {missing.error or 'none built'}")
    feats = [r.features for r in requests if r.features is not None]
    if len(feats) == 1:  # the one-event path: no copies
        return {**feats[0], "cand_user": np.zeros(len(feats[0]["cand_item"]), dtype=np.int64)}
    out = {name: np.concatenate([f[name] for f in feats]) for name in (*HIST_INPUTS, *ROW_INPUTS, "dense")}
    out["cand_user"] = np.repeat(np.arange(len(feats), dtype=np.int64), [len(f["cand_item"]) for f in feats])
    return out


def _because(cands: Candidates) -> dict[Id, Id] | None:
    """Only the listed candidates' evidence travels (reasons need no more)."""
    if cands.because is None:
        return None
    return {i: cands.because[i] for i in cands.items if i in cands.because}


def encode_request(req: PreparedRequest) -> bytes:
    """msgpack; arrays as little-endian raw bytes (ints as int32)."""
    c, t, f = req.candidates, req.trigger, req.features
    arrays = None
    if f is not None:
        hist = np.stack([f[n][0] for n in HIST_INPUTS]).astype(WIRE_INT, copy=False)
        arrays = [hist.tobytes(), f["cand_item"].astype(WIRE_INT).tobytes(),
                  f["cand_cat"].astype(WIRE_INT).tobytes(), f["dense"].astype(WIRE_FLOAT, copy=False).tobytes()]
    return msgpack.packb(
        [req.seq, list(t), c.items, c.categories, c.sources, c.covisit, _because(c), list(req.fresh_hits),
         arrays, req.error],
        use_bin_type=True)


def decode_request(data: bytes) -> PreparedRequest:
    seq, trig, items, cats, sources, covisit, because, fresh, arrays, error = msgpack.unpackb(
        data, raw=False, strict_map_key=False, use_list=True)
    features = None
    if arrays is not None:
        hist = np.frombuffer(arrays[0], dtype=WIRE_INT).astype(np.int64).reshape(len(HIST_INPUTS), 1, -1)
        n = len(items)
        features = {name: hist[i] for i, name in enumerate(HIST_INPUTS)}
        features["cand_item"] = np.frombuffer(arrays[1], dtype=WIRE_INT).astype(np.int64)
        features["cand_cat"] = np.frombuffer(arrays[2], dtype=WIRE_INT).astype(np.int64)
        features["dense"] = np.frombuffer(arrays[3], dtype=WIRE_FLOAT).reshape(n, len(DENSE_FEATURES))
    cands = Candidates(items, cats, sources, covisit, None, because)
    return PreparedRequest(seq, Event(*trig), cands, frozenset(fresh), features, error)


def encode_erasure(key: str) -> bytes:
    """A shard buffer's entry for an erased shopper: their lists still buffered leave before the
    tombstone, in order (a one-entry map, where a request is an array)."""
    return msgpack.packb({"erase": key}, use_bin_type=True)


def erased_key(payload: bytes) -> str | None:
    """The shopper an :func:`encode_erasure` entry names; None for a scoring request."""
    if payload[:1] != b"\x81":
        return None
    key = msgpack.unpackb(payload, raw=False)["erase"]
    return str(key)


def shard_of(key: str, shards: int) -> int:
    """The batching shard of a shopper key: stable across processes and restarts (unlike ``hash``),
    so a shopper's requests always meet in the same buffer, in order."""
    return zlib.crc32(key.encode()) % shards

