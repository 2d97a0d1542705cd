// Run: a live timeline (Server-Sent Events) of model steps with every attempt, tool calls,
// approvals, child runs, the answer and the cost; a cancel button.
import * as api from "./api.js";
import { approvalCard } from "./approvals.js";
import { badge, el, fill, label, money, ms, pretty, say, truncated, when } from "./util.js";

const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const short = (value, prefix) => String(value || "").replace(prefix, "").toLowerCase();
const num = (value) => Number(value || 0);
const seconds = (duration) => (duration ? parseFloat(duration) * 1000 : null);

function attemptsTable(attempts) {
  if (!attempts.length) return el("p", { class: "muted" }, "no attempt recorded yet");
  return el("table", { class: "attempts", "aria-label": "Attempts" },
    el("thead", {}, el("tr", {}, ["#", "Deployment", "Outcome", "Latency", "Tokens in→out", "Cost", "Failover reason"].map(
      (h, i) => el("th", { scope: "col", class: [3, 4, 5].includes(i) ? "num" : null }, h)))),
    el("tbody", {}, attempts.map((a, i) => {
      const next = attempts[i + 1];
      const reason = a.succeeded ? "" : `${label(a.outcome)}${a.status_code ? ` (HTTP ${a.status_code})` : ""}` +
        (next ? (next.deployment !== a.deployment ? ` → failed over to ${next.deployment}` : " → retried") : "");
      return el("tr", {},
        el("td", {}, a.attempt),
        el("td", { class: "mono" }, a.deployment || a.model),
        el("td", {}, el("span", { class: `badge ${a.succeeded ? "o-succeeded" : "o-bad"}` }, label(a.outcome))),
        el("td", { class: "num" }, ms(a.latency_ms)),
        el("td", { class: "num" }, `${a.input_tokens}→${a.output_tokens}`),
        el("td", { class: "num" }, money(a.cost, a.currency)),
        el("td", {}, reason));
    })));
}

function timeline(detail, openIds) {
  const items = [];
  const steps = new Map();
  const attemptsByStep = new Map();
  for (const a of detail.attempts) {
    if (!attemptsByStep.has(a.step_id)) attemptsByStep.set(a.step_id, []);
    attemptsByStep.get(a.step_id).push(a);
  }
  const outputs = new Map((detail.tool_outputs || []).map((o) => [o.call_id, o]));
  for (const e of detail.events) {
    const b = e.body;
    const at = el("span", { class: "when" }, `#${e.sequence} · ${when(e.occurred_at)}`);
    switch (e.kind) {
      case "queued": items.push(el("li", {}, at, "Queued: ", b.reason || "")); break;
      case "started": items.push(el("li", {}, at, el("strong", {}, "Started"), ` on route ${b.route || "–"}`,
        b.max_steps ? ` (max ${b.max_steps} steps)` : "", b.budget ? ` · budget ${money(b.budget.amount, b.budget.currency)}` : "")); break;
      case "step_started": {
        const model = b.kind === "STEP_KIND_MODEL";
        const n = String(b.step_id || "").split(":").pop();
        const body = el("div");
        const li = el("li", { class: model ? "model" : "tool", "data-step": b.step_id }, at,
          el("strong", {}, model ? `Model step ${n}` : `Tool ${b.tool}`), el("span", { class: "muted" }, model ? ` · route ${b.route}` : ` · step ${n}`),
          el("span", { class: "outcome" }, " · pending…"), body);
        if (!model) body.append(el("div", {}, el("span", { class: "muted" }, "arguments "), truncated(pretty(b.arguments_json || ""), 120)));
        steps.set(b.step_id, { li, model, body });
        items.push(li);
        break;
      }
      case "step_completed": {
        const step = steps.get(b.step_id);
        if (!step) break;
        const outcome = short(b.outcome, "STEP_OUTCOME_");
        fill(step.li.querySelector(".outcome"), " · ", el("span", { class: `badge ${outcome === "succeeded" ? "o-succeeded" : "o-bad"}` }, outcome),
          b.duration ? ` in ${ms(seconds(b.duration))}` : "",
          step.model ? ` · ${num(b.usage?.input_tokens)}→${num(b.usage?.output_tokens)} tokens · ${money(b.cost?.amount, b.cost?.currency)}` : "",
          step.model && b.deployment ? ` · answered by ${b.deployment}` : "");
        if (step.model && b.requested_tools?.length) step.body.append(el("div", {}, "asks for ", b.requested_tools.join(", ")));
        if (!step.model) {
          const out = outputs.get(b.call_id);
          if (out) step.body.append(el("div", {}, el("span", { class: "muted" }, out.error ? "error " : "result "), truncated(out.error || pretty(out.output), 160)));
          if (b.output_truncated) step.body.append(el("div", { class: "muted" }, "(output truncated for the model)"));
        }
        if (b.error_message) step.body.append(el("div", { class: "error" }, b.error_message));
        break;
      }
      case "approval_requested": items.push(el("li", { class: "approval" }, at, el("strong", {}, "Approval requested"), ` for ${b.tool}`,
        truncated(pretty(b.arguments_json || ""), 120))); break;
      case "approval_resolved": {
        const decision = short(b.decision, "APPROVAL_DECISION_");
        items.push(el("li", { class: "approval" }, at, el("strong", {}, `Approval ${decision}`),
          b.timed_out ? " (timed out)" : ` by ${b.decided_by || "–"}`, b.arguments_edited ? " with edited arguments" : "",
          b.reason ? ` — ${b.reason}` : ""));
        break;
      }
      case "child_run_started": items.push(el("li", {}, at, "Child run ",
        el("a", { href: `#/run/${encodeURIComponent(b.child_run_id)}`, class: "mono" }, b.child_run_id), ` (${b.agent || ""}): ${b.goal || ""}`)); break;
      case "wrap_up_started": items.push(el("li", {}, at, el("strong", {}, "Wrapping up"), ": ", b.message || "")); break;
      case "budget_reserved": items.push(el("li", { class: "muted" }, at, `Budget reserved ${money(b.amount?.amount, b.amount?.currency)}`)); break;
      case "duplicate_result_ignored": items.push(el("li", { class: "muted" }, at, `Duplicate result ignored (${short(b.reason, "IGNORED_RESULT_REASON_")})`)); break;
      case "completed": case "failed": case "cancelled":
        items.push(el("li", { class: `end ${e.kind}` }, at, el("strong", {}, label(e.kind)),
          e.kind === "failed" ? ` (${short(b.reason, "RUN_FAILURE_REASON_")}): ${b.message || ""}` : "",
          e.kind === "cancelled" ? `: ${b.reason || ""}` : "",
          ` · ${b.steps || 0} steps · ${money(b.cost?.amount, b.cost?.currency)}`));
        break;
      default: items.push(el("li", {}, at, e.kind));
    }
  }
  for (const [stepId, step] of steps) {
    if (step.model) step.body.append(attemptsTable(attemptsByStep.get(stepId) || []));
  }
  for (const d of items.flatMap((li) => [...li.querySelectorAll("details")])) {
    const key = d.closest("[data-step]")?.dataset.step;
    if (key && openIds.has(key)) d.open = true;
    d.addEventListener("toggle", () => { if (key) (d.open ? openIds.add(key) : openIds.delete(key)); });
  }
  return el("ol", { class: "timeline", "aria-label": "Timeline" }, items);
}

export function render({ me, main }, runId) {
  const live = el("span", { class: "live off", "aria-live": "polite" }, "connecting…");
  const body = el("div");
  const openIds = new Set();
  const parts = { top: el("div"), actions: el("p"), outcome: el("div"), approvals: el("section", { "aria-label": "Pending approvals" }),
                  timeline: el("div"), approvalsKey: null, canCancel: null };
  let stopped = false;
  let pending = null;

  async function load() {
    try {
      const detail = await api.get(`/api/runs/${encodeURIComponent(runId)}`);
      if (!stopped) draw(detail);
    } catch (error) {
      if (!body.querySelector(".summary")) body.replaceChildren(el("p", { class: "error", role: "alert" }, error.status === 404 ? `No run ${runId}.` : error.message));
    }
  }
  function soon() {
    if (pending) return;
    pending = setTimeout(() => { pending = null; load(); }, 150);
  }
  function draw(detail) {
    const r = detail.run;
    const canCancel = !TERMINAL.has(r.status) && (me.scopes.includes("goals:submit") || me.scopes.includes("admin"));
    const summary = el("div", { class: "card summary" },
      [["Status", badge("s", r.status)], ["Agent", r.agent], ["Cost", money(r.cost, r.currency)],
       ["Tokens in→out", `${r.input_tokens}→${r.output_tokens}`], ["Steps", r.steps],
       ["Duration", r.duration_ms == null ? "running" : ms(r.duration_ms)], ["Started", when(r.started_at)],
       ["Submitted by", r.submitted_by || "–"], ["Route", r.route || "–"],
       ["Parent", r.parent_run_id ? el("a", { href: `#/run/${encodeURIComponent(r.parent_run_id)}`, class: "mono" }, r.parent_run_id) : "–"],
      ].concat(detail.replay_of ? [[runId.startsWith("fork-") ? "Fork of" : "Replay of", el("span", { id: "replay-of" },
        el("a", { href: `#/run/${encodeURIComponent(detail.replay_of)}`, class: "mono" }, detail.replay_of), " · ",
        el("a", { href: `#/compare/${encodeURIComponent(detail.replay_of)}/${encodeURIComponent(runId)}` }, "compare"))]] : []).map(([k, v]) => el("div", {}, el("span", {}, k), v)));
    const pendingApprovals = detail.approvals.filter((a) => a.status === "pending");
    // Sections a person may be typing in or focused on are redrawn only when they change.
    const approvalsKey = pendingApprovals.map((a) => a.approval_id).join(",");
    if (approvalsKey !== parts.approvalsKey) {
      parts.approvalsKey = approvalsKey;
      fill(parts.approvals, pendingApprovals.length ? [el("h2", {}, "Waiting for approval"),
        pendingApprovals.map((a) => approvalCard(me, a, soon))] : null);
    }
    if (canCancel !== parts.canCancel) {
      parts.canCancel = canCancel;
      fill(parts.actions, canCancel ? el("button", { type: "button", class: "danger", id: "cancel", onclick: async (e) => {
        e.target.disabled = true;
        try { await api.post(`/api/runs/${encodeURIComponent(runId)}/cancel`, { reason: "cancelled from the console" }); say("Cancel requested"); }
        catch (error) { say(error.message); e.target.disabled = false; }
      } }, "Cancel run") : null);
    }
    fill(parts.top, el("p", {}, el("strong", {}, "Goal: "), r.goal), summary);
    fill(parts.outcome,
      r.status === "completed" ? el("section", { class: "card", "aria-label": "Answer" }, el("h2", {}, "Answer"), el("pre", { id: "answer" }, r.answer)) : null,
      r.status === "failed" ? el("p", { class: "error" }, `Failed (${label(r.failure_reason)}): ${r.failure_message}`) : null,
      detail.children.length ? el("section", {}, el("h2", {}, "Child runs"), el("ul", {}, detail.children.map((c) =>
        el("li", {}, el("a", { href: `#/run/${encodeURIComponent(c.run_id)}`, class: "mono" }, c.run_id), " ", badge("s", c.status), ` ${c.agent}: ${c.goal}`)))) : null,
      detail.replays.length ? el("section", { "aria-label": "Replays" }, el("h2", {}, "Replays and forks"), el("ul", { id: "replays" }, detail.replays.map((c) =>
        el("li", {}, el("a", { href: `#/run/${encodeURIComponent(c.run_id)}`, class: "mono" }, c.run_id), " ", badge("s", c.status),
          ` ${c.route || ""} · ${money(c.cost, c.currency)} · `,
          el("a", { href: `#/compare/${encodeURIComponent(runId)}/${encodeURIComponent(c.run_id)}` }, "compare"))))) : null);
    fill(parts.timeline, el("h2", {}, "Timeline"), timeline(detail, openIds));
    if (parts.top.parentNode !== body) fill(body, parts.top, parts.actions, parts.outcome, parts.approvals, parts.timeline);
  }

  main.replaceChildren(el("h1", {}, "Run ", el("span", { class: "mono" }, runId), " ", live), body);
  load();
  const stop = api.watch(`/api/runs/${encodeURIComponent(runId)}/events`, (type) => {
    if (type === "end") { live.textContent = "finished"; live.className = "live off"; }
    soon();
  }, (on) => {
    if (stopped) return;
    if (on) soon();
    live.textContent = on ? "● live" : live.textContent === "finished" ? "finished" : "reconnecting…";
    live.className = on ? "live" : "live off";
  });
  return () => { stopped = true; stop(); clearTimeout(pending); };
}
