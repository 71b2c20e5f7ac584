"""Category and attribute ids by their names in lib/label_descriptions.py, and the hem height of each
length attribute."""
from __future__ import annotations

from ..label_descriptions import ATTRIBUTES, CATEGORIES

_ATTRIBUTE_IDS = {row[1]: row[0] for row in ATTRIBUTES}
# Category ids by their short name (the first word of the competition's name: "shirt", "headband", "sleeve", ...).
_CATEGORY = {row[1].split(",")[0]: row[0] for row in CATEGORIES}
_CATEGORY_NAME = {v: k for k, v in _CATEGORY.items()}


def attribute_id(name: str) -> int:
    """Attribute id for its exact name in ``lib.label_descriptions.ATTRIBUTES`` (KeyError naming it if unknown)."""
    try:
        return _ATTRIBUTE_IDS[name]
    except KeyError:
        raise KeyError(f"attribute {name!r} is not in lib.label_descriptions.ATTRIBUTES") from None


# Hem height (head units from the top of the head, sole at 8) for each length attribute.
_LENGTH_Y = {
    "above-the-hip (length)": 3.3, "hip (length)": 3.95, "micro (length)": 4.4, "mini (length)": 4.75,
    "above-the-knee (length)": 5.3, "knee (length)": 5.8, "below the knee (length)": 6.25, "midi": 6.7,
    "maxi (length)": 7.4, "floor (length)": 7.95,
}
_KNEE_OR_SHORTER = ("micro (length)", "mini (length)", "above-the-knee (length)", "knee (length)")
