"""Why an item is in a list: one reason per listed item, from what the candidate
generator already knows (its source flags and, for co-visitation, the touched item
that contributed most), plus the reserved fresh-hit slots.

Reasons are derived, not scored: they explain where an item came from, never why
the model ordered it. docs/contracts.md ("Reasons") documents every code; a test keeps the
two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from udfs.candidates import SRC_CATEGORY, SRC_COVISIT, SRC_NEW, SRC_RECENT, SRC_TRENDING, Candidates
from udfs.events import Id

# Every code a reason can carry, with its evidence fields and meaning (the table in docs/contracts.md).
REASON_CODES: dict[str, str] = {
    "fresh_hit": "placed in a reserved fresh-hit slot: hot in the stream right now, too new for the model",
    "recent": "the shopper touched this item recently",
    "covisit": "shoppers who touched `because` (an item this shopper touched) also touched this one",
    "category": "popular in `category_id`, one of the shopper's top categories",
    "trending": "popular across the shop right now",
    "new_in_catalog": "a new catalog item with no behavior yet, like what the shopper touched (category, brand, "
                      "title words)",
}

# When a candidate came from several sources, the most personal one explains it.
_FLAG_ORDER = ((SRC_RECENT, "recent"), (SRC_COVISIT, "covisit"), (SRC_NEW, "new_in_catalog"),
               (SRC_CATEGORY, "category"), (SRC_TRENDING, "trending"))


def candidate_reason(cands: Candidates, i: int) -> dict[str, Any]:
    """The reason for candidate row ``i``: its most personal source, with that source's evidence."""
    flags = cands.sources[i]
    for flag, code in _FLAG_ORDER:
        if not flags & flag:
            continue
        if code == "covisit":
            because = (cands.because or {}).get(cands.items[i])
            if because is None:  # no positive contribution recorded: say the next source instead
                continue
            return {"code": code, "because": because}
        if code == "category":
            return {"code": code, "category_id": cands.categories[i]}
        return {"code": code}
    return {"code": "trending"}  # unreachable for generated candidates: every row has a source flag


def list_reasons(cands: Candidates, order: Iterable[int], fresh_slots: Collection[int] = ()) -> list[dict[str, Any]]:
    """One reason per listed row, in list order; ``fresh_slots`` are list positions filled by fresh hits."""
    return [{"code": "fresh_hit"} if pos in fresh_slots else candidate_reason(cands, int(i))
            for pos, i in enumerate(order)]


def render_reason(reason: dict[str, Any], item_name: Callable[[Id], str] = str,
                  category_name: Callable[[Id], str] = str) -> str:
    """A sentence for the page. ``item_name``/``category_name`` turn ids into what the shop shows.

    An unknown code (a later schema's) gives a neutral sentence, so an older page never breaks."""
    code = reason.get("code")
    if code == "covisit" and "because" in reason:
        return f"Because you viewed {item_name(reason['because'])}"
    if code == "recent":
        return "You viewed this recently"
    if code == "category" and "category_id" in reason:
        return f"Popular in {category_name(reason['category_id'])}, a category you like"
    if code == "trending":
        return "Trending now"
    if code == "fresh_hit":
        return "New and selling fast right now"
    if code == "new_in_catalog":
        return "New in the catalog"
    return "Recommended for you"
