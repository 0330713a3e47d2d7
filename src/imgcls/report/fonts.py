"""Make matplotlib draw class names in any script: the bundled Droid Sans Fallback covers CJK."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

FALLBACK_FONT = Path(__file__).parent / "fonts" / "DroidSansFallbackFull.ttf"


@lru_cache(maxsize=1)
def font_families() -> list[str]:
    """Register the bundled font once; return a family list where DejaVu draws Latin and Droid the rest."""
    from matplotlib import font_manager

    families = ["DejaVu Sans"]
    if FALLBACK_FONT.is_file():
        font_manager.fontManager.addfont(str(FALLBACK_FONT))
        families.append(font_manager.FontProperties(fname=str(FALLBACK_FONT)).get_name())
    return families
