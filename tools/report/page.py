"""HTML pieces of the report: the look (the viewer page's colours and system fonts), tables, embedded pictures.

Nothing here loads anything from elsewhere: pictures are embedded as ``data:`` URIs; links to the full-size files
beside the report are relative.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any

from .results import Figure

CSS = """
:root{--bg:#eef1f4;--card:#fff;--line:#d5dbe1;--text:#1d2733;--muted:#5f6b78;--accent:#1b5fad;
--fracture:#c62828;--suspicious:#e07b00;--normal:#2e7d32;--unknown:#546e7a}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--text);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
.bar{display:flex;align-items:center;justify-content:space-between;gap:16px;padding:10px 20px;
background:#1d2733;color:#fff}
.bar h1{margin:0;font-size:18px;font-weight:600}.bar .sub{color:#aeb9c5;margin-left:12px}
.ruo{border:1px solid #e0a030;color:#ffd28a;border-radius:4px;padding:2px 8px;font-weight:600;font-size:12px}
main{padding:14px 20px;max-width:1500px;margin:auto}
section{margin:0 0 22px}
h2{font-size:13px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted);margin:0 0 8px;font-weight:600}
h3{font-size:15px;margin:16px 0 6px}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:12px 14px}
.grid{display:grid;gap:12px}
.top{grid-template-columns:minmax(0,1.15fr) minmax(0,1fr);margin-bottom:12px}
p{margin:6px 0}.muted{color:var(--muted)}.small{font-size:12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 8px;border-bottom:1px solid #e8ecf0;text-align:left;vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:12px}
td.num,th.num{text-align:right;white-space:nowrap}
.ci{color:var(--muted);font-size:12px}
.card table{min-width:50%}.card table.summary-table{width:100%}
.summary-table{font-size:13px}.summary-table td{padding:2px 8px;vertical-align:baseline}
.summary-table tr.first td{border-top:2px solid var(--line)}
.summary-table td.stage{font-weight:600;width:120px}.summary-table td.means{font-size:12.5px;width:25%;
color:#2b3744;background:#f7f9fb}.summary-table td.thesis{font-size:12px;color:var(--muted)}
.summary-table .v{font-weight:600}
.caveat{border-left:4px solid #e0a030;background:#fff8ea;font-size:13px}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
figure{margin:0;background:var(--card);border:1px solid var(--line);border-radius:6px;padding:6px}
figcaption{font-size:12px;color:var(--muted);max-width:100%;padding:4px 2px 0}
figure img{display:block;max-width:100%;height:auto}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
.badge{display:inline-block;color:#fff;border-radius:3px;padding:0 6px;font-size:12px;font-weight:600;
background:var(--unknown)}
.badge.fracture{background:var(--fracture)}.badge.suspicious{background:var(--suspicious)}
.badge.no-fracture{background:var(--normal)}.badge.error{background:#37424d}
.badge.missed,.badge.false-alarm{background:#7b1fa2}
dl.kv{display:grid;grid-template-columns:repeat(3,minmax(0,1fr) minmax(0,auto));gap:2px 10px;margin:6px 0;
font-size:12.5px}dl.kv dt{color:var(--muted);overflow-wrap:anywhere}dl.kv dd{margin:0 18px 0 0;overflow-wrap:anywhere}
table.stages td:nth-child(n+5),table.stages th:nth-child(n+5){text-align:left}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
pre{background:#f6f8fa;border:1px solid var(--line);border-radius:4px;padding:8px;overflow:auto;font-size:12px;
max-height:480px}
code{background:#f0f2f5;border-radius:3px;padding:0 4px;font-size:12.5px}
"""

_ABS_PATH = re.compile(r"""(?<![\w.:/~])(?:sqlite:|file:)?/+(?:[^\s/"'<>]+/)+([^\s/"'<>,;)]*)""")


def scrub(text: str) -> str:
    """``text`` with every absolute path cut to its last part (``/home/x/models/c.pt`` -> ``.../c.pt``)."""
    return _ABS_PATH.sub(lambda m: ".../" + m.group(1), text)


def esc(value: Any) -> str:
    return html.escape(scrub(str(value)))


def fmt(value: float | None, kind: str) -> str:
    """A figure as shown: ``pct`` as a percentage with one decimal, else ``kind`` decimals; n/a when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    return f"{value:.{int(kind)}f}"


def fmt_ci(ci: tuple[float, float] | None, kind: str) -> str:
    if not ci:
        return ""
    scale = 100 if kind == "pct" else 1
    digits = 0 if kind == "pct" else int(kind)
    return f"[{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"


def with_ci(value: float | None, ci: tuple[float, float] | None, kind: str) -> str:
    """A value and, in grey, its interval."""
    return f"{fmt(value, kind)} <span class='ci'>{fmt_ci(ci, kind)}</span>" if ci else fmt(value, kind)


def _source_attrs(source: str, pointer: str, value: Any, kind: str) -> str:
    return (
        f' data-source="{html.escape(source)}" data-pointer="{html.escape(pointer)}"'
        f' data-value="{html.escape(json.dumps(value))}" data-kind="{kind}"'
    )


def value_cell(fig: Figure) -> str:
    """The figure; the cell names the JSON file and the pointer it was read from."""
    if not fig.source:  # not measured in this run (a figure of the seed table only)
        return '<td class="num ci">-</td>'
    attrs = _source_attrs(fig.source, fig.pointer, fig.value, fig.kind)
    return f'<td class="num"{attrs}><span class="v">{fmt(fig.value, fig.kind)}</span></td>'


def ci_cell(fig: Figure) -> str:
    """The figure's 95% interval (empty without one)."""
    return f'<td class="num ci">{fmt_ci(fig.ci, fig.kind)}</td>'


def seeds_cell(fig: Figure) -> str:
    """Mean [min, max] over seeds (empty when the seed table has no such figure)."""
    if not fig.seeds:
        return '<td class="num ci">-</td>'
    s = fig.seeds
    attrs = _source_attrs("seeds", fig.seeds_pointer + "/mean", s["mean"], fig.kind)
    return (
        f'<td class="num"{attrs}><span class="v">{fmt(s["mean"], fig.kind)}</span> '
        f'<span class="ci">{fmt_ci((s["min"], s["max"]), fig.kind)}</span></td>'
    )


def table(headers: list[str] | None, rows: list[list[str]], cls: str = "", numeric_from: int = 1) -> str:
    """An HTML table; ``rows`` hold cell HTML (a ``<td...>`` string is used as it is, anything else is wrapped)."""
    head = "".join(
        f'<th class="num">{h}</th>' if i >= numeric_from else f"<th>{h}</th>" for i, h in enumerate(headers or [])
    )
    body = ""
    for row in rows:
        cells = "".join(
            c if c.startswith("<td") else (f'<td class="num">{c}</td>' if i >= numeric_from else f"<td>{c}</td>")
            for i, c in enumerate(row)
        )
        body += f"<tr>{cells}</tr>"
    head = f"<thead><tr>{head}</tr></thead>" if headers else ""
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def key_values(rows: list[tuple[str, str]]) -> str:
    """A two-column table of already escaped labels and values."""
    return table(None, [[k, v] for k, v in rows])


def key_values_grid(rows: list[tuple[str, str]]) -> str:
    """Many short (label, value) pairs, already escaped, three pairs a line."""
    return "<dl class='kv'>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def png_width(png: bytes) -> int:
    """The width in pixels of PNG bytes (from its header)."""
    return int.from_bytes(png[16:20], "big")


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def picture(path: Path, max_side: int | None = None, jpeg_over: int = 400_000) -> str:
    """``path`` as a ``data:`` URI: as it is, or (over ``jpeg_over`` bytes or ``max_side``) a resized JPEG."""
    data = path.read_bytes()
    if max_side is None and len(data) <= jpeg_over:
        return data_uri(data, "image/png" if path.suffix.lower() == ".png" else "image/jpeg")
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if max_side:
            img.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def overlay_tile(path: Path, box: list[float] | None, side: int = 200, zoom: float = 2.2) -> str:
    """The whole overlay and, beside it, the overlay zoomed on the nasal bone box (``zoom`` times its size), as one
    JPEG ``data:`` URI; the whole overlay alone without a box."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        whole = img.copy()
        whole.thumbnail((side, side))
        tiles = [whole]
        if box:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            half = max(zoom * max(box[2] - box[0], box[3] - box[1]), min(img.size) / 4) / 2
            tiles.append(
                img.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half))).resize(
                    (whole.height, whole.height), Image.LANCZOS
                )
            )
    canvas = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), whole.height), (255, 255, 255))
    x = 0
    for tile in tiles:
        canvas.paste(tile, (x, 0))
        x += tile.width + 4
    buf = io.BytesIO()
    canvas.save(buf, "JPEG", quality=85)
    return data_uri(buf.getvalue(), "image/jpeg")


def figure(src: str, caption: str, link: str | None = None, width: int | None = None) -> str:
    """A captioned picture (``src``: a data URI), linked to the full-size file beside the report when given."""
    style = f' style="max-width:{width}px"' if width else ""
    img = f'<img src="{src}" alt="{html.escape(caption[:80])}">'
    if link:
        img = f'<a href="{html.escape(link)}">{img}</a>'
    return f"<figure{style}>{img}<figcaption>{caption}</figcaption></figure>"


def rel(path: Path, root: Path) -> str:
    """``path`` relative to the report's folder (for links)."""
    return os.path.relpath(path, root).replace(os.sep, "/")


def details(title: str, body: str, open_: bool = False) -> str:
    return f"<details{' open' if open_ else ''}><summary>{title}</summary>{body}</details>"


def flatten(d: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """``d`` as (dotted key, value) rows."""
    rows: list[tuple[str, Any]] = []
    for key, value in d.items():
        if isinstance(value, dict) and value:
            rows += flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def page(title: str, subtitle: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<header class='bar'><div><h1 style='display:inline'>{html.escape(title)}</h1>"
        f"<span class='sub'>{subtitle}</span></div>"
        "<span class='ruo'>Research use only &middot; phantom data, not patients</span></header>"
        f"<main>{body}</main></body></html>"
    )
