// The match-review page: one row per test query, showing the query photo and its five ranked candidates,
// so a person can move through the queries with the keyboard and confirm or reject the matches.
//
// What it reads:
// - the JSON in the script element #data (written by matching/review/page.py):
//     queries    one object per query, in submission order (see page_data in matching/review/report.py):
//                  n  image name             t  thumbnail index of the query photo (-1: none)
//                  y  truth label or null     b  best score          f  confidence (the sort key)
//                  r  rank of the truth: 1-5, 0 = not in the top 5, null = truth unknown
//                  c  five candidates, each [label, score, catalog photo, thumbnail index, mark, lines]
//                     (mark 1 = the truth, 0 = not the truth, null = unknown; lines = the local matcher's
//                     matches [qx, qy, gx, gy, ...] as fractions of the query's and the candidate's crop, or null)
//     thumbs     image sources (file paths or data: URLs), indexed by the thumbnail indices above
//     rowHeight  the height of one row in pixels (the same number is put into review.css for .row)
//     id         names this page's decisions in localStorage ("whale-review:<id>")
// - the filters in the header (#f-wrong, #f-new, #f-min, #f-max, #f-sort), mirrored in the URL hash
//   (wrong=1, new=1, min=, max=, sort=asc|desc, q=<current row>, lines=<rank whose match lines show>) so a view
//   can be bookmarked.
//
// Rows are absolutely positioned inside #list at (row number * rowHeight); only the rows in or near the
// viewport exist in the DOM, built as they scroll into view. Each row is div.row (.cur when current) with
// data-v (its position in the filtered list) and data-image; its tiles are div.tile.q (the query) and
// div.tile.cand (candidates, with data-label and the classes nw, ok, bad, pick).
//
// Keys: j/k or the down/up arrows move between queries; 1-5 confirm that candidate (or click its tile);
// x records "none"; s records "skip"; u clears the decision; m steps the match lines of the current row through
// its candidates and off (an svg.lines over the row: a line from each matched keypoint of the query to its partner
// in that candidate; pointing at another candidate's tile shows its lines instead). Decisions are kept in localStorage and #download saves them
// as decisions.csv ("Image,Decision" then one line per decided image). When the script has run to its end
// it sets data-ready="1" on the body.
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("data").textContent);
  const queries = data.queries;
  const thumbs = data.thumbs;
  const rowHeight = data.rowHeight;
  const storageKey = "whale-review:" + data.id;

  const list = byId("list");
  const count = byId("count");
  const controls = {
    wrong: byId("f-wrong"),
    newWhale: byId("f-new"),
    min: byId("f-min"),
    max: byId("f-max"),
    sort: byId("f-sort"),
  };

  // indices into `queries` of the queries that pass the filters, in display order
  let visible = [];
  // position in `visible` of the current row
  let current = 0;
  // position in `visible` -> the row element, for the rows now in the DOM
  const renderedRows = new Map();
  // the rank (0-4) of the candidate whose match lines the current row shows (key m), -1: none
  let lineRank = -1;
  // image name -> decision (a candidate's label, "none" or "skip")
  const decisions = JSON.parse(localStorage.getItem(storageKey) || "{}");

  // ---- small helpers ----

  function byId(id) {
    return document.getElementById(id);
  }

  function makeElement(tag, className, text) {
    const element = document.createElement(tag);
    if (className) {
      element.className = className;
    }
    if (text != null) {
      element.textContent = text;
    }
    return element;
  }

  function formatScore(score) {
    return score == null ? "\u2014" : score.toFixed(3);
  }

  function clampToVisible(position) {
    return Math.max(0, Math.min(position, visible.length - 1));
  }

  function currentQuery() {
    return queries[visible[current]];
  }

  // ---- the URL hash holds the filters and the current row ----

  // Sets the filter controls from the hash; returns the row number it names (0 when none).
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    controls.wrong.checked = params.get("wrong") === "1";
    controls.newWhale.checked = params.get("new") === "1";
    controls.min.value = params.get("min") || "";
    controls.max.value = params.get("max") || "";
    controls.sort.value = params.get("sort") || "";
    lineRank = (parseInt(params.get("lines") || "0", 10) || 0) - 1;
    return parseInt(params.get("q") || "0", 10) || 0;
  }

  function writeHash() {
    const params = new URLSearchParams();
    if (controls.wrong.checked) {
      params.set("wrong", "1");
    }
    if (controls.newWhale.checked) {
      params.set("new", "1");
    }
    if (controls.min.value !== "") {
      params.set("min", controls.min.value);
    }
    if (controls.max.value !== "") {
      params.set("max", controls.max.value);
    }
    if (controls.sort.value) {
      params.set("sort", controls.sort.value);
    }
    if (current) {
      params.set("q", String(current));
    }
    if (lineRank >= 0) {
      params.set("lines", String(lineRank + 1));
    }
    history.replaceState(null, "", "#" + params.toString());
  }

  // ---- filtering and sorting ----

  function passesFilters(query, lowestBest, highestBest) {
    const rankOneIsWrong = query.r != null && query.r !== 1;
    if (controls.wrong.checked && !rankOneIsWrong) {
      return false;
    }
    if (controls.newWhale.checked && query.c[0][0] !== "new_whale") {
      return false;
    }
    if (query.b < lowestBest || query.b > highestBest) {
      return false;
    }
    return true;
  }

  function sortVisible() {
    // ties keep submission order
    if (controls.sort.value === "asc") {
      visible.sort((a, b) => queries[a].f - queries[b].f || a - b);
    }
    if (controls.sort.value === "desc") {
      visible.sort((a, b) => queries[b].f - queries[a].f || a - b);
    }
  }

  function removeAllRows() {
    for (const row of renderedRows.values()) {
      row.remove();
    }
    renderedRows.clear();
  }

  // Rebuilds the filtered list from the controls and makes row `startRow` current.
  function applyFilters(startRow) {
    const lowestBest = controls.min.value === "" ? -Infinity : +controls.min.value;
    const highestBest = controls.max.value === "" ? Infinity : +controls.max.value;
    visible = [];
    for (let i = 0; i < queries.length; i++) {
      if (passesFilters(queries[i], lowestBest, highestBest)) {
        visible.push(i);
      }
    }
    sortVisible();
    count.textContent = visible.length + " of " + queries.length + " queries";
    removeAllRows();
    list.style.height = (visible.length * rowHeight) + "px";
    current = clampToVisible(startRow || 0);
    renderRowsInView();
  }

  // ---- building rows ----

  // One photo tile: the image (or a placeholder), then one caption line per entry of `lines`.
  function makeTile(className, thumbIndex, lines, title) {
    const tile = makeElement("div", "tile " + className);
    const imageBox = makeElement("div", "im");
    if (thumbIndex >= 0) {
      const image = makeElement("img");
      image.loading = "lazy";
      image.decoding = "async";
      image.src = thumbs[thumbIndex];
      image.alt = lines[0];
      imageBox.appendChild(image);
    } else {
      imageBox.textContent = className.indexOf("nw") >= 0 ? "new_whale" : "no photo";
    }
    tile.appendChild(imageBox);
    for (const line of lines) {
      tile.appendChild(makeElement("div", "cap", line));
    }
    tile.title = title;
    return tile;
  }

  function truthTagText(query) {
    if (query.r == null) {
      return "";
    }
    if (query.r === 1) {
      return "\u2713 correct";
    }
    if (query.r > 0) {
      return "truth at rank " + query.r;
    }
    return "\u2717 truth not in top 5";
  }

  function makeQueryTile(query, position, decision) {
    const lines = [
      (position + 1) + ". " + query.n,
      "best " + formatScore(query.b) + " \u00b7 conf " + formatScore(query.f),
      query.y == null ? "truth unknown" : "truth " + query.y,
    ];
    const tile = makeTile("q", query.t, lines, query.n);
    const statusLine = makeElement("div", "cap");
    const tag = truthTagText(query);
    if (tag) {
      statusLine.appendChild(makeElement("span", "tag " + (query.r === 1 ? "ok" : "bad"), tag + " "));
    }
    if (decision) {
      statusLine.appendChild(makeElement("span", "dec", "decision: " + decision));
    }
    tile.appendChild(statusLine);
    return tile;
  }

  // candidate = [label, score, catalog photo, thumbnail index, mark]
  function makeCandidateTile(candidate, rank, position, decision) {
    const label = candidate[0];
    const score = candidate[1];
    const photo = candidate[2];
    const thumbIndex = candidate[3];
    const mark = candidate[4];
    let className = "cand";
    if (label === "new_whale") {
      className += " nw";
    }
    if (mark === 1) {
      className += " ok";
    } else if (mark === 0) {
      className += " bad";
    }
    if (decision === label) {
      className += " pick";
    }
    const lines = [(rank + 1) + ". " + label, "score " + formatScore(score), photo || ""];
    const tile = makeTile(className, thumbIndex, lines, photo || label);
    tile.dataset.label = label;
    tile.onclick = function () {
      current = position;
      decide(label);
    };
    tile.onmouseenter = function () {
      if (lineRank >= 0 && position === current && rank !== lineRank && candidate[5]) {
        lineRank = rank;
        drawLines(tile.parentNode, queries[visible[position]]);
      }
    };
    return tile;
  }

  // The row at `position` in the filtered list.
  function makeRow(position) {
    const query = queries[visible[position]];
    const row = makeElement("div", "row" + (position === current ? " cur" : ""));
    row.style.top = (position * rowHeight) + "px";
    row.dataset.v = position;
    row.dataset.image = query.n;
    const decision = decisions[query.n];
    row.appendChild(makeQueryTile(query, position, decision));
    query.c.forEach(function (candidate, rank) {
      row.appendChild(makeCandidateTile(candidate, rank, position, decision));
    });
    if (lineRank >= 0 && position === current) {
      for (const image of row.querySelectorAll("img")) {
        image.loading = "eager";
        image.addEventListener("load", function () {
          drawLines(row, query);
        });
      }
      requestAnimationFrame(function () {
        drawLines(row, query);
      });
    }
    return row;
  }

  // ---- match lines ----

  // The next candidate after `rank` that has match lines, or -1 after the last one.
  function nextLineRank(query, rank) {
    if (!query) {
      return -1;
    }
    for (let r = rank + 1; r < query.c.length; r++) {
      if (query.c[r][5] && query.c[r][5].length) {
        return r;
      }
    }
    return -1;
  }

  const SVG = "http://www.w3.org/2000/svg";
  const LINE_COLOURS = ["#ffb000", "#00c0ff", "#ff4fd8", "#6cff4f", "#ff6a3d"];

  // Draws (again) the svg.lines of `row`: a line per match from the query's image to the image of the candidate at
  // `lineRank`, placed by the images' rectangles as displayed.
  function drawLines(row, query) {
    const old = row.querySelector("svg.lines");
    if (old) {
      old.remove();
    }
    const queryImage = row.querySelector(".tile.q img");
    if (lineRank < 0 || !queryImage || !queryImage.complete || !queryImage.naturalWidth) {
      return;
    }
    const base = row.getBoundingClientRect();
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "lines");
    svg.setAttribute("width", base.width);
    svg.setAttribute("height", base.height);
    const q = queryImage.getBoundingClientRect();
    const tiles = row.querySelectorAll(".tile.cand");
    query.c.forEach(function (candidate, rank) {
      const matches = candidate[5];
      const image = tiles[rank] && tiles[rank].querySelector("img");
      if (rank !== lineRank || !matches || !image || !image.complete || !image.naturalWidth) {
        return;
      }
      const g = image.getBoundingClientRect();
      for (let i = 0; i + 3 < matches.length; i += 4) {
        const line = document.createElementNS(SVG, "line");
        line.setAttribute("x1", q.left - base.left + matches[i] * q.width);
        line.setAttribute("y1", q.top - base.top + matches[i + 1] * q.height);
        line.setAttribute("x2", g.left - base.left + matches[i + 2] * g.width);
        line.setAttribute("y2", g.top - base.top + matches[i + 3] * g.height);
        line.setAttribute("stroke", LINE_COLOURS[rank % LINE_COLOURS.length]);
        line.dataset.rank = rank + 1;
        svg.appendChild(line);
      }
    });
    row.appendChild(svg);
  }

  // ---- keeping only the rows near the viewport in the DOM ----

  function renderRowsInView() {
    const listTop = list.getBoundingClientRect().top + scrollY;
    const margin = 4; // rows kept above and below the viewport
    const first = Math.max(0, Math.floor((scrollY - listTop) / rowHeight) - margin);
    const end = Math.min(visible.length, Math.ceil((scrollY + innerHeight - listTop) / rowHeight) + margin);
    for (const [position, row] of renderedRows) {
      if (position < first || position >= end) {
        row.remove();
        renderedRows.delete(position);
      }
    }
    for (let position = first; position < end; position++) {
      if (!renderedRows.has(position)) {
        const row = makeRow(position);
        renderedRows.set(position, row);
        list.appendChild(row);
      }
    }
  }

  // Rebuilds one row if it is in the DOM (after the current row or a decision changed).
  function redrawRow(position) {
    const oldRow = renderedRows.get(position);
    if (oldRow) {
      const newRow = makeRow(position);
      oldRow.replaceWith(newRow);
      renderedRows.set(position, newRow);
    }
  }

  // ---- moving and deciding ----

  // Scrolls so that the current row is visible below the sticky header.
  function scrollToCurrent() {
    const rowTop = list.getBoundingClientRect().top + scrollY + current * rowHeight;
    const headerHeight = document.querySelector("header").offsetHeight;
    if (rowTop < scrollY + headerHeight || rowTop + rowHeight > scrollY + innerHeight) {
      scrollTo(0, rowTop - headerHeight - rowHeight);
    }
  }

  function goTo(position) {
    if (!visible.length) {
      return;
    }
    const previous = current;
    current = clampToVisible(position);
    scrollToCurrent();
    renderRowsInView();
    redrawRow(previous);
    redrawRow(current);
    writeHash();
  }

  // Records `label` as the decision on the current query (null clears it).
  function decide(label) {
    const query = currentQuery();
    if (!query) {
      return;
    }
    if (label == null) {
      delete decisions[query.n];
    } else {
      decisions[query.n] = label;
    }
    localStorage.setItem(storageKey, JSON.stringify(decisions));
    redrawRow(current);
    goTo(current);
  }

  // ---- decisions.csv ----

  function decisionsCsv() {
    const lines = ["Image,Decision"];
    for (const image in decisions) {
      lines.push(JSON.stringify(image) + "," + decisions[image]);
    }
    return lines.join("\n") + "\n";
  }

  function downloadDecisions() {
    const link = makeElement("a");
    link.href = URL.createObjectURL(new Blob([decisionsCsv()], { type: "text/csv" }));
    link.download = "decisions.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  // ---- keyboard ----

  function onKeyDown(event) {
    const tag = event.target.tagName;
    if (tag === "INPUT" || tag === "SELECT" || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    const key = event.key;
    const query = currentQuery();
    let handled = true;
    if (key === "j" || key === "ArrowDown") {
      goTo(current + 1);
    } else if (key === "k" || key === "ArrowUp") {
      goTo(current - 1);
    } else if (key >= "1" && key <= "5" && query && query.c[+key - 1]) {
      decide(query.c[+key - 1][0]);
    } else if (key === "x") {
      decide("none");
    } else if (key === "s") {
      decide("skip");
    } else if (key === "m") {
      lineRank = nextLineRank(query, lineRank);
      redrawRow(current);
      writeHash();
    } else if (key === "u") {
      decide(null);
    } else {
      handled = false;
    }
    if (handled) {
      event.preventDefault();
    }
  }

  // ---- wiring ----

  byId("download").onclick = downloadDecisions;

  for (const name in controls) {
    controls[name].addEventListener("change", function () {
      applyFilters(0);
      writeHash();
    });
  }

  // render at most once per animation frame while scrolling
  let renderPending = false;
  addEventListener("scroll", function () {
    if (!renderPending) {
      renderPending = true;
      requestAnimationFrame(function () {
        renderPending = false;
        renderRowsInView();
      });
    }
  });
  addEventListener("resize", renderRowsInView);
  addEventListener("hashchange", function () {
    applyFilters(readHash());
  });
  addEventListener("keydown", onKeyDown);

  applyFilters(readHash());
  if (current) {
    goTo(current);
  }
  document.body.dataset.ready = "1";
})();
