// Approvals inbox: approve, deny with a reason, or approve with edited arguments.
import * as api from "./api.js";
import { badge, el, pretty, say, when } from "./util.js";

export function canDecide(me) {
  return me.scopes.includes("approvals:decide") || me.scopes.includes("admin");
}

// One pending approval with its decision controls; `done` runs after a decision was sent.
export function approvalCard(me, a, done) {
  const id = `${a.run_id}-${a.approval_id}`.replace(/[^A-Za-z0-9_-]/g, "_");
  const args = el("textarea", { id: `args-${id}`, "aria-label": `Arguments of ${a.tool}`, spellcheck: "false" }, pretty(a.arguments_json));
  const reason = el("input", { id: `reason-${id}`, size: 40, placeholder: "shown to the model on a denial" });
  const error = el("p", { class: "error", role: "alert" });
  async function decide(decision, edited) {
    const body = { decision, reason: reason.value };
    if (edited) {
      try { body.edited_arguments = JSON.parse(args.value); } catch (_) {
        error.textContent = "The edited arguments are not valid JSON."; args.focus(); return;
      }
      if (typeof body.edited_arguments !== "object" || Array.isArray(body.edited_arguments) || body.edited_arguments === null) {
        error.textContent = "The edited arguments must be a JSON object."; args.focus(); return;
      }
    }
    for (const b of buttons) b.disabled = true;
    try {
      await api.post(`/api/runs/${encodeURIComponent(a.run_id)}/approvals/${encodeURIComponent(a.approval_id)}`, body);
      say(`${decision === "approve" ? "Approved" : "Denied"} ${a.tool}`);
      window.dispatchEvent(new Event("approvals-changed"));
      done();
    } catch (e) {
      error.textContent = e.message;
      for (const b of buttons) b.disabled = false;
    }
  }
  const edited = () => pretty(a.arguments_json) !== args.value;
  const buttons = [
    el("button", { type: "button", class: "primary", onclick: () => decide("approve", edited()) }, "Approve"),
    el("button", { type: "button", class: "danger", onclick: () => decide("deny", false) }, "Deny"),
  ];
  const decideControls = canDecide(me)
    ? [el("label", { for: `args-${id}` }, "Arguments (edit to approve with changes)", args),
       el("div", { class: "actions" }, el("label", { for: `reason-${id}` }, "Reason", reason), ...buttons), error]
    : [el("pre", {}, pretty(a.arguments_json)), el("p", { class: "muted" }, "This key cannot decide approvals.")];
  return el("article", { class: "card approval-card", "aria-label": `Approval ${a.approval_id}`, "data-approval": a.approval_id },
    el("div", {}, badge("a", a.status), " ", el("strong", {}, a.tool), " in run ",
      el("a", { href: `#/run/${encodeURIComponent(a.run_id)}`, class: "mono" }, a.run_id),
      el("span", { class: "muted" }, ` · agent ${a.agent} · requested ${when(a.requested_at)}`,
        a.expires_at ? ` · auto-deny ${when(a.expires_at)}` : "")),
    ...decideControls);
}

export function render({ me, main }) {
  const list = el("div", { "aria-live": "polite" });
  let stopped = false;
  let shown = null;
  async function load() {
    try {
      const { approvals } = await api.get("/api/approvals", { status: "pending" });
      if (stopped) return;
      const ids = approvals.map((a) => a.run_id + "/" + a.approval_id).join(",");
      // Re-render only when the set changed: someone may be typing in a card.
      if (ids === shown) return;
      shown = ids;
      list.replaceChildren(...(approvals.length
        ? approvals.map((a) => approvalCard(me, a, load))
        : [el("p", { class: "muted" }, "Nothing waits for a decision.")]));
    } catch (error) {
      list.replaceChildren(el("p", { class: "error" }, error.message));
    }
  }
  const recent = el("div");
  async function loadRecent() {
    try {
      const decided = [];
      for (const status of ["approved", "denied"]) decided.push(...(await api.get("/api/approvals", { status })).approvals);
      decided.sort((x, y) => (y.resolved_at || "").localeCompare(x.resolved_at || ""));
      recent.replaceChildren(el("table", { "aria-label": "Recent decisions" },
        el("thead", {}, el("tr", {}, ["Decision", "Tool", "Run", "By", "Reason", "Edited", "When"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, decided.slice(0, 20).map((a) => el("tr", {},
          el("td", {}, badge("a", a.status)), el("td", {}, a.tool),
          el("td", {}, el("a", { href: `#/run/${encodeURIComponent(a.run_id)}`, class: "mono" }, a.run_id)),
          el("td", {}, a.timed_out ? "(timed out)" : a.decided_by), el("td", {}, a.reason),
          el("td", {}, a.arguments_edited ? "yes" : ""), el("td", {}, when(a.resolved_at)))))));
    } catch (_) { /* the pending list shows errors */ }
  }
  main.replaceChildren(el("h1", {}, "Approvals"), list, el("h2", {}, "Recent decisions"), recent);
  load();
  loadRecent();
  const onChange = () => { shown = null; load(); loadRecent(); };
  window.addEventListener("approvals-changed", onChange);
  const timer = setInterval(() => { load(); loadRecent(); }, 3000);
  return () => { stopped = true; clearInterval(timer); window.removeEventListener("approvals-changed", onChange); };
}
