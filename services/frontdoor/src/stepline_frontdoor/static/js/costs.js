// Costs: spend per window (chart) and per tenant, model and tool from billing's rollups (the
// ledger's own figures), per agent from the usage records (billing keeps no agent dimension),
// and the budget as billing last published it.
import * as api from "./api.js";
import { el, money } from "./util.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text != null) node.textContent = text;
  return node;
}

function chart(windows, granularity) {
  const width = 900, height = 180, pad = 28;
  const box = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `Spend per ${granularity}` });
  const max = Math.max(...windows.map((w) => w.cost), 0) || 1;
  const bar = (width - pad * 2) / Math.max(windows.length, 1);
  windows.forEach((w, i) => {
    const h = (w.cost / max) * (height - pad * 2);
    const x = pad + i * bar;
    const rect = svg("rect", { x: x + 1, y: height - pad - h, width: Math.max(bar - 2, 1), height: h });
    rect.append(svg("title", {}, `${w.label}: ${money(w.cost, w.currency)}`));
    box.append(rect);
    if (windows.length <= 24 || i % Math.ceil(windows.length / 12) === 0)
      box.append(svg("text", { x: x + bar / 2, y: height - 8, "text-anchor": "middle" }, w.short));
  });
  box.append(svg("text", { x: 4, y: 14 }, `max ${money(max, windows[0]?.currency)}`));
  return box;
}

function table(title, rows, currency, source) {
  return el("section", {}, el("h2", {}, title, " ", el("span", { class: "muted source" }, source)), el("table", { "aria-label": title },
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Name"), el("th", { scope: "col", class: "num" }, "Calls"),
      el("th", { scope: "col", class: "num" }, "Failures"), el("th", { scope: "col", class: "num" }, "Unpriced"),
      el("th", { scope: "col", class: "num" }, "Cost"))),
    el("tbody", {}, rows.length ? rows.map((r) => el("tr", {}, el("td", { class: "mono" }, r.name || "–"),
      el("td", { class: "num" }, r.calls), el("td", { class: "num" }, r.failures),
      el("td", { class: "num" }, r.unpriced == null ? "–" : r.unpriced), el("td", { class: "num" }, money(r.cost, currency))))
      : el("tr", {}, el("td", { colspan: 5, class: "muted" }, "no usage in this period")))));
}

function by(lines, key) {
  const totals = new Map();
  for (const l of lines) {
    const name = key(l);
    if (name == null) continue;
    const t = totals.get(name) || { name, calls: 0, failures: 0, cost: 0, unpriced: l.unpriced_calls == null ? null : 0 };
    t.calls += l.calls; t.failures += l.failures; t.cost += Number(l.cost);
    if (t.unpriced != null) t.unpriced += l.unpriced_calls;
    totals.set(name, t);
  }
  return [...totals.values()].sort((a, b) => b.cost - a.cost);
}

export function render({ main }, _path, query) {
  const granularity = query.get("granularity") || "hour";
  const days = query.get("days") || "1";
  const out = el("div", { "aria-live": "polite" }, el("p", { class: "muted" }, "Loading…"));
  const g = el("select", { id: "c-g" }, ["hour", "day"].map((v) => el("option", { value: v, selected: v === granularity }, v)));
  const d = el("select", { id: "c-d" }, [["1", "last 24 h"], ["7", "last 7 days"], ["30", "last 30 days"]].map(
    ([v, t]) => el("option", { value: v, selected: v === days }, t)));
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); location.hash = `#/costs/?granularity=${g.value}&days=${d.value}`; } },
    el("label", { for: "c-g" }, "Per", g), el("label", { for: "c-d" }, "Period", d), el("button", { type: "submit", class: "primary" }, "Show"));
  main.replaceChildren(el("h1", {}, "Costs"), form, out);
  let stopped = false;
  async function load() {
    try {
      const since = new Date(Date.now() - Number(days) * 86400000).toISOString();
      const { lines, agents, budget } = await api.get("/api/costs", { granularity, since });
      if (stopped) return;
      const currency = lines[0]?.currency || "USD";
      const windows = by(lines, (l) => l.window_start).map((w) => {
        const dt = new Date(w.name);
        return { ...w, currency, label: dt.toLocaleString(), short: granularity === "hour" ? `${dt.getHours()}h` : `${dt.getMonth() + 1}/${dt.getDate()}` };
      }).sort((a, b) => a.name.localeCompare(b.name));
      const total = lines.reduce((s, l) => s + Number(l.cost), 0);
      const unpriced = lines.reduce((s, l) => s + l.unpriced_calls, 0);
      const period = (name, limit, spent, cur) => `${name} ${money(spent, cur)} of ${limit == null ? "no limit" : money(limit, cur)}`;
      out.replaceChildren(
        budget ? el("p", { class: "card", id: "budget" }, el("strong", {}, "Budget "),
          period("today", budget.daily_limit, budget.daily_spent, budget.currency), " · ",
          period("this month", budget.monthly_limit, budget.monthly_spent, budget.currency),
          budget.exhausted ? el("span", { class: "badge s-failed" }, " exhausted") : "") : el("p", { class: "muted" }, "No budget state from billing yet."),
        el("p", { id: "total" }, el("strong", {}, "Total "), money(total, currency), ` over ${lines.reduce((s, l) => s + l.calls, 0)} attempts and executions`,
          unpriced ? el("span", { class: "badge s-queued" }, ` ${unpriced} unpriced (not in the total)`) : "",
          el("span", { class: "muted" }, " · from billing's ledger rollups")),
        chart(windows, granularity),
        el("div", { class: "grid2" },
          table("Per model", by(lines, (l) => (l.kind === "model" ? l.model : null)), currency, "billing"),
          table("Per tool", by(lines, (l) => (l.kind === "tool" ? l.tool : null)), currency, "billing"),
          table("Per agent", by(agents, (a) => a.agent), currency, "usage records"),
          table("Per tenant", by(lines, (l) => l.tenant_id), currency, "billing")));
    } catch (error) {
      out.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    }
  }
  load();
  const timer = setInterval(load, 10000);
  return () => { stopped = true; clearInterval(timer); };
}
