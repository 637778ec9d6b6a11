// Line charts drawn as SVG: the loss curve, usage over time, latency percentiles.
// Colours come from the stylesheet (`.series-0`, `.series-1`, ...), so the chart
// follows the page's light or dark scheme.

const NS = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 240;
const PAD = { top: 12, right: 16, bottom: 34, left: 56 };

function svg(tag, attrs = {}, text) {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** Round tick values from at or below `min` to at or above `max`. */
function ticks(min, max, count = 4) {
  const raw = (max - min) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw);
  const out = [];
  for (let value = Math.floor(min / step) * step; value < max + step; value += step) {
    out.push(Number(value.toPrecision(12)));
    if (value >= max) break;
  }
  return out;
}

/**
 * A line chart. `x`: numbers (or Dates); `series`: `[{name, values}]` with one value
 * (or null for a gap) per x; `label`: what the chart shows, for screen readers and
 * its caption; `formatX`/`formatY`: tick labels.
 */
export function lineChart({ x, series, label, formatX = String, formatY = String, yMin }) {
  const xs = x.map(Number);
  const values = series.flatMap((one) => one.values).filter((v) => v !== null && Number.isFinite(v));
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = label;
  if (!xs.length || !values.length) {
    const empty = document.createElement("p");
    empty.className = "muted";
    empty.textContent = "Nothing to draw yet.";
    figure.append(caption, empty);
    return figure;
  }
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [yMin ?? Math.min(...values), Math.max(...values)];
  if (y1 === y0) y1 = y0 + 1;
  const yTicks = ticks(y0, y1);
  [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const px = (v) => PAD.left + (x1 === x0 ? 0.5 : (v - x0) / (x1 - x0)) * (WIDTH - PAD.left - PAD.right);
  const py = (v) => HEIGHT - PAD.bottom - ((v - y0) / (y1 - y0)) * (HEIGHT - PAD.top - PAD.bottom);

  const root = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": label });
  for (const value of yTicks) {
    root.append(svg("line", { class: "grid", x1: PAD.left, x2: WIDTH - PAD.right, y1: py(value), y2: py(value) }));
    root.append(svg("text", { class: "tick", x: PAD.left - 6, y: py(value) + 4, "text-anchor": "end" }, formatY(value)));
  }
  const xTickCount = Math.min(6, xs.length);
  for (let i = 0; i < xTickCount; i += 1) {
    const value = xTickCount === 1 ? xs[0] : x0 + ((x1 - x0) * i) / (xTickCount - 1);
    root.append(svg("text", { class: "tick", x: px(value), y: HEIGHT - PAD.bottom + 18, "text-anchor": "middle" }, formatX(value)));
  }
  root.append(svg("line", { class: "axis", x1: PAD.left, x2: WIDTH - PAD.right, y1: HEIGHT - PAD.bottom, y2: HEIGHT - PAD.bottom }));

  series.forEach((one, index) => {
    let path = "";
    let pen = "M";
    one.values.forEach((value, i) => {
      if (value === null || !Number.isFinite(value)) {
        pen = "M";
        return;
      }
      path += `${pen}${px(xs[i]).toFixed(1)},${py(value).toFixed(1)} `;
      pen = "L";
    });
    root.append(svg("path", { class: `line series-${index}`, d: path.trim() }));
    const points = one.values.filter((value) => value !== null && Number.isFinite(value));
    if (points.length === 1) {
      const i = one.values.findIndex((value) => value !== null && Number.isFinite(value));
      root.append(svg("circle", { class: `dot series-${index}`, cx: px(xs[i]), cy: py(one.values[i]), r: 3 }));
    }
  });

  const legend = document.createElement("ul");
  legend.className = "legend";
  series.forEach((one, index) => {
    const item = document.createElement("li");
    item.className = `series-${index}`;
    item.textContent = one.name;
    legend.append(item);
  });
  figure.append(caption, root, legend);
  return figure;
}

/** A time axis label: hours and minutes, or the date for spans over a day. */
export function timeLabel(spanMs) {
  return (ms) => new Date(ms).toLocaleString("en-GB", spanMs > 86400000
    ? { month: "short", day: "numeric" }
    : { hour: "2-digit", minute: "2-digit" });
}
