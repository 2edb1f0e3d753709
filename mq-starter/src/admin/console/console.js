// The mq web console: a static page over the admin API (/mq/api/*). Everything shown comes
// from the API and goes into the page as text (textContent), never as markup.
"use strict";

(function () {
  // Relative to this script, so the console works wherever the admin router is mounted.
  const API = new URL("api/", new URL(".", document.currentScript.src));
  const TOKEN_KEY = "mq.admin.token";
  const DLQ_PAGE = 50;

  const $ = (id) => document.getElementById(id);

  /** An answer of the admin API other than 2xx, or no answer at all (status 0). */
  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body;
    }
  }

  /** A path of encoded segments: names may hold `%`, `/` or spaces (`%RETRY%g%t`). */
  function path(...segments) {
    return segments.map((s) => encodeURIComponent(String(s))).join("/");
  }

  async function api(method, relative, body) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(new URL(relative, API), init);
    } catch (e) {
      throw new ApiError(0, "unreachable", "cannot reach the admin API: " + e.message, null);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch (_) {
        data = null;
      }
    }
    if (!res.ok) {
      const err = data && data.error;
      const code = (err && err.code) || "http_" + res.status;
      const message = (err && err.message) || (res.status + " " + res.statusText).trim();
      throw new ApiError(res.status, code, message, data);
    }
    return data;
  }

  // --- messages to the operator -----------------------------------------------------------

  function showError(e) {
    const el = $("error");
    el.textContent = e instanceof ApiError ? e.code + ": " + e.message : String(e);
    el.hidden = false;
  }

  function showStatus(text) {
    const el = $("status");
    el.textContent = text;
    el.hidden = false;
  }

  function clearMessages() {
    $("error").hidden = true;
    $("error").textContent = "";
    $("status").hidden = true;
    $("status").textContent = "";
  }

  // The action a 401 interrupted, run again once a token is given.
  let pending = null;

  /** Runs an action of the page; a 401 asks for the token, other failures are shown. */
  async function run(action) {
    try {
      await action();
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        pending = action;
        $("token-form").hidden = false;
        showError(e);
        $("token-input").focus();
      } else {
        showError(e);
      }
    }
  }

  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    clearMessages();
    const again = pending || route;
    pending = null;
    run(again);
  });

  // --- building tables --------------------------------------------------------------------

  function text(v) {
    if (v === null || v === undefined) return "–";
    if (Array.isArray(v)) return v.length ? v.map(text).join(", ") : "–";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }

  function time(ms) {
    return typeof ms === "number" && ms > 0 ? new Date(ms).toISOString() : "–";
  }

  function cell(tr, col, value, cls) {
    const td = document.createElement("td");
    td.dataset.col = col;
    td.textContent = text(value);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function button(label, testid, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.dataset.testid = testid;
    b.addEventListener("click", () => run(() => onClick(b)));
    return b;
  }

  function buttonCell(tr, ...buttons) {
    const td = document.createElement("td");
    td.className = "actions";
    buttons.forEach((b) => td.appendChild(b));
    tr.appendChild(td);
  }

  /** Replaces the body rows of a table; `fill(tr, item)` adds the cells of one row. */
  function fillTable(tableId, items, testid, fill) {
    const table = $(tableId);
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    if (!items.length) {
      const tr = document.createElement("tr");
      tr.dataset.testid = "empty";
      const td = document.createElement("td");
      td.colSpan = table.tHead.rows[0].cells.length;
      td.className = "empty";
      td.textContent = "none";
      tr.appendChild(td);
      tbody.appendChild(tr);
      return;
    }
    for (const item of items) {
      const tr = document.createElement("tr");
      tr.dataset.testid = testid;
      fill(tr, item);
      tbody.appendChild(tr);
    }
  }

  const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const isNested = (v) => isObject(v) || (Array.isArray(v) && v.some((x) => x !== null && typeof x === "object"));

  /** Shows any JSON value (the trace): arrays of objects as tables, objects as key/value tables. */
  function renderValue(value) {
    if (Array.isArray(value) && value.length && value.every(isObject)) {
      const keys = [];
      value.forEach((v) => Object.keys(v).forEach((k) => keys.includes(k) || keys.push(k)));
      const table = document.createElement("table");
      const head = table.createTHead().insertRow();
      keys.forEach((k) => {
        const th = document.createElement("th");
        th.textContent = k;
        head.appendChild(th);
      });
      const body = table.createTBody();
      value.forEach((v) => {
        const tr = body.insertRow();
        tr.dataset.testid = "value-row";
        keys.forEach((k) => {
          const td = tr.insertCell();
          td.dataset.col = k;
          td.appendChild(renderMember(k, v[k]));
        });
      });
      return table;
    }
    if (Array.isArray(value) && isNested(value)) {
      const list = document.createElement("ol");
      value.forEach((v) => list.appendChild(document.createElement("li")).appendChild(renderMember("", v)));
      return list;
    }
    if (isObject(value)) {
      const table = document.createElement("table");
      table.className = "kv";
      const body = table.createTBody();
      Object.keys(value).forEach((k) => {
        const tr = body.insertRow();
        tr.dataset.key = k;
        const th = document.createElement("th");
        th.textContent = k;
        tr.appendChild(th);
        tr.insertCell().appendChild(renderMember(k, value[k]));
      });
      return table;
    }
    return renderMember("", value);
  }

  /** A member of a document: nested values as above, plain ones as text (times readable). */
  function renderMember(key, v) {
    if (isNested(v)) return renderValue(v);
    const span = document.createElement("span");
    const isTime = typeof v === "number" && (key.endsWith("_ms") || key.endsWith("timestamp")) && v > 1e11;
    span.textContent = isTime ? time(v) : text(v);
    return span;
  }

  // --- views ------------------------------------------------------------------------------

  const views = ["topics", "groups", "listeners", "dead-letters", "messages"];

  async function topicsView() {
    const topics = await api("GET", "topics");
    fillTable("topics-table", topics, "topic-row", (tr, t) => {
      tr.dataset.topic = t.topic;
      cell(tr, "topic", t.topic);
      cell(tr, "kind", t.kind);
      cell(tr, "queues", t.queues, "num");
      cell(tr, "messages", t.messages, "num");
    });
  }

  async function groupsView(group) {
    const groups = await api("GET", "groups");
    fillTable("groups-table", groups, "group-row", (tr, g) => {
      tr.dataset.group = g.group;
      cell(tr, "group", g.group);
      cell(tr, "model", g.model);
      cell(tr, "members", g.members);
      cell(tr, "lag", g.lag, "num");
      buttonCell(tr, button("Queues", "group-open", async () => {
        location.hash = "#groups/" + encodeURIComponent(g.group);
      }));
    });
    $("group-detail").hidden = group === undefined;
    if (group === undefined) return;
    const stats = await api("GET", path("groups", group));
    $("group-detail-name").textContent = stats.group;
    $("group-detail-summary").textContent =
      "model " + text(stats.model) + " · members " + text(stats.members);
    fillTable("group-queues-table", stats.queues, "group-queue-row", (tr, q) => {
      tr.dataset.topic = q.topic;
      tr.dataset.queue = q.queue_id;
      cell(tr, "topic", q.topic);
      cell(tr, "queue_id", q.queue_id, "num");
      cell(tr, "instance", q.instance);
      cell(tr, "committed", q.committed, "num");
      cell(tr, "max_offset", q.max_offset, "num");
      cell(tr, "lag", q.lag, "num");
      cell(tr, "owner", q.owner);
    });
  }

  async function listenersView() {
    const rows = await api("GET", "listeners");
    fillTable("listeners-table", rows, "listener-row", (tr, l) => {
      tr.dataset.listener = l.name;
      tr.dataset.topic = l.topic;
      cell(tr, "name", l.name);
      cell(tr, "topic", l.topic);
      cell(tr, "group", l.group);
      cell(tr, "model", l.model);
      cell(tr, "mode", l.mode);
      cell(tr, "concurrency", l.concurrency, "num");
      cell(tr, "batch", l.batch, "num");
      cell(tr, "in_flight", l.in_flight, "num");
      cell(tr, "assignment", l.assignment);
      cell(tr, "state", l.state, "state-" + l.state);
      const paused = l.state === "paused";
      buttonCell(tr, button(paused ? "Resume" : "Pause", paused ? "listener-resume" : "listener-pause", async () => {
        await api("POST", path("listeners", l.name, paused ? "resume" : "pause"));
        await listenersView();
        showStatus((paused ? "Resumed " : "Paused ") + l.name);
      }));
    });
  }

  // Where the dead-letter page of the open group starts.
  let dlqFrom = 0;

  async function deadLettersView(group) {
    const counts = await api("GET", "dead-letters");
    fillTable("dlq-groups-table", counts, "dlq-group-row", (tr, c) => {
      tr.dataset.group = c.group;
      cell(tr, "group", c.group);
      cell(tr, "count", c.count, "num");
      buttonCell(tr, button("Open", "dlq-open", async () => {
        dlqFrom = 0;
        const hash = "#dead-letters/" + encodeURIComponent(c.group);
        if (location.hash === hash) await deadLettersView(c.group);
        else location.hash = hash;
      }));
    });
    $("dlq-detail").hidden = group === undefined;
    // A shown dead letter may have been resent or deleted since: show it again on demand.
    $("dlq-item").hidden = true;
    if (group === undefined) return;
    $("dlq-group-name").textContent = group;
    const page = await api("GET", path("dead-letters", group) + "?from=" + dlqFrom + "&limit=" + DLQ_PAGE);
    fillTable("dlq-items-table", page.items, "dlq-row", (tr, d) => {
      tr.dataset.seq = d.seq;
      cell(tr, "seq", d.seq, "num");
      cell(tr, "topic", d.topic);
      cell(tr, "message_id", d.message_id, "mono");
      cell(tr, "keys", d.keys);
      cell(tr, "tag", d.tag);
      cell(tr, "attempts", d.attempts, "num");
      cell(tr, "last_failure", time(d.last_failure_ms));
      cell(tr, "last_error", d.last_error);
      buttonCell(
        tr,
        button("Show", "dlq-show", async () => showDeadLetter(group, d.seq)),
        button("Resend", "dlq-resend", async () => {
          const r = await api("POST", path("dead-letters", group, d.seq, "resend"));
          await deadLettersView(group);
          showStatus("Resent " + r.resent + " dead letter (seq " + d.seq + ") of " + group);
        }),
        button("Delete", "dlq-delete", async (b) => {
          // A second click confirms: a deleted dead letter is gone for good.
          if (b.dataset.armed !== "true") {
            b.dataset.armed = "true";
            b.textContent = "Really delete?";
            return;
          }
          const r = await api("DELETE", path("dead-letters", group, d.seq));
          await deadLettersView(group);
          showStatus("Deleted " + r.deleted + " dead letter (seq " + d.seq + ") of " + group);
        }),
      );
    });
    $("dlq-next").hidden = page.next === null || page.next === undefined;
    $("dlq-next").dataset.from = page.next === null || page.next === undefined ? "" : page.next;
  }

  async function showDeadLetter(group, seq) {
    const d = await api("GET", path("dead-letters", group, seq));
    const panel = $("dlq-item");
    panel.replaceChildren(renderValue(d));
    panel.dataset.seq = d.seq;
    panel.hidden = false;
  }

  $("dlq-resend-all").addEventListener("click", () =>
    run(async () => {
      const group = $("dlq-group-name").textContent;
      const r = await api("POST", path("dead-letters", group, "resend"));
      await deadLettersView(group);
      showStatus("Resent " + r.resent + " dead letter(s) of " + group);
    }),
  );
  $("dlq-next").addEventListener("click", () =>
    run(async () => {
      dlqFrom = Number($("dlq-next").dataset.from);
      await deadLettersView($("dlq-group-name").textContent);
    }),
  );
  $("dlq-first").addEventListener("click", () =>
    run(async () => {
      dlqFrom = 0;
      await deadLettersView($("dlq-group-name").textContent);
    }),
  );

  function fillMessages(messages) {
    $("search-results-table").hidden = false;
    fillTable("search-results-table", messages, "message-row", (tr, m) => {
      tr.dataset.messageId = m.message_id;
      tr.dataset.topic = m.topic;
      cell(tr, "message_id", m.message_id, "mono");
      cell(tr, "topic", m.topic);
      cell(tr, "tag", m.tag);
      cell(tr, "keys", m.keys);
      cell(tr, "queue_id", m.queue_id, "num");
      // A copy waiting in the schedule has no offset yet; it shows when it falls due.
      const waiting = m.due_ms !== undefined && m.due_ms !== null;
      if (waiting) tr.dataset.waiting = "true";
      cell(tr, "queue_offset", waiting ? null : m.queue_offset, "num");
      cell(tr, "store_timestamp", waiting ? "due " + time(m.due_ms) : time(m.store_timestamp));
      cell(tr, "reconsume_times", m.reconsume_times, "num");
      cell(tr, "body", m.body, "body");
      buttonCell(tr, button("Trace", "message-trace", async () => showTrace(m.message_id)));
    });
  }

  // Members of a trace event with columns of their own; the rest goes to "detail".
  const TRACE_COLUMNS = ["message_id", "at_ms", "kind", "topic", "queue_id", "queue_offset", "group", "attempt", "outcome", "copy"];

  /** A trace (`{"message_id","events":[..]}`) as one row per event; anything else as is. */
  function renderTrace(trace) {
    if (!trace || !Array.isArray(trace.events)) return renderValue(trace);
    const table = document.createElement("table");
    table.id = "trace-table";
    const head = table.createTHead().insertRow();
    ["Time", "Event", "Topic", "Queue", "Offset", "Group", "Attempt", "Outcome", "Detail"].forEach((h) => {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    });
    const body = table.createTBody();
    trace.events.forEach((e) => {
      const tr = body.insertRow();
      tr.dataset.testid = "trace-row";
      tr.dataset.kind = e.kind;
      let outcome = e.copy;
      if (isObject(e.outcome)) {
        const rest = Object.entries(e.outcome).filter(([k]) => k !== "type").map(([k, v]) => k + "=" + text(v));
        outcome = e.outcome.type + (rest.length ? " (" + rest.join(", ") + ")" : "");
      } else if (e.outcome !== undefined) {
        outcome = e.outcome;
      }
      const detail = Object.entries(e)
        .filter(([k]) => !TRACE_COLUMNS.includes(k))
        .map(([k, v]) => k + "=" + (typeof v === "number" && k.endsWith("_ms") && v > 1e11 ? time(v) : text(v)));
      cell(tr, "at_ms", time(e.at_ms));
      cell(tr, "kind", e.kind);
      cell(tr, "topic", e.topic);
      cell(tr, "queue_id", e.queue_id, "num");
      cell(tr, "queue_offset", e.queue_offset, "num");
      cell(tr, "group", e.group);
      cell(tr, "attempt", e.attempt, "num");
      cell(tr, "outcome", outcome);
      cell(tr, "detail", detail.join(" "));
    });
    return table;
  }

  async function showTrace(id) {
    $("trace").hidden = true;
    const trace = await api("GET", path("messages", id, "trace"));
    $("trace-id").textContent = id;
    $("trace-body").replaceChildren(renderTrace(trace));
    $("trace").hidden = false;
  }

  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearMessages();
    run(async () => {
      const q = $("search-input").value.trim();
      $("search-results-table").hidden = true;
      $("trace").hidden = true;
      if ($("search-by-key").checked) {
        fillMessages(await api("GET", "messages?key=" + encodeURIComponent(q) + "&limit=" + DLQ_PAGE));
      } else {
        fillMessages(await api("GET", path("messages", q)));
        await showTrace(q);
      }
    });
  });

  // --- navigation -------------------------------------------------------------------------

  async function health() {
    const badge = $("health");
    let h;
    try {
      h = await api("GET", "health");
    } catch (e) {
      // 503 carries the same document, with the failing component's error.
      if (!(e instanceof ApiError && e.body && e.body.status)) throw e;
      h = e.body;
    }
    const down = Object.entries(h.components || {})
      .filter(([, c]) => c.status !== "UP")
      .map(([name, c]) => name + ": " + (c.error || c.status));
    const broker = h.components && h.components.broker;
    badge.textContent = h.status + (broker && broker.backend ? " · " + broker.backend : "") + (down.length ? " · " + down.join("; ") : "");
    badge.className = "badge " + (h.status === "UP" ? "up" : "down");
  }

  async function route() {
    const [name, ...rest] = (location.hash.replace(/^#/, "") || "topics").split("/");
    const view = views.includes(name) ? name : "topics";
    const arg = rest.length ? decodeURIComponent(rest.join("/")) : undefined;
    views.forEach((v) => {
      $("view-" + v).hidden = v !== view;
      $("nav-" + v).classList.toggle("active", v === view);
    });
    if (view === "topics") await topicsView();
    if (view === "groups") await groupsView(arg);
    if (view === "listeners") await listenersView();
    if (view === "dead-letters") await deadLettersView(arg);
    await health();
  }

  window.addEventListener("hashchange", () => {
    clearMessages();
    run(route);
  });
  $("refresh").addEventListener("click", () => {
    clearMessages();
    run(route);
  });
  run(route);
})();
