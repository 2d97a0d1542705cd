// Providers: per deployment, circuit state, attempt rate, errors by outcome, latency p50/p99.
import * as api from "./api.js";
import { badge, el, label, ms, when } from "./util.js";

export function render({ main }, _path, query) {
  const minutes = query.get("minutes") || "15";
  const out = el("div", { "aria-live": "polite" }, el("p", { class: "muted" }, "Loading…"));
  const m = el("select", { id: "p-m" }, ["5", "15", "60", "1440"].map((v) => el("option", { value: v, selected: v === minutes }, `last ${v} min`)));
  const form = el("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); location.hash = `#/providers/?minutes=${m.value}`; } },
    el("label", { for: "p-m" }, "Window", m), el("button", { type: "submit", class: "primary" }, "Show"));
  main.replaceChildren(el("h1", {}, "Providers"),
    el("p", { class: "muted" }, "From the router's usage records: every attempt, failed ones and circuit-open refusals included."),
    form, out);
  let stopped = false;
  async function load() {
    try {
      const { providers } = await api.get("/api/providers", { minutes });
      if (stopped) return;
      out.replaceChildren(el("table", { "aria-label": "Deployments" },
        el("thead", {}, el("tr", {}, ["Deployment", "Circuit", "Attempts", "Per minute", "Error rate", "Errors by outcome", "p50", "p99", "Last"].map(
          (h, i) => el("th", { scope: "col", class: [2, 3, 4, 6, 7].includes(i) ? "num" : null }, h)))),
        el("tbody", {}, providers.length ? providers.map((p) => el("tr", { "data-deployment": p.deployment },
          el("td", {}, el("span", { class: "mono" }, p.deployment), el("br"), el("span", { class: "muted" }, `${p.provider} · ${p.model}`)),
          el("td", {}, badge("c", p.circuit)),
          el("td", { class: "num" }, p.attempts),
          el("td", { class: "num" }, p.per_minute.toFixed(2)),
          el("td", { class: "num" }, `${(p.error_rate * 100).toFixed(1)} %`),
          el("td", {}, Object.entries(p.errors_by_outcome).map(([k, v]) => `${label(k)} ${v}`).join(", ") || "–"),
          el("td", { class: "num" }, ms(p.latency_p50_ms)),
          el("td", { class: "num" }, ms(p.latency_p99_ms)),
          el("td", {}, label(p.last_outcome), el("br"), el("span", { class: "muted" }, when(p.last_at)))))
          : el("tr", {}, el("td", { colspan: 9, class: "muted" }, "no model attempts in this window")))));
    } catch (error) {
      out.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    }
  }
  load();
  const timer = setInterval(load, 5000);
  return () => { stopped = true; clearInterval(timer); };
}
