"""Categories, attributes and the ClassId format of iMaterialist (Fashion) 2019.

``label_descriptions.json`` holds ``info``, 46 ``categories`` (ids 0-45) and
92 ``attributes`` (ids 0-91), each with ``id``, ``name``, ``supercategory``
and ``level``.

ClassId strings: ``"6"`` (category 6, no attributes) or ``"10_7_20_24"``
(category 10 with attributes 7, 20, 24). Model labels are ``category + 1``
(0 is background), so a 46-category model has 47 classes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

N_CATEGORIES = 46
N_ATTRIBUTES = 92

# Named groups of categories, used e.g. by --mask-categories.
CATEGORY_GROUPS = {
    "garments": tuple(range(0, 27)),  # whole garments and accessories (upperbody ... others)
    "parts": tuple(range(27, 46)),  # garment parts, closures, decorations
    "all": tuple(range(0, 46)),
}

# Categories whose ClassIds carry attributes in the competition data.
ATTRIBUTE_CATEGORIES = tuple(range(0, 13)) + (27, 28, 33)


@dataclass(frozen=True)
class LabelSet:
    """The parsed label file: ``categories[i]`` / ``attributes[j]`` are dicts with id/name/supercategory/level."""

    categories: tuple[dict, ...]
    attributes: tuple[dict, ...]
    info: dict = field(default_factory=dict)

    @property
    def num_categories(self) -> int:
        return len(self.categories)

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def num_classes(self) -> int:
        """Model classes: background + categories."""
        return len(self.categories) + 1

    @property
    def category_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def attribute_names(self) -> list[str]:
        return [a["name"] for a in self.attributes]

    def to_json(self) -> dict:
        return {"info": self.info, "categories": list(self.categories), "attributes": list(self.attributes)}


def load_labels(path: str | Path) -> LabelSet:
    """Load and check ``label_descriptions.json``; ids must be 0..N-1 in order."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key in ("categories", "attributes"):
        if key not in data or not isinstance(data[key], list):
            raise ValueError(f"{path}: missing list '{key}'")
        for i, item in enumerate(data[key]):
            if not isinstance(item, dict) or item.get("id") != i or "name" not in item:
                raise ValueError(f"{path}: {key}[{i}] must be an object with id={i} and a name, got {item!r:.100}")
    return LabelSet(tuple(data["categories"]), tuple(data["attributes"]), data.get("info", {}))


def competition_labels() -> LabelSet:
    """The 2019 competition's labels (46 categories, 92 attributes), embedded (:mod:`lib.label_descriptions`)."""
    from .label_descriptions import label_descriptions

    d = label_descriptions()
    return LabelSet(tuple(d["categories"]), tuple(d["attributes"]), d.get("info", {}))


def read_vocabulary(path: str | Path) -> tuple[dict[int, str], dict[int, str]]:
    """``({category id: name}, {attribute id: name})`` of any label file, ids as written (the 2020 edition's
    attribute ids are not 0..N-1, which :func:`load_labels` requires); ``ValueError`` naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        return ({int(c["id"]): str(c["name"]) for c in data["categories"]},
                {int(a["id"]): str(a["name"]) for a in data.get("attributes") or []})
    except FileNotFoundError:
        raise FileNotFoundError(f"label file not found: {path}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a label file with categories and attributes ({e})") from None


def map_vocabulary(label_file: str | Path, labels: LabelSet) -> tuple[dict[int, int], dict[int, str]]:
    """Another edition's label file (the 2020 one: sparse attribute ids) mapped onto ``labels`` by name:
    ``({its attribute id: our attribute id}, {its attribute id: name})``. Its categories must be ours (by id
    and name): a ``ValueError`` naming the file otherwise."""
    cats, attrs = read_vocabulary(label_file)
    ours = {n: i for i, n in enumerate(labels.category_names)}
    if any(ours.get(n) != i for i, n in cats.items()):
        raise ValueError(f"{label_file}: its categories are not the {labels.num_categories} of these labels "
                         f"(by id and name)")
    by_name = {n: i for i, n in enumerate(labels.attribute_names)}
    return {i: by_name[n] for i, n in attrs.items() if n in by_name}, attrs


def parse_class_id(
    class_id: str, num_categories: int = N_CATEGORIES, num_attributes: int = N_ATTRIBUTES
) -> tuple[int, tuple[int, ...]]:
    """``"10_7_20"`` -> ``(10, (7, 20))``. Raises ``ValueError`` on anything malformed or unknown."""
    if not isinstance(class_id, str):
        class_id = str(class_id)
    parts = class_id.strip().split("_")
    for p in parts:
        if not p.isdigit() or not p.isascii() or len(p) > 6:
            raise ValueError(f"ClassId {class_id[:40]!r}: {p[:20]!r} is not a non-negative integer id")
    cat = int(parts[0])
    if cat >= num_categories:
        raise ValueError(f"ClassId {class_id[:40]!r}: unknown category {cat} (ids are 0-{num_categories - 1})")
    attrs = tuple(int(p) for p in parts[1:])
    for a in attrs:
        if a >= num_attributes:
            raise ValueError(f"ClassId {class_id[:40]!r}: unknown attribute {a} (ids are 0-{num_attributes - 1})")
    if len(set(attrs)) != len(attrs):
        raise ValueError(f"ClassId {class_id[:40]!r}: repeated attribute id")
    return cat, attrs


def format_class_id(category: int, attributes=()) -> str:
    """``(10, (20, 7))`` -> ``"10_7_20"`` (attributes sorted)."""
    return "_".join(str(int(v)) for v in (int(category), *sorted(int(a) for a in attributes)))


def category_to_label(category: int) -> int:
    """Model label for a category id (0 is background)."""
    return int(category) + 1


def label_to_category(label: int) -> int:
    """Category id for a model label >= 1."""
    if label < 1:
        raise ValueError(f"label {label} is background, not a category")
    return int(label) - 1


def resolve_category_spec(spec: str | None, num_categories: int = N_CATEGORIES) -> tuple[int, ...]:
    """Parse a category set such as ``"garments"``, ``"parts"``, ``"0-26"``, ``"1,3,27-30"`` or ``"all"``.

    ``None`` / empty means all categories. Raises ``ValueError`` naming a bad token.
    """
    if spec is None or str(spec).strip() == "":
        return tuple(range(num_categories))
    out: set[int] = set()
    for tok in str(spec).split(","):
        tok = tok.strip()
        if tok in CATEGORY_GROUPS:
            out.update(c for c in CATEGORY_GROUPS[tok] if c < num_categories)
            continue
        try:
            if "-" in tok:
                a, b = (int(x) for x in tok.split("-", 1))
                ids = range(a, b + 1)
            else:
                ids = [int(tok)]
        except ValueError:
            raise ValueError(
                f"bad category spec {tok!r}: use ids, ranges like 0-26 or groups {sorted(CATEGORY_GROUPS)}"
            ) from None
        for c in ids:
            if not 0 <= c < num_categories:
                raise ValueError(f"category {c} in {spec!r} is out of range 0-{num_categories - 1}")
            out.add(c)
    return tuple(sorted(out))
