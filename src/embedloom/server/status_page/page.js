// The status page's script: polls /status every second and charts the differences
// between snapshots (counters become rates, histograms percentiles). No library:
// the page must work with no network but the server's.
"use strict";

const ROOT = document.body.dataset.root;
const POLL_MS = 1000;
const HISTORY = 120; // snapshots kept: two minutes of charts
const LATENCY_WINDOW = 5; // snapshots the latency percentiles are taken over
const COLOURS = ["#2f6fdb", "#e0702a", "#2a9d63", "#b0399a", "#7a6a1f", "#c23b3b"];
const KEY_STORE = "embedloom-api-key"; // sessionStorage: gone with the tab

const history = [];
let key = sessionStorage.getItem(KEY_STORE) || "";

function headers(extra) {
  const sent = Object.assign({}, extra);
  if (key) sent.Authorization = "Bearer " + key;
  return sent;
}

async function poll() {
  try {
    const reply = await fetch(ROOT + "/status", { headers: headers(), cache: "no-store" });
    if (reply.status === 401) {
      askForKey(key ? "that key was refused" : "");
      return; // polling starts again once a key is given
    }
    if (!reply.ok) throw new Error("/status answered " + reply.status);
    show(await reply.json());
  } catch (error) {
    document.getElementById("server").textContent = "cannot reach the server: " + error.message;
  }
  setTimeout(poll, POLL_MS);
}

function askForKey(message) {
  document.getElementById("key-form").hidden = false;
  document.getElementById("content").hidden = true;
  document.getElementById("key-message").textContent = message;
  document.getElementById("server").textContent = "";
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  key = document.getElementById("key").value.trim();
  sessionStorage.setItem(KEY_STORE, key);
  document.getElementById("key").value = "";
  document.getElementById("key-form").hidden = true;
  poll();
});

function show(status) {
  document.getElementById("content").hidden = false;
  const scope = status.figures.scope;
  document.getElementById("server").textContent =
    `version ${status.version} · process ${status.pid} · ` +
    `${status.workers} worker${status.workers > 1 ? "s" : ""} · ` +
    `thread budget ${status.thread_budget} (${status.compute_slots_held} running a batch)`;
  document.getElementById("scope-note").textContent =
    scope === "fleet"
      ? `Models and sharing: this process (${status.pid}), one of ${status.workers} workers ` +
        "configured alike. Charts and totals: the fleet, every worker together."
      : `Models, sharing, charts and totals: this process (${status.pid}).`;
  for (const element of document.querySelectorAll(".scope")) {
    element.textContent = scope === "fleet" ? "(the fleet: every worker)" : "(this process)";
  }
  showModels(status.models);
  history.push({ time: status.time, figures: status.figures });
  if (history.length > HISTORY) history.shift();
  drawCharts(status.figures);
}

function showModels(models) {
  const rows = models.map((model) => {
    const choice = model.backend_choice;
    const gate = choice && choice.accuracy_gate;
    const gateText = !choice ? "" : !gate ? "reference (fp32 torch)" : Object.entries(gate)
      .map(([name, value]) => `${name.replace(/_/g, " ")} ${Number(value).toFixed(5)}`)
      .join(", ");
    const sharing = model.sharing
      ? `${model.sharing}: ${model.replicas} × ${model.threads_per_replica} threads, ` +
        `${model.inference_threads} inference thread${model.inference_threads > 1 ? "s" : ""}`
      : "";
    const names = model.names.length > 1 ? ` (also ${model.names.slice(1).join(", ")})` : "";
    return [
      model.name + names, model.state, model.kind || "", choice ? choice.variant : "",
      choice ? choice.reason : "", gateText, sharing, model.dimensions ?? "",
      model.max_input_length ?? "",
    ];
  });
  const body = document.querySelector("#models tbody");
  body.replaceChildren(...rows.map((cells) => {
    const row = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      row.append(td);
    }
    return row;
  }));
  const select = document.getElementById("similarity-model");
  const embedders = models.filter((m) => m.kind === "embedding" || m.kind === null);
  const names = embedders.map((m) => m.name);
  if ([...select.options].map((o) => o.value).join() !== names.join()) {
    const chosen = select.value;
    select.replaceChildren(...names.map((name) => new Option(name, name)));
    if (names.includes(chosen)) select.value = chosen;
  }
}

// Series over the kept snapshots: one point per pair of neighbours.
function rates(field) {
  return perModel((before, after, seconds) =>
    seconds > 0 ? Math.max(0, after[field] - before[field]) / seconds : null);
}

function perModel(point) {
  const names = new Set(history.flatMap((s) => Object.keys(s.figures.models)));
  return [...names].map((name) => ({
    name,
    points: history.slice(1).map((snapshot, index) => {
      const before = history[index].figures.models[name];
      const after = snapshot.figures.models[name];
      if (!before || !after) return null;
      return point(before, after, snapshot.time - history[index].time);
    }),
  }));
}

function gauge(field) {
  const names = new Set(history.flatMap((s) => Object.keys(s.figures.models)));
  return [...names].map((name) => ({
    name,
    points: history.slice(1).map((s) => (s.figures.models[name] || {})[field] ?? null),
  }));
}

// The q-quantile of a histogram's observations (cumulative counts by upper bound,
// the last one unbounded), interpolated within its bucket as Prometheus does.
function quantile(q, bounds, counts) {
  const total = counts[counts.length - 1];
  if (!total) return null;
  const rank = q * total;
  const index = counts.findIndex((count) => count >= rank);
  if (index >= bounds.length) return bounds[bounds.length - 1];
  const lower = index === 0 ? 0 : bounds[index - 1];
  const below = index === 0 ? 0 : counts[index - 1];
  const inBucket = counts[index] - below;
  return lower + (bounds[index] - lower) * (inBucket ? (rank - below) / inBucket : 1);
}

function latencySeries() {
  const series = [["p50", 0.5], ["p90", 0.9], ["p99", 0.99]].map(([name]) => ({ name, points: [] }));
  for (let i = 1; i < history.length; i++) {
    const after = history[i].figures.request_seconds;
    const before = history[Math.max(0, i - LATENCY_WINDOW)].figures.request_seconds;
    const grown = after.cumulative.map((count, j) => count - (before.cumulative[j] || 0));
    [0.5, 0.9, 0.99].forEach((q, s) => {
      const seconds = quantile(q, after.bounds, grown);
      series[s].points.push(seconds === null ? null : seconds * 1000);
    });
  }
  return series;
}

// The newest values for the caption: the series that are not zero (all of them when
// there is only one or two), "idle" when none.
function latest(series, digits) {
  const shown = series
    .map((s) => [s.name, s.points[s.points.length - 1]])
    .filter(([, value]) => value !== null && value !== undefined)
    .filter(([, value], _, all) => all.length <= 3 || value > 0);
  if (!shown.length) return "idle";
  return shown.map(([name, value]) => `${name} ${value.toFixed(digits)}`).join(" · ");
}

function drawCharts(figures) {
  const charts = [
    ["throughput", rates("inputs_embedded"), 1],
    ["queue", gauge("queued_inputs"), 0],
    ["batch", perModel((before, after) => {
      const batches = after.batches - before.batches;
      return batches > 0 ? (after.batched_inputs - before.batched_inputs) / batches : null;
    }), 1],
    ["latency", latencySeries(), 0],
  ];
  for (const [name, series, digits] of charts) {
    draw(document.getElementById("chart-" + name), series);
    document.getElementById("now-" + name).textContent = latest(series, digits);
  }
  const totals = Object.entries(figures.models).map(([name, model]) => {
    const requests = model.requests;
    return `${name}: ${model.inputs_embedded} inputs embedded, ` +
      `${requests.completed || 0} requests completed, ${requests.rejected || 0} refused ` +
      `(429), ${requests.failed || 0} failed`;
  });
  document.getElementById("totals").textContent = totals.join("; ");
}

function draw(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const context = canvas.getContext("2d");
  context.scale(ratio, ratio);
  context.font = "11px system-ui, sans-serif";
  const values = series.flatMap((s) => s.points).filter((v) => v !== null);
  const top = niceCeiling(Math.max(1, ...values));
  const left = 44;
  const bottom = height - 16;
  const plotWidth = width - left - 8;
  context.strokeStyle = "#e4e4ee";
  context.fillStyle = "#667";
  for (const fraction of [0, 0.5, 1]) {
    const y = bottom - fraction * (bottom - 8);
    context.beginPath();
    context.moveTo(left, y);
    context.lineTo(width - 8, y);
    context.stroke();
    context.fillText(String(+(top * fraction).toPrecision(3)), 4, y + 4);
  }
  context.fillText(`last ${HISTORY - 1} s`, left, height - 2);
  const step = plotWidth / (HISTORY - 2);
  let legendX = left + 6;
  series.forEach((s, index) => {
    const colour = COLOURS[index % COLOURS.length];
    context.strokeStyle = colour;
    context.lineWidth = 1.6;
    context.beginPath();
    let pen = false;
    const offset = HISTORY - 1 - s.points.length;
    s.points.forEach((value, i) => {
      if (value === null) { pen = false; return; }
      const x = left + (offset + i) * step;
      const y = bottom - (value / top) * (bottom - 8);
      if (pen) context.lineTo(x, y); else context.moveTo(x, y);
      pen = true;
    });
    context.stroke();
    context.fillStyle = colour;
    // A dot on the newest point: a series of one point has no line to draw.
    const last = s.points.length - 1;
    if (last >= 0 && s.points[last] !== null) {
      const y = bottom - (s.points[last] / top) * (bottom - 8);
      context.beginPath();
      context.arc(left + (offset + last) * step, y, 2.5, 0, 2 * Math.PI);
      context.fill();
    }
    context.fillText(s.name, legendX, 12);
    legendX += context.measureText(s.name).width + 12;
  });
  // For tests and curious readers: the newest value of each series.
  canvas.dataset.points = String(values.length);
  canvas.dataset.latest = JSON.stringify(Object.fromEntries(
    series.map((s) => [s.name, s.points.length ? s.points[s.points.length - 1] : null])));
}

function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= value);
}

document.getElementById("similarity").addEventListener("submit", async (event) => {
  event.preventDefault();
  const result = document.getElementById("similarity-result");
  result.className = "";
  result.textContent = "…";
  const body = {
    model: document.getElementById("similarity-model").value,
    inputs: {
      source_sentence: document.getElementById("similarity-a").value,
      sentences: [document.getElementById("similarity-b").value],
    },
  };
  try {
    const reply = await fetch(ROOT + "/similarity", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json" }),
      body: JSON.stringify(body),
    });
    const answer = await reply.json();
    if (!reply.ok) {
      result.className = "error";
      result.textContent = answer.error || `the server answered ${reply.status}`;
      return;
    }
    result.textContent = `cosine similarity ${answer[0].toFixed(4)}`;
    result.dataset.value = String(answer[0]);
  } catch (error) {
    result.className = "error";
    result.textContent = error.message;
  }
});

poll();
