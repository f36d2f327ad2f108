// The orchestrator's web view: plain JavaScript modules, no framework, no build step. Everything
// it shows comes from the API (the same routes /docs describes); live parts follow the event
// streams. Served from files inside the binary.
// @ts-check

const $ = (sel, root = document) => root.querySelector(sel);
const main = /** @type {HTMLElement} */ ($("#main"));
const live = /** @type {HTMLElement} */ ($("#live"));
const TERMINAL = ["COMPLETED", "COMPENSATED", "CANCELLED", "FAILED"];
const STATUSES = ["STARTED", "COMPLETED", "COMPENSATING", "COMPENSATED", "CANCELLING", "CANCELLED", "FAILED"];
/** The create-order saga's test behaviours: the customer id's prefix decides the path. */
const BEHAVIOURS = [
  ["", "every step succeeds (COMPLETED)"],
  ["nocard-", "no payment method (COMPENSATED)"],
  ["declined-", "payment declined (COMPENSATED)"],
  ["noupdate-", "order cannot be confirmed (COMPENSATED, both compensations)"],
  ["noorder-", "order cannot be created (COMPENSATED, nothing to undo)"],
];

/** Builds an element: h("td", {class: "x"}, child, "text"). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const svgNs = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(svgNs, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// ---- the API ------------------------------------------------------------------------------

let token = sessionStorage.getItem("saga-token") || "";

/** The API's refusal, in its own words. */
class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(extra = {}) {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
}

/** Asks for a token (the API said 401) and keeps it for this tab. */
function askToken(why) {
  const dialog = /** @type {HTMLDialogElement} */ ($("#token-dialog"));
  $("#token-why").textContent = why;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      token = /** @type {HTMLInputElement} */ ($("#token-input")).value.trim();
      sessionStorage.setItem("saga-token", token);
      resolve(undefined);
    }, { once: true });
    if (!dialog.open) dialog.showModal();
  });
}

async function api(path, opts = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const r = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
    if (r.status === 401) {
      const body = await r.json().catch(() => ({}));
      await askToken(body.error || "The API needs a bearer token.");
      continue;
    }
    const text = await r.text();
    const body = text ? JSON.parse(text) : null;
    if (!r.ok) throw new ApiError(r.status, (body && body.error) || r.statusText);
    return { body, headers: r.headers };
  }
  throw new ApiError(401, "no valid token");
}

/**
 * Follows an event stream, reconnecting after the last event id it saw, until `stop` aborts, the
 * server ends it for good (204), or `finished()` says there is nothing more to follow (a saga that
 * has ended: its stream closes after the end, which is no reason to say "reconnecting").
 */
async function follow(path, onEvent, stop, { reconnect = true, finished = () => false } = {}) {
  let lastId = "";
  while (!stop.aborted) {
    try {
      const r = await fetch(path, {
        headers: headers(lastId ? { "last-event-id": lastId, accept: "text/event-stream" } : { accept: "text/event-stream" }),
        signal: stop,
      });
      if (r.status === 401) {
        await askToken("The event stream needs a bearer token.");
        continue;
      }
      if (r.status === 204 || !r.ok || !r.body) return;
      live.textContent = "live";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let event = "message", data = "", id = null;
          for (const line of block.split("\n")) {
            if (line.startsWith(":")) continue;
            const [field, ...rest] = line.split(":");
            const v = rest.join(":").replace(/^ /, "");
            if (field === "event") event = v;
            else if (field === "data") data += (data ? "\n" : "") + v;
            else if (field === "id") id = v;
          }
          if (id !== null) lastId = id;
          if (data) onEvent(event, JSON.parse(data));
        }
      }
      if (!reconnect || finished()) return;
    } catch (e) {
      if (stop.aborted) return;
    }
    live.textContent = "reconnecting…";
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- small helpers ------------------------------------------------------------------------

const ms = (t) => (t ? Date.parse(t) : NaN);
function duration(d) {
  if (!isFinite(d)) return "";
  if (d < 1000) return `${Math.max(0, Math.round(d))} ms`;
  if (d < 60000) return `${(d / 1000).toFixed(1)} s`;
  return `${Math.floor(d / 60000)} min ${Math.round((d % 60000) / 1000)} s`;
}
const clock = (t) => (t ? new Date(t).toLocaleTimeString([], { hour12: false }) + "." + String(new Date(t).getMilliseconds()).padStart(3, "0") : "");
const statusEl = (st) => h("span", { class: `status s-${st}` }, st);
function errorBox(e) {
  return h("p", { class: "notice bad", role: "alert" }, e instanceof ApiError ? `The API refused: ${e.message}` : `Could not reach the API: ${e.message}`);
}

/** Everything a view opened (streams, timers), closed when the view changes. */
let viewStop = new AbortController();

// ---- the saga list --------------------------------------------------------------------------

async function listView(params) {
  const stop = viewStop.signal;
  const types = (await api("/saga-types")).body;
  const form = h("form", { class: "filters", role: "search", "aria-label": "Filter sagas" },
    h("div", {}, h("label", { for: "f-status" }, "Status"),
      h("select", { id: "f-status", name: "status" }, h("option", { value: "" }, "any"),
        STATUSES.map((st) => h("option", { value: st, selected: params.get("status") === st }, st)))),
    h("div", {}, h("label", { for: "f-type" }, "Type"),
      h("select", { id: "f-type", name: "type" }, h("option", { value: "" }, "any"),
        types.map((t) => h("option", { value: t.saga_type, selected: params.get("type") === t.saga_type }, t.saga_type)))),
    h("div", {}, h("label", { for: "f-search" }, "Id, customer, order…"),
      h("input", { id: "f-search", name: "search", type: "search", value: params.get("search") || "" })),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) q.set(k, String(v));
    location.hash = `#/?${q}`;
  });
  const table = h("table", { "aria-label": "Sagas" });
  const pager = h("div", { class: "pager" });
  main.replaceChildren(h("h1", {}, "Sagas"), form, table, pager);

  let cursor = params.get("cursor") || "";
  const load = async () => {
    const q = new URLSearchParams({ limit: "25" });
    for (const k of ["status", "type", "search"]) if (params.get(k)) q.set(k, params.get(k));
    if (cursor) q.set("cursor", cursor);
    try {
      const { body, headers: hs } = await api(`/sagas?${q}`);
      table.replaceChildren(
        h("thead", {}, h("tr", {}, h("th", {}, "Saga"), h("th", {}, "Type"), h("th", {}, "Status"),
          h("th", { class: "hide-sm" }, "Step"), h("th", { class: "hide-sm" }, "Customer"), h("th", { class: "hide-sm" }, "Started"))),
        h("tbody", {}, body.length ? body.map((sg) => h("tr", { "data-saga": sg.saga_id },
          h("td", {}, h("a", { href: `#/sagas/${sg.saga_id}` }, sg.saga_id)),
          h("td", {}, sg.saga_type), h("td", {}, statusEl(sg.status)),
          h("td", { class: "hide-sm" }, sg.current_step || "–"),
          h("td", { class: "hide-sm" }, (sg.context && sg.context.customer_id) || "–"),
          h("td", { class: "hide-sm" }, new Date(sg.created_at).toLocaleString()))) : h("tr", {}, h("td", { colspan: 6 }, "No sagas match."))));
      const next = (hs.get("link") || "").match(/cursor=([^&>]+)/);
      pager.replaceChildren(
        cursor ? h("button", { class: "secondary", type: "button", onclick: () => { cursor = ""; load(); } }, "First page") : "",
        next ? h("button", { class: "secondary", type: "button", onclick: () => { cursor = decodeURIComponent(next[1]); load(); } }, "Next page") : "");
    } catch (e) {
      table.replaceChildren(h("caption", {}, errorBox(e)));
    }
  };
  await load();
  // Live: any change of a matching saga reloads the page shown (at most every 300 ms).
  let pending = null;
  const q = new URLSearchParams();
  if (params.get("type")) q.set("type", params.get("type"));
  follow(`/events?${q}`, () => {
    if (pending || cursor) return;
    pending = setTimeout(() => { pending = null; if (!stop.aborted) load(); }, 300);
  }, stop);
}

// ---- a saga -------------------------------------------------------------------------------

/** Each step's state for the diagram: pending, waiting, done, failed, compensating, compensated. */
function stepStates(saga) {
  const states = {};
  for (const r of saga.steps) {
    const step = r.step || r.name;
    const st = (states[step] ||= { forward: "pending", compensation: "none" });
    if (r.kind === "forward") {
      st.forward = r.status === "COMPLETED" ? "done" : r.status === "FAILED" ? "failed" : "waiting";
      st.since = r.started_at;
    } else {
      st.compensation = r.status === "COMPLETED" ? "compensated" : r.status === "FAILED" ? "compensation failed" : "compensating";
      st.compensationName = r.name;
    }
  }
  return states;
}

const COLORS = { pending: "#ffffff", waiting: "#d9e8fb", done: "#d6f0de", failed: "#f8d7d5", compensating: "#fdebd0", compensated: "#fdebd0", "compensation failed": "#f8d7d5", none: "#ffffff" };

/** The definition drawn: stages left to right, a parallel group's steps stacked, each step's compensation under it. */
function diagram(type, saga) {
  const states = saga ? stepStates(saga) : {};
  const stages = [];
  for (const st of type.steps) {
    const last = stages[stages.length - 1];
    if (st.group && last && last.group === st.group) last.steps.push(st);
    else stages.push({ group: st.group, steps: [st] });
  }
  const W = 170, H = 44, GAP = 34, ROW = 2 * H + 30;
  const rows = Math.max(...stages.map((g) => g.steps.length));
  const svg = s("svg", { width: stages.length * (W + GAP) + 10, height: rows * ROW + 30, role: "img",
    "aria-label": `Diagram of ${type.saga_type}: ${type.steps.map((x) => x.name).join(", ")}` });
  stages.forEach((stage, i) => {
    const x = 5 + i * (W + GAP);
    if (stage.group) svg.append(s("text", { x, y: 12 }, `parallel: ${stage.group}`));
    stage.steps.forEach((st, j) => {
      const y = 20 + j * ROW;
      const state = states[st.name] || { forward: "pending", compensation: "none" };
      const g = s("g", { "data-step": st.name, "data-state": state.forward });
      const label = state.forward === "waiting" && state.since ? `waiting ${duration(Date.now() - ms(state.since))}` : state.forward;
      g.append(s("rect", { x, y, width: W, height: H, rx: 6, fill: COLORS[state.forward], stroke: "#333", "stroke-width": st.role === "pivot" ? 3 : 1 }),
        s("text", { x: x + 8, y: y + 18 }, st.name),
        s("text", { x: x + 8, y: y + 35 }, `${label}${st.role === "pivot" ? " · pivot" : ""}`),
        s("title", {}, `${st.name}: ${st.command.name} on ${st.command.topic}; ${st.role}`));
      svg.append(g);
      if (st.compensation) {
        const cy = y + H + 14;
        const c = s("g", { "data-compensation": st.name, "data-state": state.compensation });
        c.append(s("rect", { x: x + 10, y: cy, width: W - 20, height: H - 8, rx: 6, fill: COLORS[state.compensation], stroke: "#333", "stroke-dasharray": "5 3" }),
          s("text", { x: x + 18, y: cy + 15 }, `undo: ${st.compensation.name}`),
          s("text", { x: x + 18, y: cy + 30 }, state.compensation === "none" ? "not needed" : state.compensation));
        svg.append(c);
      }
      if (i > 0 && j === 0) svg.append(s("line", { x1: x - GAP, y1: y + H / 2, x2: x, y2: y + H / 2, stroke: "#333", "marker-end": "url(#arrow)" }));
    });
  });
  svg.prepend(s("defs", {}, s("marker", { id: "arrow", markerWidth: 8, markerHeight: 8, refX: 7, refY: 4, orient: "auto" }, s("path", { d: "M0,0 L8,4 L0,8 z", fill: "#333" }))));
  return h("div", { class: "diagram" }, svg,
    h("p", { class: "legend" }, "white: not yet · blue: waiting · green: done · red: failed · orange: undone (dashed: compensations) · thick border: pivot"));
}

/** Every sending, re-send, reply and compensation, in time order, with how long each took. */
function timeline(saga) {
  const start = ms(saga.created_at);
  const rows = [];
  for (const r of saga.steps) {
    r.history.forEach((a, i) => {
      const next = r.history[i + 1];
      const end = next ? ms(next.sent_at) : ms(r.finished_at);
      const who = r.kind === "compensation" ? `undo ${r.name}` : r.name;
      const verb = a.attempt > 1 ? `re-sent (attempt ${a.attempt})` : "sent";
      const outcome = a.outcome ? `${a.outcome}${isFinite(end) ? ` after ${duration(end - ms(a.sent_at))}` : ""}` : `waiting for ${duration(Date.now() - ms(a.sent_at))}`;
      rows.push({ at: ms(a.sent_at), el: h("li", { "data-kind": r.kind, "data-outcome": a.outcome || "waiting" },
        h("time", { datetime: a.sent_at }, `+${duration(ms(a.sent_at) - start)} ${clock(a.sent_at)}`), " ",
        h("strong", {}, who), ` ${verb}: `, a.outcome ? h("span", { class: a.outcome.startsWith("failed") ? "error" : "" }, outcome) : outcome) });
    });
  }
  rows.sort((a, b) => a.at - b.at);
  if (saga.completed_at) rows.push({ at: ms(saga.completed_at), el: h("li", { "data-kind": "end" }, h("time", {}, `+${duration(ms(saga.completed_at) - start)} ${clock(saga.completed_at)}`), " ended ", statusEl(saga.status)) });
  return h("ol", { class: "timeline", "aria-label": "Timeline" }, rows.map((r) => r.el));
}

async function confirmDialog(title, text, yes) {
  const d = /** @type {HTMLDialogElement} */ ($("#confirm-dialog"));
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = yes;
  d.returnValue = "";
  d.showModal();
  return new Promise((r) => d.addEventListener("close", () => r(d.returnValue === "yes"), { once: true }));
}

async function sagaView(id) {
  const stop = viewStop.signal;
  let saga, type;
  try {
    saga = (await api(`/sagas/${encodeURIComponent(id)}`)).body;
    type = (await api(`/saga-types/${saga.saga_type}?version=${saga.definition_version}`)).body;
  } catch (e) {
    main.replaceChildren(h("h1", {}, "Saga"), errorBox(e));
    return;
  }
  const message = h("div", { role: "status", "aria-live": "polite", id: "action-result" });
  const act = (verb) => async () => {
    const what = verb === "cancel" ? "Cancel this saga? Its completed steps are undone." : "Retry the failed compensation?";
    if (!(await confirmDialog(`${verb === "cancel" ? "Cancel" : "Retry"} saga`, what, verb === "cancel" ? "Cancel it" : "Retry"))) return;
    try {
      const { body } = await api(`/sagas/${saga.saga_id}/${verb}`, { method: "POST" });
      message.replaceChildren(h("p", { class: "notice" }, body.message));
      watch();
    } catch (e) {
      message.replaceChildren(errorBox(e));
    }
  };
  const render = () => {
    const waiting = saga.waiting.map((w) => {
      const step = type.steps.find((x) => x.name === w.step || (x.compensation && x.compensation.name === w.step));
      const cmd = step && (step.name === w.step ? step.command : step.compensation.command);
      return h("li", {}, `the reply to ${w.step} (attempt ${w.attempt}${cmd ? `, ${cmd.success} on ${cmd.reply_topic}` : ""}), sent ${clock(w.since)}; re-sent or given up at ${clock(w.deadline_at)}`);
    });
    main.replaceChildren(
      h("h1", {}, `${saga.saga_type} `, statusEl(saga.status)),
      h("p", {}, h("code", {}, saga.saga_id), ` · version ${saga.definition_version} · started ${new Date(saga.created_at).toLocaleString()}`,
        saga.completed_at ? ` · took ${duration(ms(saga.completed_at) - ms(saga.created_at))}` : ""),
      saga.error ? h("p", { class: "notice bad" }, `Why it compensated: ${saga.error}`) : "",
      saga.compensation_error ? h("p", { class: "notice bad" }, `Could not undo: ${saga.compensation_error}`) : "",
      saga.parked ? h("p", { class: "notice bad" }, `Parked: ${saga.parked}`) : "",
      h("div", { class: "actions" },
        h("button", { type: "button", class: "danger", onclick: act("cancel") }, "Cancel saga"),
        saga.status === "FAILED" ? h("button", { type: "button", onclick: act("retry") }, "Retry compensation") : ""),
      message,
      h("h2", {}, "Steps"), diagram(type, saga),
      waiting.length ? h("section", {}, h("h2", {}, "Waiting for"), h("ul", {}, waiting)) : "",
      h("h2", {}, "Timeline"), timeline(saga),
      h("div", { class: "grid" },
        h("section", {}, h("h2", {}, "Input"), h("pre", {}, JSON.stringify(saga.input, null, 2))),
        h("section", {}, h("h2", {}, "Context"), h("pre", {}, JSON.stringify(saga.context, null, 2)))));
    // Keeps the message of the last action across re-renders.
  };
  render();
  let streaming = null;
  const watch = () => {
    if (streaming) return;
    streaming = follow(`/sagas/${saga.saga_id}/events`, (event, data) => {
      if (event === "saga") {
        saga = data;
        render();
      }
    }, stop, { reconnect: true, finished: () => TERMINAL.includes(saga.status) }).finally(async () => {
      streaming = null;
      if (stop.aborted) return;
      // The stream has ended with the saga: show the state as stored, whatever the last event was.
      try {
        saga = (await api(`/sagas/${saga.saga_id}`)).body;
        render();
      } catch (e) { /* the state shown stays */ }
      live.textContent = TERMINAL.includes(saga.status) ? "ended" : "";
    });
  };
  watch();
}

// ---- starting a saga from its input schema -----------------------------------------------------

/** A form control for `schema`, and a function reading its value back (undefined: left empty). */
function control(schema, name, path, required) {
  const id = `in-${path.replace(/[^a-zA-Z0-9_]/g, "-")}`;
  const label = h("label", { for: id }, name, required ? " *" : "");
  const hint = schema.description ? h("span", { class: "hint" }, ` ${schema.description}`) : "";
  if (schema.type === "object") {
    const fields = Object.entries(schema.properties || {}).map(([k, sub]) => ({ k, ...control(sub, k, `${path}.${k}`, (schema.required || []).includes(k)) }));
    return {
      el: h("fieldset", { id }, h("legend", {}, name), fields.map((f) => h("div", { class: "field" }, f.el))),
      read: () => {
        const out = {};
        for (const f of fields) { const v = f.read(); if (v !== undefined) out[f.k] = v; }
        return Object.keys(out).length || required ? out : undefined;
      },
    };
  }
  if (schema.type === "array") {
    const items = [];
    const list = h("div", {});
    const add = () => {
      const item = control(schema.items || { type: "string" }, `${name} ${items.length + 1}`, `${path}.${items.length}`, true);
      items.push(item);
      list.append(h("div", { class: "field" }, item.el));
    };
    for (let i = 0; i < Math.max(1, schema.minItems || 0); i++) add();
    return {
      el: h("div", {}, list, h("button", { type: "button", class: "secondary", onclick: add }, `Add to ${name}`)),
      read: () => items.map((i) => i.read()).filter((v) => v !== undefined),
    };
  }
  if (schema.type === "boolean") {
    const input = h("input", { id, type: "checkbox", name: path });
    return { el: h("div", {}, input, " ", label, hint), read: () => input.checked };
  }
  const numeric = schema.type === "number" || schema.type === "integer";
  const input = h("input", {
    id, name: path, type: numeric ? "number" : "text", required,
    min: schema.minimum, max: schema.maximum, step: schema.type === "integer" ? 1 : numeric ? "any" : undefined,
    maxlength: schema.maxLength, minlength: schema.minLength,
  });
  if (schema.enum) {
    const sel = h("select", { id, name: path, required }, h("option", { value: "" }, "–"), schema.enum.map((v) => h("option", { value: v }, v)));
    return { el: h("div", {}, label, hint, h("br"), sel), read: () => (sel.value === "" ? undefined : sel.value) };
  }
  return {
    el: h("div", {}, label, hint, h("br"), input),
    read: () => (input.value === "" ? undefined : numeric ? Number(input.value) : input.value),
  };
}

async function startView(typeName) {
  const types = (await api("/saga-types")).body;
  const type = types.find((t) => t.saga_type === typeName) || types[0];
  const picker = h("select", { id: "start-type", onchange: (e) => { location.hash = `#/start/${e.target.value}`; } },
    types.map((t) => h("option", { value: t.saga_type, selected: t === type }, t.saga_type)));
  const root = control(type.input_schema, "input", "input", true);
  const result = h("div", { role: "status", "aria-live": "polite" });
  let behaviour = null;
  if (type.saga_type === "create_order") {
    behaviour = h("select", { id: "behaviour" }, BEHAVIOURS.map(([p, what]) => h("option", { value: p }, what)));
  }
  const form = h("form", { "aria-label": `Start ${type.saga_type}` },
    h("div", { class: "field" }, h("label", { for: "start-type" }, "Saga type"), picker),
    h("p", { class: "hint" }, type.description),
    behaviour ? h("div", { class: "field" }, h("label", { for: "behaviour" }, "Test behaviour (prefixes the customer id)"), behaviour) : "",
    Object.keys(type.computed || {}).length ? h("p", { class: "hint" }, `Computed by the orchestrator: ${Object.keys(type.computed).join(", ")}`) : "",
    root.el,
    h("div", { class: "actions" }, h("button", { type: "submit" }, `Start ${type.saga_type}`)), result);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const input = root.read() || {};
    if (behaviour && behaviour.value && typeof input.customer_id === "string" && !input.customer_id.startsWith(behaviour.value)) {
      input.customer_id = behaviour.value + input.customer_id;
    }
    try {
      const { body } = await api(`/sagas/${type.saga_type}`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(input) });
      location.hash = `#/sagas/${body.saga_id}`;
    } catch (err) {
      result.replaceChildren(errorBox(err));
    }
  });
  main.replaceChildren(h("h1", {}, "Start a saga"), form);
}

// ---- saga types and dead letters --------------------------------------------------------------

async function typesView() {
  const types = (await api("/saga-types")).body;
  main.replaceChildren(h("h1", {}, "Saga types"), types.map((t) => h("section", { "data-type": t.saga_type },
    h("h2", {}, `${t.saga_type} (version ${t.version})`), h("p", {}, t.description, " ", h("a", { href: `#/start/${t.saga_type}` }, "Start one")),
    diagram(t, null),
    h("details", {}, h("summary", {}, "Input schema"), h("pre", {}, JSON.stringify(t.input_schema, null, 2))))));
}

async function deadLettersView() {
  const result = h("div", { role: "status", "aria-live": "polite" });
  const table = h("div", {});
  const load = async () => {
    try {
      const letters = (await api("/dead-letters")).body.dead_letters;
      table.replaceChildren(letters.length ? h("pre", {}, JSON.stringify(letters, null, 2)) : h("p", {}, "No dead letters are waiting in the database."));
    } catch (e) {
      table.replaceChildren(errorBox(e));
    }
  };
  const republish = async () => {
    try {
      const { body } = await api("/dead-letters/republish", { method: "POST" });
      result.replaceChildren(h("p", { class: "notice" }, `Republished ${body.published}; ${body.left} left.`));
      load();
    } catch (e) {
      result.replaceChildren(errorBox(e));
    }
  };
  main.replaceChildren(h("h1", {}, "Dead letters"),
    h("p", { class: "hint" }, "Messages that could not be handled and that the dead-letter topic would not take (needs an operator token)."),
    h("div", { class: "actions" }, h("button", { type: "button", onclick: republish }, "Republish to the dead-letter topic")), result, table);
  await load();
}

// ---- routing ------------------------------------------------------------------------------

async function route() {
  viewStop.abort();
  viewStop = new AbortController();
  live.textContent = "";
  const [path, query = ""] = location.hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts[0] === "sagas" && parts[1]) await sagaView(parts[1]);
    else if (parts[0] === "start") await startView(parts[1]);
    else if (parts[0] === "types") await typesView();
    else if (parts[0] === "dead-letters") await deadLettersView();
    else await listView(params);
  } catch (e) {
    main.replaceChildren(errorBox(e));
  }
  main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", route);
route();
