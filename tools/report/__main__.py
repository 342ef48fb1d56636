"""``python -m tools.report OUT --inference_dir DIR``: see the package docstring."""

from . import main

main()
