// fedge dashboard: polls /api/overview and redraws in place (no reload). Charts: uPlot (vendored, see VENDORED.md).
"use strict";

(function () {
  const POLL_MS = parseInt(document.body.dataset.pollMs || "1500", 10);
  const COLORS = ["#4f46e5", "#0891b2", "#d97706", "#db2777", "#16a34a", "#7c3aed", "#dc2626", "#0d9488",
    "#ca8a04", "#2563eb", "#9333ea", "#65a30d"];
  const MAX_DEVICE_SERIES = COLORS.length;
  const state = { selected: null, picked: false, charts: {}, last: null, skew: 0, polls: 0 };
  window.fedgeDashboard = state; // for tests and the curious: state.polls counts the updates of this page load

  const $ = (id) => document.getElementById(id);
  const esc = (v) => String(v === null || v === undefined ? "" : v)
    .replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const num = (v, digits) => (v === null || v === undefined || Number.isNaN(v) ? "" : Number(v).toFixed(digits));
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + "%");
  const kib = (b) => (b === null || b === undefined ? "" : (b / 1024).toFixed(1) + " KiB");
  const ratio = (r) => {
    if (r === null || r === undefined) return "";
    const cls = r < 0.999 ? "good" : r > 1.001 ? "bad" : "";
    return `<span class="ratio ${cls}">${r.toFixed(2)}×</span>`;
  };
  const ago = (ts) => {
    if (!ts) return "";
    const s = Math.max(0, Date.now() / 1000 + state.skew - ts);
    if (s < 90) return `${s.toFixed(0)} s ago`;
    if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
    if (s < 129600) return `${(s / 3600).toFixed(0)} h ago`;
    return `${(s / 86400).toFixed(0)} d ago`;
  };
  const clock = (ts) => (ts ? new Date(ts * 1000).toLocaleTimeString() : "");
  const setText = (id, text) => { const el = $(id); if (el.textContent !== text) el.textContent = text; };
  const setHTML = (el, html) => { if (el.innerHTML !== html) el.innerHTML = html; };
  const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;

  // ---------------------------------------------------------------------------------------------- tabs

  function showTab() {
    const tab = location.hash === "#fleet" ? "fleet" : "run";
    document.querySelectorAll(".tab").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
    $("page-run").classList.toggle("hidden", tab !== "run");
    $("page-fleet").classList.toggle("hidden", tab !== "fleet");
    Object.values(state.charts).forEach((c) => c && c.resize());
  }
  window.addEventListener("hashchange", showTab);

  // ---------------------------------------------------------------------------------------------- charts

  // One uPlot per container; re-created only when its series change, else fed new data in place.
  function chart(id, opts) {
    const el = $(id);
    let plot = null;
    let signature = "";
    const size = () => ({ width: Math.max(240, el.clientWidth), height: 230 });
    return {
      update(series, data, empty) {
        const sig = JSON.stringify(series.map((s) => s.label));
        if (!data || !data[0] || data[0].length === 0) {
          if (plot) { plot.destroy(); plot = null; signature = ""; }
          setHTML(el, `<div class="empty">${esc(empty || "no data yet")}</div>`);
          return;
        }
        if (plot && sig === signature) { plot.setData(data); return; }
        if (plot) plot.destroy();
        el.innerHTML = "";
        signature = sig;
        const { xLabel, ...rest } = opts;
        plot = new uPlot({ ...size(), ...rest, series: [{ label: xLabel || "x" }, ...series] }, data, el);
      },
      resize() { if (plot && el.clientWidth) plot.setSize(size()); },
    };
  }

  // one point alone would get a range of zero width: pad it
  const padded = (pad) => (u, lo, hi) => (lo === hi ? [lo - pad, hi + pad] : [lo, hi]);
  const roundX = { label: "round", incrs: [1, 2, 5, 10, 20, 50, 100], values: (u, v) => v.map((x) => x.toFixed(0)) };
  state.charts.accuracy = chart("chart-accuracy", {
    xLabel: "round", scales: { x: { time: false, range: padded(0.5) }, y: { range: [0, 1] } },
    axes: [roundX, { label: "accuracy" }],
  });
  state.charts.epsilon = chart("chart-epsilon", {
    xLabel: "round",
    scales: { x: { time: false, range: padded(0.5) }, y: { range: (u, lo, hi) => [0, Math.max(hi, 0.1) * 1.1] } },
    axes: [roundX, { label: "cumulative ε" }],
  });
  const timeOpts = (label, range) => ({
    xLabel: "time", scales: { x: { time: true, range: padded(30) }, y: range ? { range } : {} },
    axes: [{}, { label }],
  });
  state.charts.fleetAccuracy = chart("chart-fleet-accuracy", timeOpts("accuracy", [0, 1]));
  state.charts.fleetLatency = chart("chart-fleet-latency", timeOpts("ms",
    (u, lo, hi) => [0, Math.max(hi, 0.01) * 1.15]));
  window.addEventListener("resize", () => Object.values(state.charts).forEach((c) => c.resize()));

  const line = (label, color, extra) => ({ label, stroke: color, width: 2, points: { size: 6, fill: color },
    spanGaps: true, ...extra });

  // ---------------------------------------------------------------------------------------------- runs

  function renderRuns(runs, selected) {
    setText("runs-count", runs.length ? String(runs.length) : "");
    const html = runs.map((r) => {
      const rounds = r["rounds-total"] ? `${r["rounds-done"]}/${r["rounds-total"]}` : `${r["rounds-done"]}`;
      const acc = r.accuracy === null || r.accuracy === undefined ? "" : `acc ${num(r.accuracy, 3)}`;
      const eps = r.epsilon === null || r.epsilon === undefined ? "" : `ε ${num(r.epsilon, 2)}`;
      const tags = [r.artifacts ? "artifacts" : "", r.fleet ? "fleet" : ""].filter(Boolean)
        .map((t) => `<span class="tag">${t}</span>`).join("");
      return `<li class="run ${r.id === selected ? "selected" : ""}" data-run="${esc(r.id)}">
        <div class="run-id">${esc(r.id)}</div>
        <div class="run-line">${badge(r.status)}<span>round ${rounds}</span><span>${acc}</span><span>${eps}</span></div>
        <div class="run-line">${tags}<span class="muted">${esc(ago(r.updated))}</span></div></li>`;
    }).join("") || `<li class="empty">no runs under this directory yet</li>`;
    setHTML($("runs"), html);
  }
  $("runs").addEventListener("click", (ev) => {
    const li = ev.target.closest("li[data-run]");
    if (!li) return;
    state.selected = li.dataset.run;
    state.picked = true;
    poll(true);
  });

  function renderRun(run) {
    if (!run) {
      setText("run-title", "No run yet");
      setText("run-meta", "start one: fedge simulate, or fedge demo --ui");
      $("run-status").className = "badge";
      setText("run-status", "");
      setText("round-count", "–");
      state.charts.accuracy.update([], null, "no run yet");
      state.charts.epsilon.update([], null, "no run yet");
      return;
    }
    const c = run.config || {};
    setText("run-title", run.id);
    setText("run-meta", [c.model, c.dataset && `on ${c.dataset}` + (c.partitioner ? ` (${c.partitioner})` : ""),
      c.strategy, c.dp ? `DP target ε=${c["target-epsilon"]}, δ=${c["target-delta"]}` : "no DP"]
      .filter(Boolean).join(" · "));
    $("run-status").className = `badge ${run.status}`;
    setText("run-status", run.status);
    const total = run["rounds-total"];
    const done = run["rounds-done"];
    const roundEl = $("round-count");
    roundEl.dataset.rounds = String(done);
    setText("round-count", total ? `${done} / ${total}` : String(done));
    $("round-bar").style.width = total ? `${Math.min(100, (100 * done) / total)}%` : "0";

    setText("card-accuracy", run.accuracy === null || run.accuracy === undefined ? "–" : num(run.accuracy, 3));
    setText("card-accuracy-note", run["initial-accuracy"] === null || run["initial-accuracy"] === undefined
      ? "" : `from ${num(run["initial-accuracy"], 3)} before training`);
    const p = run.privacy || {};
    setText("card-epsilon", !p.enabled ? "off" : run.epsilon === null || run.epsilon === undefined
      ? "0" : num(run.epsilon, 2));
    setText("card-epsilon-note", p.enabled ? `budget ε=${p["target-epsilon"]} at δ=${p.delta}` : "no DP in this run");
    setText("eps-delta", p.enabled ? `δ=${p.delta}, budget ε=${p["target-epsilon"]}` : "");
    const clients = p.clients || [];
    const lastRound = (run.rounds || []).slice(-1)[0] || {};
    setText("card-clients", clients.length ? String(clients.length) : String(lastRound["clients-sampled"] || "–"));
    setText("card-clients-note", lastRound.round ? `round ${lastRound.round}: ${lastRound["clients-trained"] || 0}`
      + ` trained, ${lastRound["clients-refused"] || 0} refused, ${lastRound["clients-failed"] || 0} failed` : "");

    const rounds = run.rounds || [];
    const acc = rounds.filter((r) => r["central-accuracy"] !== null && r["central-accuracy"] !== undefined);
    state.charts.accuracy.update([line("accuracy", COLORS[0], { fill: "rgba(79,70,229,0.08)" })],
      [acc.map((r) => r.round), acc.map((r) => r["central-accuracy"])], "waiting for round 0");
    const eps = rounds.filter((r) => r.round > 0 && r["epsilon-max"] !== null && r["epsilon-max"] !== undefined);
    if (!p.enabled) {
      state.charts.epsilon.update([], null, "differential privacy is off in this run");
    } else {
      const target = p["target-epsilon"];
      state.charts.epsilon.update([
        line("max over clients", COLORS[3]),
        line("mean over clients", COLORS[1], { dash: [6, 4] }),
        { label: `budget ε=${target}`, stroke: "#dc2626", width: 1.5, dash: [3, 3], points: { show: false } },
      ], [eps.map((r) => r.round), eps.map((r) => r["epsilon-max"]), eps.map((r) => r["epsilon-mean"]),
        eps.map(() => target)], "waiting for round 1");
    }
    renderLedger(p);
    renderIncidents(run);
    renderArtifacts(run.artifacts || [], run.package);
  }

  function renderLedger(p) {
    const target = p["target-epsilon"] || 0;
    const rows = (p.clients || []).map((c) => {
      const share = target ? Math.min(1, c.epsilon / target) : 0;
      const refused = (c["refused-rounds"] || []).length
        ? `<span class="bad">rounds ${c["refused-rounds"].join(", ")}</span>` : `<span class="muted">none</span>`;
      return `<tr data-client="${esc(c.client)}"><td>client ${esc(c.client)}</td><td class="num">${num(c.epsilon, 3)}</td>
        <td><div class="meter"><div data-share="${(100 * share).toFixed(1)}" class="${share > 0.97 ? "full" : ""}">
        </div></div></td><td class="num">${(c.rounds || []).length}</td><td>${refused}</td></tr>`;
    }).join("");
    setHTML($("ledger").tBodies[0], rows || `<tr><td colspan="5" class="empty">${p.enabled
      ? "no client has reported yet" : "differential privacy is off: no ledger"}</td></tr>`);
    // widths through the CSSOM: the page's CSP allows no inline style attributes
    $("ledger").querySelectorAll("[data-share]").forEach((el) => { el.style.width = `${el.dataset.share}%`; });
  }

  function renderIncidents(run) {
    const items = [];
    for (const r of run.refusals || []) {
      items.push(`<li><span class="pill warn">refused</span> client ${esc(r.client)} in round ${esc(r.round)}` +
        (r.reason ? `: <span class="muted">${esc(r.reason)}</span>` : "") + "</li>");
    }
    for (const f of run.failures || []) {
      items.push(`<li><span class="pill bad">failed</span> node ${esc(f.node)} in round ${esc(f.round)}: ` +
        `<span class="muted">${esc(f.reason)}</span></li>`);
    }
    for (const t of run["timed-out"] || []) {
      items.push(`<li><span class="pill warn">timed out</span> ${esc(t.count)} in round ${esc(t.round)}</li>`);
    }
    setHTML($("incidents"), items.length ? `<ul class="incidents">${items.join("")}</ul>`
      : `<div class="ok-note">✓ none: every sampled client trained in every round</div>`);
  }

  function renderArtifacts(rows, pkg) {
    const html = rows.map((a) => `<tr data-artifact="${esc(a.file)}"><td class="mono">${esc(a.file)}</td>
      <td>${esc(a.format)}</td><td><span class="pill ${a.dtype === "int8" ? "accent" : ""}">${esc(a.dtype)}</span></td>
      <td class="num">${kib(a["size-bytes"])}</td><td class="num">${ratio(a["size-ratio"])}</td>
      <td class="num">${num(a.accuracy, 4)}</td><td class="num">${num(a.agreement, 4)}</td>
      <td class="num">${a["latency-ms"] === null || a["latency-ms"] === undefined ? "" : num(a["latency-ms"], 3) + " ms"}</td>
      <td class="num">${ratio(a["latency-ratio"])}</td></tr>`).join("");
    setHTML($("artifacts").tBodies[0], html ||
      `<tr><td colspan="9" class="empty">no artifacts yet: fedge package RUN_DIR exports them</td></tr>`);
    const notes = (pkg && pkg.notes) || [];
    setHTML($("package-notes"), notes.map((n) => `<li>${esc(n)}</li>`).join(""));
  }

  // ---------------------------------------------------------------------------------------------- fleet

  function renderFleet(fleet, run) {
    setText("fleet-source", fleet.source ? `fleet database ${fleet.source}` + (fleet.error ? ` · ${fleet.error}` : "")
      : "no fleet database yet: fedge demo writes runs/<run>/edge/fleet.db; fedge ui --fleet DB shows another");
    const devices = fleet.devices || [];
    setText("fleet-count", String(devices.length));
    const states = {};
    devices.forEach((d) => { states[d.state || "unknown"] = (states[d.state || "unknown"] || 0) + 1; });
    setText("fleet-states", Object.entries(states).map(([s, n]) => `${n} ${s}`).join(" · "));
    const versions = {};
    devices.forEach((d) => { const v = d.version === null ? "none" : `v${d.version}`; versions[v] = (versions[v] || 0) + 1; });
    const vkeys = Object.keys(versions).sort();
    setText("fleet-versions", vkeys.length ? vkeys.join(", ") : "–");
    setText("fleet-versions-note", vkeys.map((v) => `${versions[v]} on ${v}`).join(" · "));
    const seq = fleet.sequence || {};
    setText("fleet-received", String(seq.received || 0));
    setText("fleet-lost", `messages · ${seq.lost || 0} lost · ${seq.duplicates || 0} duplicates`
      + (fleet.malformed ? ` · ${fleet.malformed} malformed` : ""));
    let labelled = 0;
    let correct = 0;
    const since = Date.now() / 1000 + state.skew - 30;
    (fleet.telemetry || []).forEach((t) => { if (t.received >= since) { labelled += t.labelled; correct += t.correct; } });
    setText("fleet-accuracy", labelled ? num(correct / labelled, 3) : "–");
    setText("fleet-accuracy-note", labelled ? `${labelled} labelled samples in the last 30 s` : "no labelled samples lately");

    const rows = devices.map((d) => {
      const u = d.last_update || null;
      const update = u ? `<span class="pill ${u.outcome === "applied" ? "good" : u.outcome === "rejected" ? "bad"
        : "warn"}">${esc(u.outcome)}</span> v${esc(u.version)}` + (u.outcome !== "applied" && u.reason
        ? ` <span class="muted">${esc(u.reason)}</span>` : "") : "";
      return `<tr data-device="${esc(d.device_id)}"><td class="mono">${esc(d.device_id)}</td>
        <td><span class="state ${esc(d.state)}">${esc(d.state || "")}</span></td><td>${esc(d.runtime)}</td>
        <td>${esc(d.model_id)}</td><td class="num version">${d.version === null ? "" : esc(d.version)}</td>
        <td class="num">${esc(ago(d.last_seen))}</td><td class="num">${num(d.latency_ms_p50, 3)}</td>
        <td class="num">${num(d.latency_ms_p95, 3)}</td><td class="num">${num(d.accuracy, 3)}</td>
        <td class="num epsilon">${num(d.epsilon, 2)}</td><td>${update}</td></tr>`;
    }).join("");
    setHTML($("devices").tBodies[0], rows ||
      `<tr><td colspan="11" class="empty">no device has reported yet</td></tr>`);

    renderTelemetry(fleet.telemetry || [], devices);
    renderRollouts((run && run.rollouts) || []);
    const events = (fleet.events || []).map((e) => `<tr><td>${esc(clock(e.received))}</td>
      <td class="mono">${esc(e.device_id)}</td><td><span class="pill ${e.outcome === "applied" ? "good"
      : e.outcome === "rejected" ? "bad" : "warn"}">${esc(e.outcome)}</span></td><td class="num">${esc(e.version)}</td>
      <td class="num">${esc(e.running_version)}</td><td>${esc(e.reason)}${e.detail
      ? ` <span class="muted">${esc(e.detail)}</span>` : ""}</td></tr>`).join("");
    setHTML($("events").tBodies[0], events ||
      `<tr><td colspan="6" class="empty">no update events yet</td></tr>`);
  }

  function renderTelemetry(rows, devices) {
    const ids = devices.map((d) => d.device_id).slice(0, MAX_DEVICE_SERIES);
    const index = new Map(ids.map((d, i) => [d, i]));
    const when = (r) => Math.round(r.ts || r.received); // the device's clock, else when it arrived
    const xs = [...new Set(rows.filter((r) => index.has(r.device_id)).map(when))].sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const acc = ids.map(() => xs.map(() => null));
    const lat = ids.map(() => xs.map(() => null));
    for (const r of rows) {
      const i = index.get(r.device_id);
      if (i === undefined) continue;
      const j = at.get(when(r));
      if (r.accuracy !== null) acc[i][j] = r.accuracy;
      if (r.latency_ms_p50 !== null) lat[i][j] = r.latency_ms_p50;
    }
    const series = ids.map((d, i) => line(d, COLORS[i % COLORS.length], { points: { size: 4 } }));
    state.charts.fleetAccuracy.update(series, [xs, ...acc], "no telemetry yet");
    state.charts.fleetLatency.update(series, [xs, ...lat], "no telemetry yet");
  }

  function renderRollouts(rollouts) {
    const list = (names, cls) => (names.length
      ? names.map((d) => `<span class="chip ${cls}">${esc(d)}</span>`).join("") : `<span class="muted">none</span>`);
    const stats = (s) => (s ? `${s.reports} reports, accuracy ${s.accuracy === null ? "–" : num(s.accuracy, 3)}`
      + ` on ${s.labelled} labelled samples` : "–");
    const html = rollouts.slice().reverse().map((r) => {
      const rejected = Object.entries(r.rejected || {});
      return `<div class="rollout" data-rollout="${esc(r.model_id)}-v${esc(r.version)}">
        <div class="rollout-head"><span class="rollout-title">${esc(r.model_id)} v${esc(r.version)}</span>
          ${badge(r.status)}<span class="muted">${esc((r.devices || []).length)} devices · ${num(r.seconds, 1)} s</span></div>
        <div class="kv"><span>canaries</span><div>${list(r.canaries || [], "accent")}</div></div>
        ${r.verdict ? `<div class="kv"><span>verdict</span><div>${esc(r.verdict)}</div></div>` : ""}
        ${r.canary_stats ? `<div class="kv"><span>canaries on it</span><div>${esc(stats(r.canary_stats))}</div></div>` : ""}
        ${r.baseline ? `<div class="kv"><span>before</span><div>${esc(stats(r.baseline))}</div></div>` : ""}
        <div class="kv"><span>applied</span><div>${list(r.applied || [], "good")}</div></div>
        ${rejected.length ? `<div class="kv"><span>rejected</span><div>${rejected.map(([d, why]) =>
          `<span class="chip bad">${esc(d)}: ${esc(why)}</span>`).join("")}</div></div>` : ""}
        ${(r.rolled_back || []).length ? `<div class="kv"><span>rolled back</span><div>${list(r.rolled_back, "warn")}</div></div>` : ""}
        ${(r.missing || []).length ? `<div class="kv"><span>no answer</span><div>${list(r.missing, "warn")}</div></div>` : ""}
      </div>`;
    }).join("");
    setHTML($("rollouts"), html || `<div class="empty">no rollout recorded for this run
      (the demo writes edge/rollouts.json after each)</div>`);
  }

  // ---------------------------------------------------------------------------------------------- polling

  function setLive(ok, text) {
    const el = $("live");
    el.dataset.state = ok ? "live" : "offline";
    setText("live-text", text);
  }

  let timer = null;
  let inflight = false;
  async function poll(now) {
    if (timer) { clearTimeout(timer); timer = null; }
    if (inflight && !now) return;
    inflight = true;
    try {
      const q = state.picked && state.selected ? `?run=${encodeURIComponent(state.selected)}` : "";
      const res = await fetch(`/api/overview${q}`, { cache: "no-store", credentials: "same-origin" });
      if (!res.ok) throw new Error(`${res.status} ${res.statusText}`);
      const data = await res.json();
      state.skew = data.now - Date.now() / 1000;
      state.selected = data.selected;
      state.last = data;
      renderRuns(data.runs || [], data.selected);
      renderRun(data.run);
      renderFleet(data.fleet || {}, data.run);
      state.polls += 1;
      setLive(true, `live · ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setLive(false, `offline · ${err.message || err}`);
    } finally {
      inflight = false;
      timer = setTimeout(poll, POLL_MS);
    }
  }

  showTab();
  poll(true);
})();
