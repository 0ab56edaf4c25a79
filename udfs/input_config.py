"""The ``[input]`` section: how the input topic's records read (docs/contracts.md "Input formats")."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from udfs.config_base import Section
from udfs.events import BEHAVIORS, behavior_pairs

# The canonical event's fields, each with the [input] key that names the shop's field for it.
INPUT_FIELD_KEYS = {"user_id": "user_field", "item_id": "item_field", "category_id": "category_field",
                    "behavior": "behavior_field", "ts": "ts_field"}


class InputConfig(Section):
    """How the input topic's records read (docs/contracts.md "Input formats"). A JSON record is
    translated into the canonical msgpack event once, in the job's Kafka source, so the key, the event
    time, the item steps and the decoder all read the same thing."""

    format: Literal["msgpack", "json"] = "msgpack"
    """msgpack: the canonical event map; json: one UTF-8 JSON object per record, read with the fields below."""
    user_field: str = Field("user_id", min_length=1, max_length=128)
    """The JSON field holding the shopper id (json only)."""
    item_field: str = Field("item_id", min_length=1, max_length=128)
    """The JSON field holding the item id (json only)."""
    category_field: str = Field("category_id", max_length=128)
    """The JSON field holding the category id; empty: the shop's events have none (category 0, as a log without
    one; json only)."""
    behavior_field: str = Field("behavior", max_length=128)
    """The JSON field holding the behavior; empty: the shop's events have none (every event a view, pv; json only)."""
    ts_field: str = Field("ts", min_length=1, max_length=128)
    """The JSON field holding the event time (json only)."""
    ts_unit: Literal["ms", "s", "iso8601"] = "ms"
    """The event time's form: ms or s since the epoch (a number, or a string holding one; s may have a fraction),
    or an ISO 8601 date-time string (UTC when it has no offset; json only)."""
    behaviors: str = ""
    """The shop's behavior names mapped to pv, cart, fav and buy: `view=pv,add_to_cart=cart` (ours always map
    to themselves; any other name is a dead letter; json only)."""

    def behavior_map(self) -> dict[str, str]:
        """``behaviors`` as a mapping, the shop's name to ours."""
        return dict(behavior_pairs(self.behaviors, "input.behaviors"))

    @model_validator(mode="after")
    def _mapping_checks(self) -> InputConfig:
        for name, ours in behavior_pairs(self.behaviors, "input.behaviors"):
            if not name or ours not in BEHAVIORS:
                raise ValueError(f"input.behaviors: expected NAME=OURS entries, OURS one of "
                                 f"{', '.join(BEHAVIORS)}; got {f'{name}={ours}'!r}")
        if self.format == "json":
            named = [getattr(self, key) for key in INPUT_FIELD_KEYS.values() if getattr(self, key)]
            repeated = sorted({n for n in named if named.count(n) > 1})
            if repeated:
                raise ValueError(f"input: the JSON field {repeated[0]!r} is named for two event fields")
            if "erase" in named:
                raise ValueError("input: 'erase' names an erase request's flag, not an event field")
            return self
        fields = type(self).model_fields
        changed = [key for key in (*INPUT_FIELD_KEYS.values(), "ts_unit", "behaviors")
                   if getattr(self, key) != fields[key].default]
        if changed:
            raise ValueError(f"input.{changed[0]} applies to input.format json only (the format is {self.format}: "
                             "msgpack events carry the canonical fields)")
        return self
