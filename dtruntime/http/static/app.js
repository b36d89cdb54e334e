/*
 * dtruntime dashboard: polls api/dashboard (relative, so the page works under any prefix)
 * about once a second and updates the page in place.
 *
 * Invariants:
 * - One request in flight at a time: the next poll is scheduled when the previous one ends
 *   (a slow peer slows the page down instead of piling requests on it); each times out
 *   after 5 s.
 * - Worker rows are keyed by worker id and created once; a poll changes only the cells and
 *   attributes whose value changed and moves only rows whose place changed, so 256 workers
 *   cost a few hundred string compares per second, not a table rebuild.
 * - Rows sort problems first (lost, hung, suspect, straggling, left, alive), then by rank.
 * - A document the page cannot render marks the connection state "error" and polling goes on.
 * - Nothing is fetched from outside the job; nothing is written to the DOM as HTML
 *   (textContent only), so a worker id or log message cannot inject markup.
 */
"use strict";

(function () {
  const POLL_MS = 1000;
  const REQUEST_TIMEOUT_MS = 5000;
  const LOG_KEEP = 500;
  const LOG_SHOW = 200;
  const LEVELS = { DEBUG: 10, INFO: 20, WARNING: 30, ERROR: 40, CRITICAL: 50 };
  const SEVERITY = { lost: 0, hung: 1, suspect: 2, straggler: 3, left: 4, alive: 5 };
  const STATUSES = ["alive", "suspect", "hung", "lost", "left"];
  const CAPTIONS = {
    barrier_wait_s: "barrier wait (s)",
    barrier_release_s: "barrier release (s)",
    checkpoint_write_mib_s: "checkpoint write (MiB/s)",
    checkpoint_load_mib_s: "checkpoint load (MiB/s)",
  };

  const $ = (id) => document.getElementById(id);
  const rows = new Map(); // worker_id -> {tr, cells}
  const signatures = new Map(); // element id -> JSON of what it shows
  const logs = new Map(); // seq -> record
  let lastDoc = null;
  let token = "";
  try { token = sessionStorage.getItem("dtruntime-token") || ""; } catch (e) { /* storage off */ }

  // ------------------------------------------------------------------ helpers

  function setText(el, text) {
    text = String(text);
    if (el.textContent !== text) el.textContent = text;
  }

  function setAttr(el, name, value) {
    value = String(value);
    if (el.getAttribute(name) !== value) el.setAttribute(name, value);
  }

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  /** Replace tbody's rows with build() output only when what they show changed. */
  function renderOnChange(id, value, build) {
    const sig = JSON.stringify(value);
    if (signatures.get(id) === sig) return;
    signatures.set(id, sig);
    const container = $(id);
    const frag = document.createDocumentFragment();
    build(frag);
    container.replaceChildren(frag);
  }

  function num(v) { return typeof v === "number" && isFinite(v); }

  function fmtSeconds(s) {
    if (!num(s)) return "–";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 0) + " ms";
    if (s < 120) return s.toFixed(2) + " s";
    return (s / 60).toFixed(1) + " min";
  }

  function fmtBytes(b) {
    if (!num(b)) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b.toFixed(0) : b.toFixed(1)) + " " + units[i];
  }

  function fmtNumber(v) {
    if (!num(v)) return String(v);
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 1000 || a < 0.001) return v.toExponential(1);
    return String(Number(v.toPrecision(3)));
  }

  function fmtClock(unix) {
    if (!num(unix)) return "";
    return new Date(unix * 1000).toISOString().slice(11, 23);
  }

  function workerSeverity(w) {
    if (w.status === "alive" && w.straggler) return SEVERITY.straggler;
    const s = SEVERITY[w.status];
    return s === undefined ? SEVERITY.lost : s; // an unknown status is shown as a problem
  }

  // ------------------------------------------------------------------ header + summary

  function renderHeader(doc) {
    const st = doc.status || {};
    const leader = st.leader ? `${st.leader}${num(st.leader_rank) ? " (rank " + st.leader_rank + ")" : ""}` : "none";
    setText($("leader"), leader);
    setAttr($("leader"), "data-leader", st.leader || "");
    setText($("term"), num(st.term) ? st.term : "–");
    setText($("world-size"), num(st.world_size) ? st.world_size : "–");
    const by = doc.answered_by || {};
    setText($("answered-by"), by.worker_id ? `${by.worker_id} (rank ${by.rank})` : "–");
    setText($("view-age"), fmtSeconds(doc.view_age_s));
  }

  function renderSummary(workers) {
    const counts = { alive: 0, suspect: 0, hung: 0, lost: 0, left: 0, straggler: 0 };
    let lo = Infinity, hi = -Infinity;
    for (const w of workers) {
      if (counts[w.status] !== undefined) counts[w.status] += 1;
      if (w.straggler) counts.straggler += 1;
      if (num(w.step) && w.status !== "lost" && w.status !== "left") { lo = Math.min(lo, w.step); hi = Math.max(hi, w.step); }
    }
    for (const [name, n] of Object.entries(counts)) {
      const node = $("count-" + name);
      setText(node, n);
      setAttr(node, "data-count", n);
      node.parentElement.classList.toggle("nonzero", n > 0 && name !== "alive");
    }
    setText($("step-range"), lo === Infinity ? "–" : lo === hi ? lo : `${lo}–${hi} (spread ${hi - lo})`);
    const problems = counts.lost + counts.hung + counts.suspect;
    document.title = problems ? `dtruntime – ${problems} problem${problems > 1 ? "s" : ""}` : "dtruntime";
  }

  // ------------------------------------------------------------------ workers

  function workerRow(id) {
    let row = rows.get(id);
    if (row) return row;
    const tr = el("tr", { "data-worker-id": id });
    const names = ["rank", "worker", "host", "status", "heartbeat", "step", "step-time"];
    const cells = {};
    for (const name of names) {
      const td = el("td", { "data-field": name });
      tr.appendChild(td);
      cells[name] = td;
    }
    row = { tr, cells };
    rows.set(id, row);
    return row;
  }

  function renderWorkers(doc) {
    const workers = Array.isArray(doc.workers) ? doc.workers : [];
    const leader = (doc.status || {}).leader;
    const problemsOnly = $("problems-only").checked;
    const seen = new Set();
    const ordered = workers.slice().sort((a, b) =>
      workerSeverity(a) - workerSeverity(b) || (a.rank ?? 1e9) - (b.rank ?? 1e9) ||
      String(a.worker_id).localeCompare(String(b.worker_id)));
    for (const w of ordered) {
      const id = String(w.worker_id);
      seen.add(id);
      const { tr, cells } = workerRow(id);
      const shown = w.status === "alive" && w.straggler ? "straggling" : String(w.status);
      setAttr(tr, "data-rank", w.rank ?? "");
      setAttr(tr, "data-status", w.status);
      setAttr(tr, "data-straggler", w.straggler ? "true" : "false");
      setAttr(tr, "data-step", w.step ?? "");
      setAttr(tr, "data-leader", id === leader ? "true" : "false");
      setAttr(tr, "class", `status-${w.status}${w.straggler ? " straggler" : ""}${id === leader ? " leader" : ""}`);
      setText(cells.rank, w.rank ?? "–");
      setText(cells.worker, id === leader ? `${id} ★ leader` : id);
      setText(cells.host, w.port ? `${w.host}:${w.port}` : (w.host ?? "–"));
      setText(cells.status, shown);
      setText(cells.heartbeat, fmtSeconds(w.heartbeat_age_s));
      setText(cells.step, w.step ?? "–");
      setText(cells["step-time"], fmtSeconds(w.step_time_s));
      tr.hidden = problemsOnly && workerSeverity(w) === SEVERITY.alive;
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    // Move only rows that are out of place (no change: no DOM writes at all).
    const tbody = $("workers");
    ordered.forEach((w, i) => {
      const tr = rows.get(String(w.worker_id)).tr;
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    renderSummary(workers);
  }

  // ------------------------------------------------------------------ barriers, checkpoints, datasets

  function shortList(ids, limit) {
    const list = Array.isArray(ids) ? ids : [];
    return list.length <= limit ? list.join(", ") : `${list.slice(0, limit).join(", ")} … +${list.length - limit} more`;
  }

  function renderBarriers(doc) {
    const barriers = Array.isArray(doc.barriers) ? doc.barriers : [];
    const leader = (doc.status || {}).leader;
    setText($("barrier-count"), barriers.length);
    setAttr($("barrier-count"), "data-count", barriers.length);
    // age changes every poll; compare on the rest and update ages in place.
    renderOnChange("barriers", [leader, barriers.map((b) => [b.barrier_id, b.source, b.arrived, b.waiting_for])], (frag) => {
      for (const b of barriers) {
        const tr = el("tr", { "data-barrier-id": b.barrier_id, "data-waiting": (b.waiting_for || []).length,
          "data-source": b.source || "" });
        tr.appendChild(el("td", {}, b.barrier_id));
        tr.appendChild(el("td", { "data-field": "age" }, fmtSeconds(b.age_s)));
        tr.appendChild(el("td", { title: (b.arrived || []).join(", ") }, `${(b.arrived || []).length}`));
        // A follower lists only its own waits: whom they wait for is known to the leader only.
        const whom = b.source === "self" && !(b.waiting_for || []).length
          ? `(this worker's own wait: the leader ${leader || "?"} knows whom it waits for)`
          : shortList(b.waiting_for, 8);
        tr.appendChild(el("td", { class: "waiting", title: (b.waiting_for || []).join(", ") }, whom));
        frag.appendChild(tr);
      }
    });
    const trs = $("barriers").children;
    barriers.forEach((b, i) => { if (trs[i]) setText(trs[i].children[1], fmtSeconds(b.age_s)); });
  }

  function renderCheckpoints(doc) {
    const ck = doc.checkpoints || {};
    const committed = (Array.isArray(ck.committed) ? ck.committed : []).slice().sort((a, b) => b.step - a.step);
    const pending = Array.isArray(ck.pending) ? ck.pending : [];
    setText($("checkpoints-pending"), pending.length ? pending.join(", ") : "none");
    setAttr($("checkpoints-pending"), "data-steps", pending.join(","));
    const abandoned = Array.isArray(ck.abandoned) ? ck.abandoned : [];
    $("abandoned-row").hidden = abandoned.length === 0;
    setText($("checkpoints-abandoned"), abandoned.map((a) => (a && typeof a === "object" ? a.step : a)).join(", "));
    renderOnChange("checkpoints", committed, (frag) => {
      for (const c of committed.slice(0, 20)) {
        const tr = el("tr", { "data-step": c.step, "data-bytes": c.bytes ?? "" });
        tr.appendChild(el("td", {}, c.step));
        tr.appendChild(el("td", {}, fmtBytes(c.bytes)));
        tr.appendChild(el("td", {}, num(c.throughput_mib_s) ? c.throughput_mib_s.toFixed(1) + " MiB/s" : "–"));
        tr.appendChild(el("td", {}, fmtClock(c.committed_at)));
        frag.appendChild(tr);
      }
    });
  }

  function renderDatasets(doc) {
    const datasets = Array.isArray(doc.datasets) ? doc.datasets : [];
    renderOnChange("datasets", datasets, (frag) => {
      for (const d of datasets) {
        const entries = Object.entries(d.progress_by_rank || {})
          .map(([rank, p]) => [Number(rank), Number(p)]).sort((a, b) => a[0] - b[0]);
        const values = entries.map((e) => e[1]).filter(num);
        const min = values.length ? Math.min(...values) : NaN;
        const max = values.length ? Math.max(...values) : NaN;
        const box = el("div", { class: "dataset", "data-dataset": d.name, "data-epoch": d.epoch ?? "" });
        box.appendChild(el("div", {},
          `${d.name}: epoch ${d.epoch ?? "–"}, ${entries.length} ranks, progress ` +
          (values.length ? `${(min * 100).toFixed(0)}–${(max * 100).toFixed(0)} %` : "–")));
        const canvas = el("canvas", { width: Math.max(240, Math.min(1024, entries.length * 4)), height: 40 });
        box.appendChild(canvas);
        drawProgress(canvas, entries);
        frag.appendChild(box);
      }
    });
  }

  function drawProgress(canvas, entries) {
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const w = canvas.width, h = canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (!entries.length) return;
    const bar = w / entries.length;
    entries.forEach(([, p], i) => {
      const v = Math.max(0, Math.min(1, num(p) ? p : 0));
      ctx.fillStyle = "#dde3ea";
      ctx.fillRect(i * bar, 0, Math.max(1, bar - 1), h);
      ctx.fillStyle = "#3a7bd5";
      ctx.fillRect(i * bar, h * (1 - v), Math.max(1, bar - 1), h * v);
    });
  }

  // ------------------------------------------------------------------ histograms

  /** Per-bucket counts from cumulative Prometheus buckets [[le, cumulative], ...]. */
  function bucketCounts(buckets) {
    let previous = 0;
    return buckets.map(([le, cumulative]) => {
      const count = Math.max(0, cumulative - previous);
      previous = cumulative;
      return { le, count, cumulative };
    });
  }

  function quantile(counts, total, q) {
    if (!total) return null;
    for (const b of counts) if (b.cumulative >= q * total) return b.le;
    return "+Inf";
  }

  function caption(name) {
    if (CAPTIONS[name]) return CAPTIONS[name];
    if (name.endsWith("_mib_s")) return name.slice(0, -6).replace(/_/g, " ") + " (MiB/s)";
    if (name.endsWith("_s")) return name.slice(0, -2).replace(/_/g, " ") + " (s)";
    return name.replace(/_/g, " ");
  }

  /** The chart of histogram ``name``, created on first sight (ids chart-NAME, stats-NAME). */
  function chart(name) {
    let canvas = $("chart-" + name);
    if (canvas) return canvas;
    const box = $("charts");
    const empty = box.querySelector(".empty");
    if (empty) empty.remove();
    const figure = el("figure", { "data-metric": name });
    canvas = el("canvas", { id: "chart-" + name, width: 360, height: 160, "data-metric": name });
    const text = el("figcaption", {}, caption(name) + " ");
    text.appendChild(el("span", { id: "stats-" + name }));
    figure.appendChild(canvas);
    figure.appendChild(text);
    box.appendChild(figure);
    return canvas;
  }

  function renderMetrics(doc) {
    const metrics = doc.metrics && typeof doc.metrics === "object" ? doc.metrics : {};
    for (const [name, h] of Object.entries(metrics)) {
      if (!h || !Array.isArray(h.buckets) || !/^[A-Za-z0-9_]+$/.test(name)) continue;
      const canvas = chart(name);
      const sig = JSON.stringify(h);
      if (signatures.get(canvas.id) === sig) continue;
      signatures.set(canvas.id, sig);
      const counts = bucketCounts(h.buckets);
      const total = num(h.count) ? h.count : 0;
      setAttr(canvas, "data-count", total);
      const mean = total ? h.sum / total : null;
      const p50 = quantile(counts, total, 0.5), p95 = quantile(counts, total, 0.95);
      setText($("stats-" + name), total
        ? `n=${total}, mean ${fmtNumber(mean)}, p50 ≤ ${p50 === "+Inf" ? "+Inf" : fmtNumber(p50)}, p95 ≤ ${p95 === "+Inf" ? "+Inf" : fmtNumber(p95)}`
        : "no samples yet");
      drawHistogram(canvas, counts);
    }
  }

  function drawHistogram(canvas, counts) {
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    const w = canvas.width, h = canvas.height, bottom = 22, top = 12;
    ctx.clearRect(0, 0, w, h);
    ctx.font = "10px sans-serif";
    ctx.fillStyle = "#666";
    if (!counts.length) { ctx.fillText("no buckets", 8, h / 2); return; }
    const max = Math.max(1, ...counts.map((b) => b.count));
    const bar = w / counts.length;
    const labelEvery = Math.max(1, Math.ceil(counts.length / Math.floor(w / 40)));
    counts.forEach((b, i) => {
      const bh = (h - bottom - top) * (b.count / max);
      ctx.fillStyle = b.le === "+Inf" ? "#c0392b" : "#3a7bd5";
      ctx.fillRect(i * bar + 1, h - bottom - bh, Math.max(1, bar - 2), bh);
      ctx.fillStyle = "#333";
      if (b.count) ctx.fillText(String(b.count), i * bar + 2, h - bottom - bh - 2);
      if (i % labelEvery === 0) {
        ctx.fillStyle = "#666";
        ctx.fillText(b.le === "+Inf" ? "+Inf" : "≤" + fmtNumber(Number(b.le)), i * bar + 1, h - 6);
      }
    });
  }

  // ------------------------------------------------------------------ logs and tasks

  function renderLogs(doc) {
    for (const record of Array.isArray(doc.logs) ? doc.logs : []) logs.set(record.seq, record);
    const seqs = [...logs.keys()].sort((a, b) => a - b);
    for (const seq of seqs.slice(0, Math.max(0, seqs.length - LOG_KEEP))) logs.delete(seq);
    const floor = LEVELS[$("log-filter").value] || 0;
    const shown = seqs.filter((s) => logs.has(s) && (LEVELS[logs.get(s).level] || 0) >= floor).slice(-LOG_SHOW);
    const box = $("logs");
    const following = box.scrollHeight - box.scrollTop - box.clientHeight < 24; // reader at the bottom
    renderOnChange("logs", [floor, shown], (frag) => {
      if (following) requestAnimationFrame(() => { box.scrollTop = box.scrollHeight; });
      for (const seq of shown) {
        const r = logs.get(seq);
        frag.appendChild(el("div", { class: "log level-" + r.level, "data-seq": seq, "data-level": r.level },
          `${fmtClock(r.time)} ${String(r.level).padEnd(7)} ${r.worker_id || ""} ${r.logger || ""}: ${r.message}`));
      }
    });
  }

  function taskState(task) {
    const states = Object.values(task.state_by_rank || {});
    if (states.includes("failed")) return "failed";
    if (states.length && states.every((s) => s === "done")) return "done";
    if (states.includes("running") || states.includes("done")) return "running";
    return "pending";
  }

  function renderTasks(doc) {
    const tasks = (Array.isArray(doc.tasks) ? doc.tasks : []).slice(-10).reverse();
    renderOnChange("tasks", tasks, (frag) => {
      for (const t of tasks) {
        const state = taskState(t);
        const tally = {};
        for (const s of Object.values(t.state_by_rank || {})) tally[s] = (tally[s] || 0) + 1;
        const tr = el("tr", { "data-task-id": t.id, "data-name": t.name, "data-state": state, class: "task-" + state });
        tr.appendChild(el("td", {}, t.id));
        tr.appendChild(el("td", {}, t.name + (t.args && Object.keys(t.args).length ? " " + JSON.stringify(t.args) : "")));
        tr.appendChild(el("td", {}, t.step ?? "–"));
        tr.appendChild(el("td", {}, t.submitted_by ?? "–"));
        tr.appendChild(el("td", {}, Object.entries(tally).map(([s, n]) => `${s} ${n}`).join(", ") || "–"));
        const cell = el("td");
        if (state === "pending") {
          const cancel = el("button", { type: "button", class: "cancel", "data-task-id": t.id }, "cancel");
          cancel.addEventListener("click", () => post(`api/tasks/${encodeURIComponent(t.id)}/stop`, null, `cancel ${t.id}`));
          cell.appendChild(cancel);
        }
        tr.appendChild(cell);
        frag.appendChild(tr);
      }
    });
  }

  // ------------------------------------------------------------------ run control

  function showResult(state, text) {
    const node = $("control-result");
    setAttr(node, "data-state", state);
    setText(node, text);
  }

  async function post(path, body, what) {
    const input = $("token");
    if (input.value) {
      token = input.value.trim();
      try { sessionStorage.setItem("dtruntime-token", token); } catch (e) { /* storage off */ }
    }
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    showResult("sending", `${what}…`);
    let response;
    try {
      response = await fetch(path, { method: "POST", headers, body: body === null ? "{}" : JSON.stringify(body), cache: "no-store" });
    } catch (e) {
      showResult("error", `${what}: cannot reach the job (${e.message})`);
      return;
    }
    let answer = null;
    try { answer = await response.json(); } catch (e) { /* not JSON */ }
    if (response.status === 401 || response.status === 403) {
      $("token-row").hidden = false;
      showResult("unauthorized", `${what}: this job needs a bearer token (dtruntime token prints it); enter it and retry`);
      return;
    }
    if (!response.ok) {
      const why = answer && (answer.error || answer.message) ? (answer.error || answer.message) : `HTTP ${response.status}`;
      showResult("error", `${what}: ${typeof why === "string" ? why : JSON.stringify(why)}`);
      return;
    }
    showResult("ok", `${what}: accepted${answer && answer.id ? " as task " + answer.id : ""}`);
  }

  function wireControls() {
    $("btn-checkpoint-now").addEventListener("click", () => post("api/tasks", { name: "checkpoint-now" }, "checkpoint-now"));
    $("btn-stop").addEventListener("click", () => {
      if (window.confirm("Stop the job? Every rank saves a checkpoint, then exits.")) post("api/tasks", { name: "stop" }, "stop");
    });
    $("btn-log-level").addEventListener("click", () => {
      const level = $("log-level-select").value;
      post("api/tasks", { name: "log-level", args: { level } }, `log-level ${level}`);
    });
    $("problems-only").addEventListener("change", () => { if (lastDoc) renderWorkers(lastDoc); });
    $("log-filter").addEventListener("change", () => { if (lastDoc) renderLogs({ logs: [] }); });
    if (token) $("token").value = token;
  }

  // ------------------------------------------------------------------ polling

  function setConn(state, text) {
    const node = $("conn");
    setAttr(node, "data-state", state);
    setText(node, text);
  }

  function render(doc) {
    renderHeader(doc);
    renderWorkers(doc);
    renderBarriers(doc);
    renderCheckpoints(doc);
    renderDatasets(doc);
    renderMetrics(doc);
    renderTasks(doc);
    renderLogs(doc);
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch("api/dashboard", { cache: "no-store", signal: controller.signal });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const doc = await response.json();
      if (!doc || typeof doc !== "object" || !Array.isArray(doc.workers) || !doc.status || typeof doc.status !== "object") {
        throw new Error("the answer is not a dashboard document (no workers list or status)");
      }
      lastDoc = doc;
      try {
        render(doc);
      } catch (e) {
        setConn("error", `cannot show the answer: ${e.message}`);
        return;
      }
      setConn("ok", `updated ${new Date().toISOString().slice(11, 19)}`);
    } catch (e) {
      setConn("error", `cannot reach the job: ${e.name === "AbortError" ? "timed out" : e.message}`);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => { wireControls(); poll(); });
})();
