// A small hand-written SVG line chart: loss per step and its moving average, plus the run's other loss
// terms (eval loss, CREPA) where its rows carry them. No library needed.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";

function svgEl(name, attrs, text) {
  const el = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function niceTicks(lo, hi, count) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
  return ticks;
}

function movingAverage(values, window) {
  const out = [];
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    sum += values[i];
    if (i >= window) sum -= values[i - window];
    out.push(sum / Math.min(i + 1, window));
  }
  return out;
}

// the other terms a step row may carry, drawn as their own series where present: [key, label]
const EXTRA_SERIES = [["eval_loss", "eval loss"], ["crepa_loss", "CREPA loss"]];

// rows: [{step, loss, eval_loss?, crepa_loss?}, ...]
function drawLossChart(svg, rows) {
  const width = Math.max(320, svg.clientWidth || 640);
  const height = 240;
  const m = { left: 56, right: 16, top: 14, bottom: 34 };
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const points = rows.filter((r) => Number.isFinite(r.loss));
  if (!points.length) {
    svg.appendChild(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis-label" },
      "the loss appears here after the first step"));
    return;
  }
  const steps = points.map((r) => r.step);
  const losses = points.map((r) => r.loss);
  const extras = EXTRA_SERIES.map(([key, label]) => [key, label, rows.filter((r) => Number.isFinite(r[key]))])
    .filter(([, , found]) => found.length);
  const extraValues = extras.flatMap(([key, , found]) => found.map((r) => r[key]));
  let x0 = Math.min(...steps), x1 = Math.max(...steps);
  if (x1 === x0) x1 = x0 + 1;
  let y0 = Math.min(...losses, ...extraValues), y1 = Math.max(...losses, ...extraValues);
  const pad = (y1 - y0) * 0.08 || Math.abs(y1) * 0.1 || 1;
  y0 -= pad; y1 += pad;
  const sx = (s) => m.left + ((s - x0) / (x1 - x0)) * (width - m.left - m.right);
  const sy = (v) => m.top + (1 - (v - y0) / (y1 - y0)) * (height - m.top - m.bottom);

  for (const t of niceTicks(y0, y1, 4)) {
    svg.appendChild(svgEl("line", { x1: m.left, x2: width - m.right, y1: sy(t), y2: sy(t), class: "grid" }));
    svg.appendChild(svgEl("text", { x: m.left - 6, y: sy(t) + 4, "text-anchor": "end", class: "tick" }, +t.toPrecision(3)));
  }
  for (const t of niceTicks(x0, x1, 6).filter((t) => Number.isInteger(t))) {
    svg.appendChild(svgEl("line", { x1: sx(t), x2: sx(t), y1: m.top, y2: height - m.bottom, class: "grid" }));
    svg.appendChild(svgEl("text", { x: sx(t), y: height - m.bottom + 16, "text-anchor": "middle", class: "tick" }, t));
  }
  svg.appendChild(svgEl("text", { x: width - m.right, y: height - 4, "text-anchor": "end", class: "axis-label" }, "step"));
  svg.appendChild(svgEl("text", { x: 12, y: m.top + 4, class: "axis-label", transform: `rotate(90 12 ${m.top + 4})` }, "loss"));

  // long runs: draw at most ~2 points per pixel column, the chart cannot show more anyway
  const every = Math.max(1, Math.ceil(points.length / (2 * (width - m.left - m.right))));
  const line = (values, cls) => svg.appendChild(svgEl("polyline", {
    points: values.filter((_, i) => i % every === 0 || i === values.length - 1)
      .map((v, j) => { const i = Math.min(j * every, values.length - 1); return `${sx(steps[i]).toFixed(1)},${sy(v).toFixed(1)}`; })
      .join(" "),
    class: cls,
  }));
  line(losses, "series-raw");
  const window = Math.max(1, Math.round(points.length / 20));
  line(movingAverage(losses, window), "series-avg");
  extras.forEach(([key, label, found], n) => {
    svg.appendChild(svgEl("polyline", { points: found.map((r) => `${sx(r.step).toFixed(1)},${sy(r[key]).toFixed(1)}`).join(" "),
      class: `series-extra series-${key}` }));
    for (const r of found) svg.appendChild(svgEl("circle", { cx: sx(r.step), cy: sy(r[key]), r: 2.5, class: `series-${key}` }));
    svg.appendChild(svgEl("text", { x: width - m.right, y: m.top + 12 + 14 * n, "text-anchor": "end", class: `legend series-${key}` }, label));
  });
  const last = points[points.length - 1];
  svg.appendChild(svgEl("circle", { cx: sx(last.step), cy: sy(last.loss), r: 3, class: "series-dot" }));
}

window.drawLossChart = drawLossChart;
