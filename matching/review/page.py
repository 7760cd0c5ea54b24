"""The review page itself: one static HTML file, its data as JSON in the page, rows rendered as they scroll in.

Only the rows in (or near) the viewport exist in the DOM (fixed row height, absolutely positioned), so ten
thousand queries cost one JSON parse and a few dozen rows; an image is fetched and decoded only when its row
is created. No network, no external script.

The page's script and style are static/review.{js,css}, put inline.

The filter state lives in the URL hash, so a view can be bookmarked or opened directly:
``#wrong=1`` (rank 1 wrong), ``new=1`` (``new_whale`` at rank 1), ``min=0.2&max=0.8`` (best score range),
``sort=asc|desc`` (by confidence; default: file order), ``q=12`` (the current query), ``lines=1`` (the match lines
of that candidate on the current row).
Keys: ``j``/``k`` or arrows move between queries, ``1``-``5`` confirm that candidate, ``x`` none of them,
``s`` skip, ``u`` clears the decision, ``m`` steps the local matcher's match lines of the current row through its
candidates; decisions stay in the browser (localStorage) and download as CSV (for scripts/apply_decisions.py).
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

STATIC = Path(__file__).with_name("static")


def _json_for_script(value) -> str:
    """JSON safe inside ``<script>``: every ``<`` escaped, so ``</script>`` or ``<!--`` in a name cannot end it."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _figure(title: str, png: bytes) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>'


def render_page(*, title: str, queries: Sequence[dict], thumbs: Sequence[str], summary: Sequence[str],
                curves: Mapping[str, bytes], histogram: bytes | None, notes: Sequence[str], page_id: str,
                row_height: int = 168) -> str:
    """The whole page as a string."""
    data = {"queries": list(queries), "thumbs": list(thumbs), "rowHeight": row_height, "id": page_id}
    curve_html = "".join(_figure(f"training curves of {m}", png) for m, png in curves.items()) \
        or "<p>No training metrics (runs/&lt;model&gt;/fold&lt;k&gt;/&lt;size&gt;px/metrics.csv) found.</p>"
    hist_html = _figure("score distribution", histogram) if histogram else \
        "<p>No labelled score matrix: no out-of-fold matrices and no truth.csv.</p>"
    css = (STATIC / "review.css").read_text(encoding="utf-8").replace("ROWPX", str(row_height))
    js = (STATIC / "review.js").read_text(encoding="utf-8")
    summary_html = " &middot; ".join(html.escape(s) for s in summary)
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>{css}</style></head>
<body><header><h1>{html.escape(title)}</h1><span id="count"></span> &middot; {summary_html}<br>
<label><input type="checkbox" id="f-wrong"> only wrong (rank 1 is not the truth)</label>
<label><input type="checkbox" id="f-new"> only new_whale at rank 1</label>
<label>best score from <input type="number" id="f-min" min="0" max="1" step="0.05"> to
<input type="number" id="f-max" min="0" max="1" step="0.05"></label>
<label>sort <select id="f-sort"><option value="">submission order</option>
<option value="asc">confidence, least sure first</option><option value="desc">confidence, surest first</option>
</select></label> <button id="download">download decisions.csv</button>
<div class="help">j/k or &darr;/&uarr;: next/previous query &middot; 1-5 or click: confirm that candidate &middot;
x: none of them (a new Id) &middot; s: skip &middot; u: clear &middot; m: match lines, candidate by candidate &middot;
tiles: green = the truth, red = not the truth &middot;
score = best photo of that whale; conf = score of rank 1 (new_whale: 1 &minus; best)</div></header>
<main><details><summary>Training curves</summary>{curve_html}</details>
<details><summary>Score distribution: matches and non-matches</summary>{hist_html}</details>
{f"<ul>{notes_html}</ul>" if notes else ""}
<div id="list"></div></main>
<script type="application/json" id="data">{_json_for_script(data)}</script>
<script>{js}</script></body></html>
"""
