// The explorer page's script (workflow/explorer.py inlines it): draws the records held in
// the page's JSON block. No library and no network: the page opens from disk.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("explorer-data").textContent);
  const T = D.tokens;
  const app = document.getElementById("app");
  const LENS = D.kind === "lens";
  // Experiment 005: per task a layers x concepts grid per lens; each cell the probabilities and
  // ranks of the concept's target, English and source words and the lens's top-1.
  const WORDS = D.kind === "words";
  const WORD = { top1: 0, top1_prob: 1, target_prob: 2, english_prob: 3, source_prob: 4, target_rank: 5, english_rank: 6, source_rank: 7 };
  const ROLES = ["target", "english", "source"];
  const BY_LENS = LENS || WORDS;
  // Experiment 004: per pair one grid per component, coloured by exact patching or by AtP.
  const COMPONENTS = D.kind === "components";
  const MEASURES = { exact: "exact patching", atp: "attribution patching (AtP)" };
  const CELL = { exact: 0, atp: 1, grad_drop: 2, dla_answer: 3, dla_competitor: 4, dla_corrupted_answer: 5 };
  const items = WORDS ? D.tasks : LENS ? D.probes : D.pairs;
  const state = { item: 0, view: BY_LENS ? D.lenses[0] : 0, layer: null, pos: null, pinned: false,
    measure: COMPONENTS && !D.exact_run ? "atp" : "exact" };

  // ---- small helpers -------------------------------------------------------------------
  function el(tag, attrs, children) {
    const node = tag.startsWith("svg:")
      ? document.createElementNS("http://www.w3.org/2000/svg", tag.slice(4))
      : document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }
  const VISIBLE = { " ": "\u2423", "\n": "\\n", "\t": "\\t", "\r": "\\r", "\ufffd": "<byte>" };
  // Whitespace and invisible characters (a no-break space, a zero-width joiner, a control
  // character) are written as their code point, as the heatmaps write them.
  function visibleChar(ch) {
    if (VISIBLE[ch]) return VISIBLE[ch];
    if (/[\p{C}\p{Z}]/u.test(ch)) {
      const cp = ch.codePointAt(0);
      return cp <= 0xffff ? "\\u" + cp.toString(16).padStart(4, "0") : "\\U" + cp.toString(16).padStart(8, "0");
    }
    return ch;
  }
  function visible(token) {
    const text = Array.from(token).map(visibleChar).join("");
    return text || "\u2205";
  }
  function short(token, max) {
    const chars = Array.from(visible(token));
    return chars.length <= max ? chars.join("") : chars.slice(0, max - 1).join("") + "\u2026";
  }
  function fmt(value, digits) {
    if (value === null || value === undefined) return "\u2013";
    return Number(value).toPrecision(digits || 4);
  }
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
    [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  function viridis(v) {
    const x = Math.min(1, Math.max(0, v === null ? 0 : v)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
    const f = x - i;
    const c = VIRIDIS[i].map((a, k) => Math.round(a + f * (VIRIDIS[i + 1][k] - a)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }
  function diverging(v) {
    // recovered fraction: 0 white, 1 (and above) red, negative blue
    const x = Math.min(1, Math.max(-1, v === null ? 0 : v));
    const to = x >= 0 ? [178, 24, 43] : [33, 102, 172];
    const a = Math.abs(x);
    const c = [255, 255, 255].map((w, k) => Math.round(w + a * (to[k] - w)));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  // ---- what is shown ---------------------------------------------------------------------
  function item() { return items[state.item]; }
  function sweep() { return BY_LENS ? item() : item().sweeps[state.view]; }
  function cell(layerIndex, posIndex, view) {
    const it = item();
    return BY_LENS ? it.cells[view || state.view][layerIndex][posIndex] : sweep().cells[layerIndex][posIndex];
  }
  function positionToken(posIndex) {
    return BY_LENS ? T[item().inputs[posIndex]] : T[sweep().tokens[posIndex]];
  }

  function controls() {
    const select = el("select", { id: "item", on: { change: (e) => { state.item = Number(e.target.value); state.layer = null; state.pinned = false; draw(); } } },
      items.map((it, i) => el("option", { value: String(i), text: it.id })));
    select.value = String(state.item);
    const parts = [el("label", { for: "item", text: WORDS ? "Task " : LENS ? "Probe " : "Pair " }), select];
    if (BY_LENS) {
      parts.push(el("span", { class: "lens-toggle", role: "group", "aria-label": "lens" },
        D.lenses.map((lens) => el("button", {
          type: "button", "data-lens": lens, class: lens === state.view ? "active" : null,
          "aria-pressed": lens === state.view ? "true" : "false", text: `${lens} lens`,
          on: { click: () => { state.view = lens; draw(); } },
        }))));
    } else {
      const sweeps = el("select", { id: "sweep", on: { change: (e) => { state.view = Number(e.target.value); draw(); } } },
        item().sweeps.map((s, i) => el("option", { value: String(i), text: sweepName(s) })));
      sweeps.value = String(state.view);
      parts.push(el("label", { for: "sweep", text: COMPONENTS ? " Component " : " Sweep " }), sweeps);
      if (COMPONENTS) {
        parts.push(el("span", { class: "lens-toggle", role: "group", "aria-label": "measure" },
          Object.entries(MEASURES).map(([key, name]) => el("button", {
            type: "button", "data-measure": key, class: key === state.measure ? "active" : null,
            "aria-pressed": key === state.measure ? "true" : "false", text: key === "exact" ? "exact" : "AtP", title: name,
            on: { click: () => { state.measure = key; draw(); } },
          }))));
      }
    }
    const shown = LENS && D.probes.length < D.probes_total ? ` (the first ${D.probes.length} of ${D.probes_total} probes)` : "";
    parts.push(el("span", { class: "hint", text: ` Hover a cell to read it, click to keep it; arrow keys move${shown}.` }));
    return el("div", { class: "controls" }, parts);
  }

  function sweepName(s) {
    if (!COMPONENTS) return `${s.direction} \u00b7 ${s.corruption}`;
    return s.component === "mlp" ? "MLP" : s.component.startsWith("head") ? `head ${s.component.slice(4)}` : s.component;
  }

  function caption() {
    const it = item();
    if (COMPONENTS) {
      const heads = D.heads_exposed ? "" : " (head outputs are not exposed for this model: attention and MLP only)";
      return el("p", { class: "prompt" }, [
        el("span", { text: "clean " }), el("code", { text: it.clean_prompt }), el("span", { text: ` \u2192 ${JSON.stringify(it.clean_answer)}; corrupted ` }),
        el("code", { text: it.corrupted_prompt }), el("span", { text: ` \u2192 ${JSON.stringify(it.corrupted_answer)}; cells: fraction of the logit difference recovered when the block's ${sweepName(sweep())} output at that position is patched from the clean run into the corrupted one, by ${MEASURES[state.measure]}${heads}` }),
      ]);
    }
    if (WORDS) {
      return el("p", { class: "prompt" }, [el("span", { text: `${it.description}; columns: concepts (their English word); cells: the ${state.view} lens's top-1 token, coloured by the target word's probability. The last prompt of the task: ` }), el("code", { text: it.prompt })]);
    }
    if (LENS) {
      const answers = new Set(it.answers);
      const answer = answers.size === 1 ? `answer ${JSON.stringify(T[it.answers[0]])}` : "answer: the next generated token at each position";
      return el("p", { class: "prompt" }, [el("code", { text: it.prompt }), el("span", { text: ` \u2014 ${answer}; cells: top-1 token, coloured by its probability (${state.view} lens)` })]);
    }
    return el("p", { class: "prompt" }, [
      el("span", { text: "clean " }), el("code", { text: it.clean_prompt }), el("span", { text: ` \u2192 ${JSON.stringify(it.clean_answer)}; corrupted ` }),
      el("code", { text: it.corrupted_prompt }), el("span", { text: ` \u2192 ${JSON.stringify(it.corrupted_answer)}; cells: fraction of the logit difference recovered (${sweep().direction}, ${sweep().corruption})` }),
    ]);
  }

  function grid() {
    const s = sweep();
    const columns = WORDS ? "concept" : "position";
    const head = el("tr", {}, [el("th", { class: "corner", title: D.unit_label, text: `${D.unit} \\ ${columns}` }),
      ...s.positions.map((p, j) => el("th", { title: `${columns} ${p}: ${JSON.stringify(positionToken(j))}`, text: short(positionToken(j), WORDS ? 6 : 12) }))]);
    const rows = [];
    for (let i = s.layers.length - 1; i >= 0; i--) {
      const tds = [el("th", { class: "layer", text: String(s.layers[i]) })];
      for (let j = 0; j < s.positions.length; j++) {
        const c = cell(i, j);
        let text, colour, dark;
        if (WORDS) {
          text = c[WORD.top1] === null ? "\u2013" : short(T[c[WORD.top1]], 5); colour = viridis(c[WORD.target_prob]);
          dark = c[WORD.target_prob] !== null && c[WORD.target_prob] > 0.55;
        } else if (LENS) {
          text = short(T[c[0]], 10); colour = viridis(c[1]); dark = c[1] !== null && c[1] > 0.55;
        } else {
          const v = COMPONENTS ? c[CELL[state.measure]] : c[0];
          text = v === null ? "\u2013" : v.toFixed(2); colour = diverging(v); dark = v === null || Math.abs(v) < 0.55;
        }
        const selected = i === state.layer && j === state.pos;
        tds.push(el("td", {
          class: "cell" + (selected ? (state.pinned ? " selected pinned" : " selected") : ""), "data-layer": String(s.layers[i]),
          "data-position": String(s.positions[j]), "data-i": String(i), "data-j": String(j),
          style: `background:${colour};color:${dark ? "#111" : "#fff"}`, text,
        }));
      }
      rows.push(el("tr", {}, tds));
    }
    // Experiment 005's tasks hold dozens of concepts: narrower columns, so a task fits the screen.
    const table = el("table", { id: "grid", class: WORDS ? "compact" : null }, [el("thead", {}, [head]), el("tbody", {}, rows)]);
    table.addEventListener("mouseover", (e) => {
      const td = e.target.closest("td.cell");
      if (!td || state.pinned) return;
      select(Number(td.dataset.i), Number(td.dataset.j), false);
    });
    table.addEventListener("click", (e) => {
      const td = e.target.closest("td.cell");
      if (!td) return;
      const i = Number(td.dataset.i), j = Number(td.dataset.j);
      const same = state.pinned && state.layer === i && state.pos === j;
      select(i, j, !same);
    });
    return el("div", { class: "grid-wrap" }, [table]);
  }

  function details() {
    const s = sweep();
    const i = state.layer, j = state.pos;
    const c = cell(i, j);
    const where = `${D.unit} ${s.layers[i]} \u00b7 position ${s.positions[j]} (${JSON.stringify(positionToken(j))})`;
    if (COMPONENTS) {
      const t = item().targets;
      const last = j === s.positions.length - 1;
      const dla = (key, name) => row(`${name} ${JSON.stringify(t[name.replace(" ", "_")].token)}`, fmt(c[CELL[key]], 6), c[CELL[key]], key);
      return el("div", { id: "details" }, [
        el("h2", { text: where }),
        el("p", { class: "lens-name", text: `${sweepName(s)} output of block ${s.layers[i]}` }),
        el("table", { class: "facts" }, [
          row("recovered, exact patching", fmt(c[0], 6), c[0], "exact"),
          row("recovered, AtP's estimate", fmt(c[1], 6), c[1], "atp"),
          row("GradDrop (magnitude)", fmt(c[2], 6), c[2], "grad_drop"),
          row("clean / corrupted logit difference", `${fmt(item().logit_diff_clean, 6)} / ${fmt(item().logit_diff_corrupted, 6)}`),
        ]),
        el("p", { class: "lens-name", text: last ? "direct logit attribution (written into the final logit)" : "direct logit attribution: at the last position only" }),
        el("table", { class: "facts" }, last ? [dla("dla_answer", "answer"), dla("dla_competitor", "competitor"), dla("dla_corrupted_answer", "corrupted answer")] : []),
      ]);
    }
    if (WORDS) {
      const words = item().words[j];
      return el("div", { id: "details" }, [
        el("h2", { text: `${D.unit} ${s.layers[i]} \u00b7 concept ${JSON.stringify(positionToken(j))}` }),
        el("p", { class: "lens-name", text: `${state.view} lens` }),
        el("table", { class: "facts" }, [
          row("top-1", c[WORD.top1] === null ? "\u2013" : JSON.stringify(T[c[WORD.top1]]), null, "top1_token"),
          row("top-1 probability", fmt(c[WORD.top1_prob]), c[WORD.top1_prob], "top1_prob"),
          ...ROLES.filter((role, k) => words[k] !== null).flatMap((role) => [
            row(`${role} word ${JSON.stringify(T[words[ROLES.indexOf(role)]])}: probability`, fmt(c[WORD[`${role}_prob`]]), c[WORD[`${role}_prob`]], `${role}_prob`),
            row(`${role} word: rank`, c[WORD[`${role}_rank`]] === null ? "\u2013" : String(c[WORD[`${role}_rank`]]), c[WORD[`${role}_rank`]], `${role}_rank`),
          ]),
        ]),
      ]);
    }
    if (!LENS) {
      return el("div", { id: "details" }, [
        el("h2", { text: where }),
        el("table", { class: "facts" }, [
          row("sweep", `${s.direction} \u00b7 ${s.corruption}`),
          row("token read", JSON.stringify(T[s.tokens[j]])),
          row("residual from", JSON.stringify(T[s.sources[j]])),
          row("recovered", fmt(c[0], 6), c[0], "recovered"),
          row("logit difference", fmt(c[1], 6), c[1], "logit_diff"),
          row("clean / corrupted", `${fmt(item().logit_diff_clean, 6)} / ${fmt(item().logit_diff_corrupted, 6)}`),
        ]),
      ]);
    }
    const answer = T[item().answers[j]];
    const topk = c[6].map((t, k) => el("tr", {}, [
      el("td", { class: "rank", text: String(k + 1) }),
      el("td", { class: "token", "data-token": T[t], title: JSON.stringify(T[t]) }, [el("code", { text: visible(T[t]) })]),
      el("td", { class: "prob", "data-value": String(c[7][k]), text: fmt(c[7][k]) }),
      el("td", { class: "bar" }, [el("span", { style: `width:${Math.round(100 * (c[7][k] || 0))}%` })]),
    ]));
    return el("div", { id: "details" }, [
      el("h2", { text: where }),
      el("p", { class: "lens-name", text: `${state.view} lens \u00b7 top-${c[6].length}` }),
      el("table", { id: "topk" }, [el("thead", {}, [el("tr", {}, [el("th", { text: "#" }), el("th", { text: "token" }), el("th", { text: "probability" }), el("th", {})])]), el("tbody", {}, topk)]),
      el("table", { class: "facts" }, [
        row("entropy (nats)", fmt(c[2]), c[2], "entropy"),
        row(`answer ${JSON.stringify(answer)}: probability`, fmt(c[3]), c[3], "answer_prob"),
        row(`answer ${JSON.stringify(answer)}: rank`, c[4] === null ? "\u2013" : String(c[4]), c[4], "answer_rank"),
        row("KL to the final layer (nats)", fmt(c[5]), c[5], "kl_to_final"),
      ]),
    ]);
  }
  function row(name, text, value, key) {
    return el("tr", {}, [el("th", { text: name }), el("td", { "data-key": key || null, "data-value": value === undefined || value === null ? null : String(value), text })]);
  }

  // ---- the chart: a value across layers at the chosen position ------------------------------
  function chart(title, series, options) {
    const W = 420, H = 190, L = 52, R = 10, TOP = 24, B = 34;
    const layers = sweep().layers;
    const x = (layer) => L + (layers.length > 1 ? (layer - layers[0]) / (layers[layers.length - 1] - layers[0]) : 0.5) * (W - L - R);
    const values = series.flatMap((s) => s.values).filter((v) => v !== null);
    let lo = options.min, hi = options.max;
    if (options.log) { lo = 0; hi = Math.max(1, Math.log10(Math.max(1, ...values))); }
    else { lo = Math.min(lo, ...values); hi = Math.max(hi, ...values); }
    const y = (v) => {
      const t = options.log ? Math.log10(Math.max(1, v)) : v;
      const f = hi > lo ? (t - lo) / (hi - lo) : 0.5;
      return options.log ? TOP + f * (H - TOP - B) : H - B - f * (H - TOP - B);
    };
    const svg = el("svg:svg", { width: String(W), height: String(H), viewBox: `0 0 ${W} ${H}`, class: "chart", "data-chart": options.id });
    // With options.legend, the series' names follow the title in their colours.
    svg.appendChild(el("svg:text", { x: String(L), y: "14", class: "chart-title" }, [document.createTextNode(title),
      ...(options.legend ? series.flatMap((s) => [document.createTextNode("  "), el("svg:tspan", { class: `key ${s.cls}`, text: `\u25a0 ${s.name}` })]) : [])]));
    const ticks = options.log ? Array.from({ length: Math.floor(hi) + 1 }, (_, k) => Math.pow(10, k)) : [lo, (lo + hi) / 2, hi];
    for (const t of ticks) {
      svg.appendChild(el("svg:line", { x1: String(L), x2: String(W - R), y1: String(y(t)), y2: String(y(t)), class: "gridline" }));
      svg.appendChild(el("svg:text", { x: String(L - 4), y: String(y(t) + 3), class: "tick", "text-anchor": "end", text: options.log ? (t >= 1000 ? `1e${Math.round(Math.log10(t))}` : String(t)) : Number(t.toFixed(2)).toString() }));
    }
    const step = Math.max(1, Math.ceil(layers.length / 10));
    layers.forEach((layer, k) => {
      if (k % step === 0 || k === layers.length - 1) svg.appendChild(el("svg:text", { x: String(x(layer)), y: String(H - B + 14), class: "tick", "text-anchor": "middle", text: String(layer) }));
    });
    svg.appendChild(el("svg:text", { x: String((L + W - R) / 2), y: String(H - 4), class: "tick", "text-anchor": "middle", text: D.unit_label }));
    svg.appendChild(el("svg:line", { x1: String(x(layers[state.layer])), x2: String(x(layers[state.layer])), y1: String(TOP), y2: String(H - B), class: "marker" }));
    for (const s of series) {
      const points = s.values.map((v, k) => [k, v]).filter(([, v]) => v !== null);
      svg.appendChild(el("svg:polyline", { points: points.map(([k, v]) => `${x(layers[k]).toFixed(1)},${y(v).toFixed(1)}`).join(" "), class: `series ${s.cls}${s.current ? " current" : ""}` }));
      for (const [k, v] of points) {
        const dot = el("svg:circle", {
          cx: x(layers[k]).toFixed(1), cy: y(v).toFixed(1), r: s.current ? "3" : "2", class: `point ${s.cls}`,
          "data-series": s.name, "data-layer": String(layers[k]), "data-value": String(v),
        }, [el("svg:title", { text: `${s.name}, ${D.unit} ${layers[k]}: ${options.log ? v : fmt(v)}` })]);
        dot.addEventListener("click", () => select(k, state.pos, true));
        svg.appendChild(dot);
      }
    }
    return svg;
  }

  function charts() {
    const s = sweep();
    const j = state.pos;
    const column = (view, k) => s.layers.map((_, i) => cell(i, j, view)[k]);
    if (COMPONENTS) {
      const t = item().targets;
      const last = s.positions.length - 1;
      const across = (k, at) => s.layers.map((_, i) => cell(i, at, null)[k]);
      const byLayer = (values) => s.layers.map((layer) => (values[layer] === undefined ? null : values[layer]));
      return el("div", { id: "charts" }, [
        chart(`${sweepName(s)}, position ${s.positions[j]}: recovered`,
          [{ name: "exact", cls: "s0", current: state.measure === "exact", values: across(0, j) },
           { name: "AtP", cls: "s1", current: state.measure === "atp", values: across(1, j) }], { id: "recovered", min: 0, max: 1, legend: true }),
        chart(`${sweepName(s)}: DLA at the last position`,
          [{ name: visible(t.answer.token), cls: "s0", current: true, values: across(3, last) },
           { name: visible(t.competitor.token), cls: "s1", current: false, values: across(4, last) }], { id: "dla", min: 0, max: 0, legend: true }),
        chart(`lens, last position: P(${visible(t.answer.token)})`,
          [{ name: "after attention", cls: "s0", current: false, values: byLayer(t.answer.mid_prob) },
           { name: "after MLP", cls: "s1", current: true, values: byLayer(t.answer.post_prob) }], { id: "lens", min: 0, max: 1, legend: true }),
      ]);
    }
    if (WORDS) {
      const words = item().words[j];
      const roles = ROLES.filter((role, k) => words[k] !== null);
      const series = (suffix) => roles.map((role, n) => ({ name: `${role} ${visible(T[words[ROLES.indexOf(role)]])}`, cls: `s${n}`, current: role === "target", values: column(null, WORD[`${role}_${suffix}`]) }));
      return el("div", { id: "charts" }, [
        chart(`${state.view} lens, concept ${JSON.stringify(positionToken(j))}: probability`, series("prob"), { id: "word_prob", min: 0, max: 1, legend: true }),
        chart("rank by layer (1 at the top)", series("rank"), { id: "word_rank", log: true, legend: true }),
      ]);
    }
    if (!LENS) {
      return el("div", { id: "charts" }, [chart(`recovered fraction at position ${s.positions[j]} (${JSON.stringify(positionToken(j))})`,
        [{ name: `${s.direction} \u00b7 ${s.corruption}`, cls: "s0", current: true, values: column(null, 0) }], { id: "recovered", min: 0, max: 1 })]);
    }
    const answer = JSON.stringify(T[item().answers[j]]);
    const series = (k) => D.lenses.map((lens, n) => ({ name: `${lens} lens`, cls: `s${n}`, current: lens === state.view, values: column(lens, k) }));
    const legend = el("div", { class: "legend" }, D.lenses.map((lens, n) => el("span", { class: `key s${n}`, text: `${lens} lens` })));
    return el("div", { id: "charts" }, [
      chart(`${answer}: probability by layer, position ${s.positions[j]}`, series(3), { id: "answer_prob", min: 0, max: 1 }),
      chart(`${answer}: rank by layer (1 at the top)`, series(4), { id: "answer_rank", log: true }),
      legend,
    ]);
  }

  // ---- drawing and selection ---------------------------------------------------------------
  function select(i, j, pinned) {
    state.layer = i; state.pos = j; state.pinned = pinned;
    for (const td of document.querySelectorAll("#grid td.selected")) td.classList.remove("selected", "pinned");
    const td = document.querySelector(`#grid td[data-i="${i}"][data-j="${j}"]`);
    if (td) { td.classList.add("selected"); if (pinned) td.classList.add("pinned"); }
    document.getElementById("details").replaceWith(details());
    document.getElementById("charts").replaceWith(charts());
  }

  function draw() {
    const s = sweep();
    if (state.layer === null || state.layer >= s.layers.length || state.pos >= s.positions.length) {
      state.layer = s.layers.length - 1; state.pos = s.positions.length - 1;
    }
    const skipped = !BY_LENS && (D.skipped || []).length
      ? el("p", { class: "hint", text: `Not patched: ${D.skipped.map((p) => `${p.id} (${p.reason})`).join("; ")}` }) : null;
    // Which numbering the rows use: 001-003 count layers, 004 blocks (docs/data-contract.md).
    const rows = el("p", { class: "hint", id: "unit", text: `Rows: ${D.unit_label}.` });
    app.replaceChildren(controls(), caption(), rows, el("div", { class: "main" }, [grid(), details()]), charts(), skipped || el("span"));
  }

  document.addEventListener("keydown", (e) => {
    const moves = { ArrowUp: [1, 0], ArrowDown: [-1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1] };
    if (!moves[e.key] || e.target.tagName === "SELECT") return;
    const s = sweep();
    const i = Math.min(s.layers.length - 1, Math.max(0, state.layer + moves[e.key][0]));
    const j = Math.min(s.positions.length - 1, Math.max(0, state.pos + moves[e.key][1]));
    e.preventDefault();
    select(i, j, true);
  });

  if (!items.length) {
    app.replaceChildren(el("p", { text: "No records to show." }));
  } else {
    draw();
  }
})();
