// Runs: a filterable, paginated list; a form to submit a goal.
import * as api from "./api.js";
import { badge, el, fill, money, ms, say, when } from "./util.js";

const STATUSES = ["", "queued", "running", "awaiting_approval", "wrapping_up", "completed", "failed", "cancelled"];

function row(r) {
  return el("tr", {},
    el("td", {}, badge("s", r.status)),
    el("td", {}, el("a", { href: `#/run/${encodeURIComponent(r.run_id)}`, class: "mono" }, r.run_id)),
    el("td", {}, r.agent),
    el("td", {}, r.goal.length > 80 ? r.goal.slice(0, 80) + "…" : r.goal),
    el("td", { class: "num" }, money(r.cost, r.currency)),
    el("td", { class: "num" }, r.steps),
    el("td", { class: "num" }, r.duration_ms == null ? "–" : ms(r.duration_ms)),
    el("td", {}, when(r.started_at)));
}

export function render({ me, main }, _path, query) {
  const filters = {
    status: query.get("status") || "",
    agent: query.get("agent") || "",
    since: query.get("since") || "",
    limit: query.get("limit") || "50",
  };
  const tbody = el("tbody");
  const more = el("button", { type: "button", hidden: true }, "Next page");
  const count = el("p", { class: "muted", "aria-live": "polite" });
  let cursor = "";
  let shown = 0;
  let stopped = false;

  async function load(append) {
    const started = performance.now();
    try {
      const since = filters.since ? new Date(filters.since).toISOString() : "";
      const page = await api.get("/api/runs", { ...filters, since, cursor: append ? cursor : "" });
      if (stopped) return;
      const fragment = document.createDocumentFragment();
      for (const r of page.runs) fragment.append(row(r));
      if (append) tbody.append(fragment); else tbody.replaceChildren(fragment);
      shown = (append ? shown : 0) + page.runs.length;
      cursor = page.next_cursor;
      more.hidden = !cursor;
      const took = Math.round(performance.now() - started);
      count.textContent = `${shown} run${shown === 1 ? "" : "s"} shown${cursor ? ", more available" : ""} (${took} ms)`;
      main.dataset.rendered = String(took);
    } catch (error) {
      count.textContent = error.message;
    }
  }

  const status = el("select", { id: "f-status", name: "status" },
    STATUSES.map((s) => el("option", { value: s, selected: s === filters.status }, s ? s.replaceAll("_", " ") : "any")));
  const agent = el("input", { id: "f-agent", name: "agent", value: filters.agent, placeholder: "any", size: 12 });
  const since = el("input", { id: "f-since", name: "since", type: "datetime-local", value: filters.since });
  const limit = el("select", { id: "f-limit", name: "limit" },
    ["50", "200", "1000"].map((n) => el("option", { value: n, selected: n === filters.limit }, n)));
  const form = el("form", { class: "filters", role: "search", onsubmit: (e) => {
    e.preventDefault();
    const q = new URLSearchParams({ status: status.value, agent: agent.value.trim(), since: since.value, limit: limit.value });
    for (const [k, v] of [...q]) if (!v) q.delete(k);
    location.hash = `#/runs/?${q}`;
  } },
    el("label", { for: "f-status" }, "Status", status),
    el("label", { for: "f-agent" }, "Agent", agent),
    el("label", { for: "f-since" }, "Started since", since),
    el("label", { for: "f-limit" }, "Per page", limit),
    el("button", { type: "submit", class: "primary" }, "Filter"));
  more.addEventListener("click", () => load(true));

  const submit = me.scopes.includes("goals:submit") || me.scopes.includes("admin") ? submitForm() : null;
  fill(main,
    el("h1", {}, "Runs"),
    submit,
    form,
    count,
    el("table", { "aria-label": "Runs", class: "runs" },
      el("colgroup", {}, ["9em", "24em", "8em", "auto", "7em", "4em", "6em", "12em"].map((w) => el("col", { style: `width: ${w}` }))),
      el("thead", {}, el("tr", {}, ["Status", "Run", "Agent", "Goal", "Cost", "Steps", "Duration", "Started"].map(
        (h, i) => el("th", { scope: "col", class: i >= 4 && i <= 6 ? "num" : null }, h)))),
      tbody),
    el("p", {}, more));
  load(false);
  const timer = setInterval(() => { if (!cursor && shown <= 200) load(false); }, 5000);
  return () => { stopped = true; clearInterval(timer); };
}

function submitForm() {
  const goal = el("input", { id: "n-goal", name: "goal", required: true, size: 60, placeholder: "What should the agent do?" });
  const agent = el("input", { id: "n-agent", name: "agent", value: "support", size: 12, required: true });
  return el("details", { class: "card" }, el("summary", {}, "New run"),
    el("form", { class: "inline", onsubmit: async (e) => {
      e.preventDefault();
      try {
        const { run_id } = await api.post("/api/runs", { goal: goal.value, agent: agent.value });
        say(`Submitted ${run_id}`);
        location.hash = `#/run/${encodeURIComponent(run_id)}`;
      } catch (error) { say(error.message); }
    } },
      el("label", { for: "n-goal" }, "Goal", goal),
      el("label", { for: "n-agent" }, "Agent", agent),
      el("button", { type: "submit", class: "primary" }, "Submit")));
}
