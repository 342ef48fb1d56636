"""Procedural phantom of lateral (profile, facing right) head X-rays with and without nasal bone fractures.

Command line: write a dataset (images, masks, ``dataset.csv``, ``preview.png``) and report the speed.

Run: ``PYTHONPATH=bundle python -m tools.phantom --out data/phantom --n 1000`` (``--site b``: the second site).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .dataset import write_dataset
from .site import SITES


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, write the dataset and print its csv path, counts and speed."""
    p = argparse.ArgumentParser(prog="python -m tools.phantom", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--n", type=int, default=1000, help="number of images (2 per patient)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fracture_rate", type=float, default=0.4)
    p.add_argument("--size", type=int, default=512)
    p.add_argument(
        "--site",
        choices=SITES,
        default="a",
        help="device profile: a (default) or b, a second hospital's room (tools/phantom/site.py)",
    )
    args = p.parse_args(argv)
    stats: dict = {}
    t0 = time.perf_counter()
    csv_path = write_dataset(args.out, args.n, args.fracture_rate, args.seed, args.size, stats=stats, site=args.site)
    total = time.perf_counter() - t0
    n = max(stats["images"], 1)
    print(csv_path)
    print(f"images={stats['images']} patients={stats['patients']} fractures={stats['fractures']}")
    print(
        f"render {n / max(stats['render_s'], 1e-9):.1f} images/s; with file writing "
        f"{n / max(stats['render_s'] + stats['write_s'], 1e-9):.1f} images/s; total {total:.1f} s"
    )


if __name__ == "__main__":
    main()
