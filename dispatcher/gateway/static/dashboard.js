// The dispatcher dashboard: polls /dashboard/data and draws it. No framework, no build
// step: plain DOM and SVG. Every figure carries data-field (its stats() key) and
// data-value (the raw number), so a test, or a script, reads what is drawn.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const state = {points: {}, since: 0, interval: 2, window: 900, timer: null, last: null};

  // The same writing of figures as `dispatcher top` (dispatcher/ops/views.py): fixed()
  // rounds halves up as views.fixed() does, so both write a figure alike.
  function fixed(v, digits) {
    const m = 10 ** digits;
    return (Math.floor(v * m + 0.5) / m).toFixed(digits);
  }
  function seconds(v) {
    if (v === null || v === undefined) return "-";
    if (v < 1) return `${fixed(v * 1000, 0)}ms`;
    if (v < 60) return `${fixed(v, 1)}s`;
    if (v < 3600) return `${Math.floor(v / 60)}m${String(Math.floor(v % 60)).padStart(2, "0")}s`;
    return `${Math.floor(v / 3600)}h${String(Math.floor((v % 3600) / 60)).padStart(2, "0")}m`;
  }
  function rate(v) {
    if (v === null || v === undefined) return "-";
    return v >= 100 ? fixed(v, 0) : fixed(v, 1);
  }
  function clock(t) {
    return t ? new Date(t * 1000).toLocaleTimeString([], {hour12: false}) : "-";
  }
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined) node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }
  function s(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    return node;
  }

  // Figures of a card: [stats field, label, how it is written, class].
  const MAIN = [
    ["queued", "queued", String], ["waiting", "waiting", String],
    ["running", "running", String], ["succeeded", "succeeded", String, "ok"],
    ["failed", "failed", String, "bad"], ["expired", "expired", String, "bad"],
    ["cancelled", "cancelled", String], ["oldest_wait_s", "oldest wait", seconds],
  ];
  const MORE = [
    ["route_429s", "429s", String, "bad"], ["route_deferred", "deferred", String],
    ["wait_p50_s", "wait p50", seconds], ["wait_p95_s", "wait p95", seconds],
    ["run_p50_s", "run p50", seconds], ["run_p95_s", "run p95", seconds],
  ];

  function figure([field, label, , cls], small) {
    return h("div", {class: `fig ${small ? "small" : ""} ${cls || ""}`, "data-field": field},
      h("span", {class: "label"}, label), h("span", {class: "value"}, "-"));
  }

  function card(ep) {
    const title = h("h2", {}, ep);
    const route = h("div", {class: "fig route", "data-field": "route_calls_per_s"},
      h("span", {class: "label"}, "route calls/s"),
      h("span", {class: "value"}, "-"),
      h("span", {class: "budget", "data-field": "route_rate"}, ""),
      h("span", {class: "meter"}, h("span", {class: "fill"})));
    const legend = h("div", {class: "legend"},
      h("span", {class: "key pending"}, "pending (queued + waiting)"),
      h("span", {class: "key done"}, "finished/s"),
      h("span", {class: "key failed"}, "failed/s"));
    const chart = s("svg", {class: "chart", viewBox: "0 0 640 170", role: "img",
                            "aria-label": `waiting and finished jobs of ${ep}`});
    return h("article", {class: "card endpoint", "data-endpoint": ep},
      h("header", {}, title, h("span", {class: "route-status", "data-field": "last_route_status"}, "")),
      h("div", {class: "figures"}, ...MAIN.map((f) => figure(f, false))),
      h("div", {class: "figures more"}, route, ...MORE.map((f) => figure(f, true))),
      legend, chart);
  }

  function setFigure(node, value, text) {
    node.dataset.value = value === null || value === undefined ? "" : String(value);
    node.querySelector(".value").textContent = text;
  }

  function fill(article, st) {
    for (const [field, , fmt, cls] of [...MAIN, ...MORE]) {
      const node = article.querySelector(`.fig[data-field="${field}"]`);
      setFigure(node, st[field], fmt(st[field]));
      if (cls === "bad") node.classList.toggle("alarm", Number(st[field]) > 0);
    }
    const route = article.querySelector('.fig[data-field="route_calls_per_s"]');
    setFigure(route, st.route_calls_per_s, rate(st.route_calls_per_s));
    const budget = route.querySelector(".budget");
    budget.dataset.value = st.route_rate === null ? "" : String(st.route_rate);
    budget.textContent = st.route_rate === null ? "no budget set"
      : `of ${st.route_rate} budget` + (st.route_backoff_level ? `, halved ×${st.route_backoff_level} after 429s` : "");
    const share = st.route_rate ? Math.min(1, st.route_calls_per_s / st.route_rate) : 0;
    route.querySelector(".fill").style.width = `${(share * 100).toFixed(1)}%`;
    const status = article.querySelector(".route-status");
    status.dataset.value = st.last_route_status || "";
    status.textContent = st.last_route_status
      ? `route: ${st.last_route_status}` + (st.last_route_at && state.last
        ? ` (${seconds(Math.max(0, state.last.generated_at - st.last_route_at))} ago)` : "")
      : "";
  }

  function nice(max) {
    if (max <= 0) return 1;
    const p = 10 ** Math.floor(Math.log10(max));
    return [1, 2, 2.5, 5, 10].map((m) => m * p).find((v) => v >= max);
  }

  function draw(svg, points, now) {
    svg.replaceChildren();
    const W = 640, H = 170, L = 44, R = 44, T = 10, B = 22;
    const width = W - L - R, height = H - T - B;
    const first = points.length ? points[0][0] : now;
    const t0 = Math.max(now - state.window, Math.min(first, now - 60));
    const x = (t) => L + ((t - t0) / Math.max(1, now - t0)) * width;
    const pMax = nice(Math.max(0, ...points.map((p) => p[1])));
    const rMax = nice(Math.max(0, ...points.map((p) => Math.max(p[3] || 0, p[4] || 0))));
    const yP = (v) => T + height - (v / pMax) * height;
    const yR = (v) => T + height - (v / rMax) * height;
    for (const f of [0, 0.5, 1]) {
      const y = T + height - f * height;
      svg.append(s("line", {x1: L, x2: L + width, y1: y, y2: y, class: "grid"}));
      const left = s("text", {x: L - 6, y: y + 4, class: "axis pending", "text-anchor": "end"});
      left.textContent = String(+(pMax * f).toFixed(1));
      const right = s("text", {x: L + width + 6, y: y + 4, class: "axis done"});
      right.textContent = String(+(rMax * f).toFixed(2));
      svg.append(left, right);
    }
    for (const [t, anchor] of [[t0, "start"], [(t0 + now) / 2, "middle"], [now, "end"]]) {
      const label = s("text", {x: x(t), y: H - 6, class: "axis", "text-anchor": anchor});
      label.textContent = clock(t);
      svg.append(label);
    }
    if (!points.length) return;
    const line = (get, y) => points.filter((p) => get(p) !== null)
      .map((p) => `${x(p[0]).toFixed(1)},${y(get(p)).toFixed(1)}`).join(" ");
    const pending = line((p) => p[1], yP);
    svg.append(s("polygon", {class: "area pending",
      points: `${x(points[0][0]).toFixed(1)},${yP(0)} ${pending} ${x(points[points.length - 1][0]).toFixed(1)},${yP(0)}`}));
    svg.append(s("polyline", {class: "line pending", points: pending, "data-series": "pending"}));
    svg.append(s("polyline", {class: "line done", points: line((p) => p[3], yR), "data-series": "done_per_s"}));
    svg.append(s("polyline", {class: "line failed", points: line((p) => p[4], yR), "data-series": "failed_per_s"}));
  }

  function failures(rows, now) {
    const body = document.getElementById("failure-rows");
    body.replaceChildren(...rows.map((f) => h("tr", {"data-job": f.id},
      h("td", {class: "num"}, f.finished_at ? `${seconds(Math.max(0, now - f.finished_at))} ago` : "-"),
      h("td", {}, f.endpoint),
      h("td", {}, h("a", {href: f.href, target: "_blank", rel: "noopener", class: "job"}, f.id)),
      h("td", {}, f.status),
      h("td", {class: "kind"}, f.error_kind || "-"),
      h("td", {class: "error", title: f.error || ""}, f.error || ""))));
    document.getElementById("no-failures").hidden = rows.length > 0;
  }

  function apply(doc) {
    state.last = doc;
    state.interval = doc.sample_interval || state.interval;
    state.window = doc.window || state.window;
    const now = doc.generated_at || Date.now() / 1000;
    for (const [ep, pts] of Object.entries(doc.history.points)) {
      const mine = state.points[ep] || (state.points[ep] = []);
      for (const p of pts) if (!mine.length || p[0] > mine[mine.length - 1][0]) mine.push(p);
      while (mine.length && mine[0][0] < now - state.window) mine.shift();
      for (const p of pts) state.since = Math.max(state.since, p[0]);
    }
    document.getElementById("queue").textContent = doc.queue;
    document.getElementById("updated").textContent = clock(doc.generated_at);
    document.getElementById("interval").textContent = String(state.interval);
    document.getElementById("window").textContent = String(state.window / 60);
    const hooks = document.getElementById("hooks");
    hooks.hidden = !doc.webhooks_queued;
    hooks.textContent = `${doc.webhooks_queued} webhook deliveries not over yet`;
    const box = document.getElementById("endpoints");
    const seen = new Set(doc.order);
    for (const node of box.querySelectorAll("article.endpoint")) {
      if (!seen.has(node.dataset.endpoint)) node.remove();
    }
    for (const ep of doc.order) {
      let article = box.querySelector(`article[data-endpoint="${CSS.escape(ep)}"]`);
      if (!article) article = card(ep);
      box.append(article);  // in order, the busiest first
      fill(article, doc.endpoints[ep]);
      draw(article.querySelector("svg.chart"), state.points[ep] || [], now);
    }
    document.getElementById("empty").hidden = doc.order.length > 0;
    failures(doc.failures || [], now);
    document.body.dataset.generatedAt = String(doc.generated_at);
  }

  function connection(ok, why) {
    const conn = document.getElementById("conn");
    conn.dataset.state = ok ? "live" : "stale";
    conn.textContent = ok ? "live" : `stale: ${why}`;
  }

  async function poll() {
    clearTimeout(state.timer);
    try {
      const r = await fetch(`/dashboard/data?since=${state.since}`,
                            {credentials: "same-origin", cache: "no-store"});
      if (r.status === 401) { location.assign("/login"); return; }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      const doc = await r.json();
      apply(doc);
      connection(!doc.error, doc.error);
    } catch (e) {
      connection(false, e.message || "gateway unreachable");
    }
    state.timer = setTimeout(poll, state.interval * 1000);
  }

  document.addEventListener("DOMContentLoaded", poll);
})();
