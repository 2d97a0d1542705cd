// Compare: two runs of the tenant side by side (typically an original and its replay) — the
// figures, each step, the tool calls (same / different arguments / new / missing), the answers.
import * as api from "./api.js";
import { el, fill, money } from "./util.js";

const runLink = (id) => el("a", { href: `#/run/${encodeURIComponent(id)}`, class: "mono" }, id);
const signed = (value) => (Number(value) > 0 ? `+${value}` : String(value));

function figures(d) {
  const rows = [
    ["Outcome", d.a.outcome, d.b.outcome, ""],
    ["Route", d.a.route || "–", d.b.route || "–", ""],
    ["Steps", d.a.steps, d.b.steps, signed(d.b.steps - d.a.steps)],
    ["Tokens in", d.a.tokens_in, d.b.tokens_in, signed(d.delta.tokens_in)],
    ["Tokens out", d.a.tokens_out, d.b.tokens_out, signed(d.delta.tokens_out)],
    ["Cost", money(d.a.cost), money(d.b.cost), signed(d.delta.cost)],
    ["Latency", `${d.a.latency_s} s`, `${d.b.latency_s} s`, `${signed(d.delta.latency_s)} s`],
  ];
  return el("table", { "aria-label": "Figures", id: "figures" },
    el("thead", {}, el("tr", {}, ["", "A", "B", "B − A"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map(([k, a, b, delta]) => el("tr", { "data-figure": k },
      el("th", { scope: "row" }, k), el("td", {}, a), el("td", {}, b), el("td", { class: "num" }, delta)))));
}

function steps(d) {
  return el("table", { "aria-label": "Steps side by side", id: "steps" },
    el("thead", {}, el("tr", {}, ["#", "A", "B"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, d.steps.map((s) => el("tr", { class: s.a === s.b ? "same" : "differs" },
      el("td", {}, s.step), el("td", { class: "mono" }, s.a || "–"), el("td", { class: "mono" }, s.b || "–")))));
}

function calls(d) {
  const c = d.tool_calls;
  const item = (sign, text) => el("li", { class: "mono" }, `${sign} ${text}`);
  return el("section", { "aria-label": "Tool calls", id: "tool-calls" },
    el("h2", {}, "Tool calls"),
    el("p", {}, `${c.same.length} same, ${c.different_arguments.length} with different arguments, ` +
      `${c.new.length} new, ${c.missing.length} missing; ${d.served_from_record} served from the record`),
    el("ul", {},
      c.same.map((x) => item("=", `${x.tool}(${x.arguments})`)),
      c.different_arguments.map((x) => item("~", `${x.tool}: ${x.a} → ${x.b}`)),
      c.new.map((x) => item("+", `${x.tool}(${x.arguments})`)),
      c.missing.map((x) => item("−", `${x.tool}(${x.arguments})`))));
}

export function render({ main }, path) {
  const [a, b] = path.split("/");
  const body = el("div");
  main.replaceChildren(el("h1", {}, "Compare runs"), body);
  if (!a || !b) {
    fill(body, el("p", { class: "error", role: "alert" }, "Compare needs two runs: #/compare/A/B"));
    return;
  }
  api.get(`/api/runs/${encodeURIComponent(a)}/diff/${encodeURIComponent(b)}`).then((d) => {
    fill(body,
      el("p", {}, "A ", runLink(d.a.run_id), el("br"), "B ", runLink(d.b.run_id),
        d.b.replay_of === d.a.run_id ? " (a replay of A)" : ""),
      figures(d),
      el("h2", {}, "Steps"), steps(d),
      calls(d),
      el("section", { "aria-label": "Answers", id: "answers" }, el("h2", {}, d.same_answer ? "Answers (the same)" : "Answers (they differ)"),
        el("h3", {}, "A"), el("pre", {}, d.a.answer || "–"), el("h3", {}, "B"), el("pre", {}, d.b.answer || "–")));
  }).catch((error) => fill(body, el("p", { class: "error", role: "alert" }, error.message)));
}
