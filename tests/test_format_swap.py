"""tools.format_swap: the same test images in every format, through the trained networks."""

from __future__ import annotations

import json

from scripts.imageio import KINDS
from scripts.splits import ensure_split
from tools.format_swap import markdown, swap


def test_every_format_of_the_same_images_is_compared(tiny_dataset, models, tmp_path) -> None:
    ensure_split(tiny_dataset, tmp_path / "split.csv", fractions=(0.6, 0.2, 0.2))
    result = swap(tmp_path, tiny_dataset, models, "test")
    assert set(result["formats"]) == set(KINDS) and result["images"] > 0
    reference = result["formats"]["png16"]
    assert reference["n"] == result["images"] and reference["max_probability_change"] in (0.0, None)
    assert all(t["n"] == result["images"] for t in result["formats"].values())
    text = markdown(json.loads(json.dumps(result)))
    assert text.count("\n| ") == len(KINDS) + 1  # header and one row per format
