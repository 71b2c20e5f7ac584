"""How hard the synthetic images are: :data:`PRESETS` and :func:`preset_settings`."""
from __future__ import annotations

# Preset name -> settings. categories: the categories that may appear (None = all 46); figures: people per
# image (None = 1-3, more in landscape images); plain_background: a pale studio gradient instead of clutter;
# closeups: allow close-ups that crop the front figure; force: least-seen categories forced per image.
PRESETS = {
    "realistic": {"categories": None, "figures": None, "plain_background": False, "closeups": True, "force": 3},
    "demo": {"categories": (1, 6, 8), "figures": 1, "plain_background": True, "closeups": False, "force": 1},
}


def preset_settings(preset: str) -> dict:
    """The settings of a preset name (a key of :data:`PRESETS`); ``ValueError`` for an unknown one."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[preset]
