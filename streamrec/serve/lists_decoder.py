"""The lists follower's decoder: a typed fast path for the layout the job writes, the reference
decoder for everything else.

Checking each list in Python (``udfs.records.decode_output_record``) takes most of a view rebuild's
time. Here msgspec decodes and checks a record in one pass in C against :class:`_JobRecord`, a
narrower layout than the reference accepts (this writer's ``SCHEMA_VERSION``, ids as ints or strings,
reason and trigger values scalars). What that layout refuses is handed to the
reference decoder unchanged, so every record gets the reference's verdict and the same decoded
record: the fast path only ever accepts a subset of what the reference accepts, and
``tests/unit/test_lists_decoder.py`` checks both on good, odd and broken records.
"""

from __future__ import annotations

import msgspec

from udfs.records import MAX_OUTPUT_BYTES, SCHEMA_VERSION, OutputRecord, decode_output_record

_Id = int | str
# Reason and trigger values the job writes: codes, ids, timestamps, behaviours. No floats (a NaN must
# take the reference's check), no nesting (the reference bounds its depth).
_Scalar = None | bool | int | str


class _JobRecord(msgspec.Struct):
    """An output record as ``udfs.recommend.output_record`` writes it (extra fields are ignored, as the
    reference ignores them)."""

    schema_version: int
    user_id: _Id
    seq: int
    items: list[_Id]
    scores: list[float]
    reasons: list[dict[str, _Scalar]]
    trigger: dict[str, _Scalar] | None
    model_version: str
    provider: str
    fallback: str | None
    generated_at: int
    arm: str | None = None


_decoder = msgspec.msgpack.Decoder(_JobRecord)


def decode_list(raw: bytes | None) -> OutputRecord:
    """``udfs.records.decode_output_record``'s result for ``raw`` (or its :class:`OutputRecordError`),
    taking the fast path when the record has the job's layout."""
    if type(raw) is not bytes or len(raw) > MAX_OUTPUT_BYTES:
        return decode_output_record(raw)
    try:
        rec = _decoder.decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return decode_output_record(raw)
    reasons = rec.reasons
    if rec.schema_version != SCHEMA_VERSION or len(rec.scores) != len(rec.items) or len(reasons) != len(rec.items):
        return decode_output_record(raw)
    for reason in reasons:
        if "because" in reason and type(reason["because"]) not in (int, str):
            return decode_output_record(raw)
    return OutputRecord(SCHEMA_VERSION, rec.user_id, rec.seq, rec.items, rec.scores, reasons, rec.trigger or {},
                        rec.model_version, rec.provider, rec.fallback, rec.generated_at, rec.arm)
