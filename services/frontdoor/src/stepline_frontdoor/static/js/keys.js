// Keys (admin scope): the tenant's API keys without their secrets; issue one (its secret is
// shown once, with a copy button) and revoke one. Everything goes through /api/keys.
import * as api from "./api.js";
import { badge, el, say, when } from "./util.js";

const SCOPES = ["runs:read", "goals:submit", "approvals:decide", "usage:read", "models:call", "admin"];

function secretCard(created) {
  const value = el("input", { id: "new-secret", class: "mono", readonly: true, size: 72, value: created.secret,
    "aria-label": "New key's secret" });
  const copy = el("button", { type: "button", class: "primary", onclick: async () => {
    value.select();
    try { await navigator.clipboard.writeText(created.secret); } catch (_) { document.execCommand("copy"); }
    say("Secret copied");
  } }, "Copy");
  return el("section", { class: "card", id: "secret-card", role: "alert" },
    el("h2", {}, `Key ${created.key.key_id} for tenant ${created.key.tenant_id}`),
    el("p", {}, el("strong", {}, "Store this secret now: it is shown once and never again.")),
    el("div", { class: "actions" }, value, copy,
      el("button", { type: "button", onclick: (e) => e.target.closest("section").remove() }, "Done")));
}

function table(keys, onRevoke) {
  return el("table", { "aria-label": "Keys" },
    el("thead", {}, el("tr", {}, ["Key", "Tenant", "Label", "Scopes", "Status", "Issued", "Last used here", ""].map(
      (h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, keys.length ? keys.map((k) => el("tr", { "data-key": k.key_id },
      el("td", {}, el("span", { class: "mono" }, k.prefix + "…")),
      el("td", {}, k.tenant_id),
      el("td", {}, k.label || "–"),
      el("td", {}, k.scopes.join(", "), k.agents.length ? el("div", { class: "muted" }, `agents: ${k.agents.join(", ")}`) : null),
      el("td", {}, badge("k", k.status), k.revoked_at ? el("div", { class: "muted" }, `${when(k.revoked_at)} by ${k.revoked_by}`) : null),
      el("td", {}, when(k.issued_at), el("div", { class: "muted" }, `by ${k.issued_by}`)),
      el("td", {}, when(k.last_used_at)),
      el("td", {}, k.status === "active"
        ? el("button", { type: "button", class: "danger", "aria-label": `Revoke ${k.key_id}`, onclick: () => onRevoke(k) }, "Revoke")
        : null)))
      : el("tr", {}, el("td", { colspan: 8, class: "muted" }, "no keys"))));
}

export function render({ main, me }, _path, query) {
  const all = query.get("all") === "1";
  const out = el("div", { "aria-live": "polite" }, el("p", { class: "muted" }, "Loading…"));
  const fresh = el("div");
  const label = el("input", { id: "k-label", name: "label", maxlength: 200 });
  const boxes = SCOPES.map((s) => el("label", { class: "check" },
    el("input", { type: "checkbox", name: "scope", value: s, checked: s === "runs:read" }), s));
  const form = el("form", { class: "card inline", "aria-label": "New key", onsubmit: async (e) => {
    e.preventDefault();
    const scopes = boxes.map((b) => b.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
    try {
      const created = await api.post("/api/keys", { scopes, label: label.value });
      fresh.replaceChildren(secretCard(created));
      fresh.querySelector("#new-secret").focus();
      form.reset();
      load();
    } catch (error) {
      fresh.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    }
  } },
    el("label", { for: "k-label" }, "Label", label),
    el("fieldset", { class: "scopes" }, el("legend", {}, "Scopes"), boxes),
    el("button", { type: "submit", class: "primary" }, "Create key"));
  const toggle = el("a", { href: all ? "#/keys" : "#/keys/?all=1" }, all ? "Hide revoked and expired keys" : "Show revoked and expired keys");
  main.replaceChildren(el("h1", {}, "Keys"),
    el("p", { class: "muted" }, `API keys of tenant ${me.tenant_id}. Secrets are stored as hashes only; a revoked key is refused by every door within seconds.`),
    form, fresh, el("p", {}, toggle), out);

  async function revoke(key) {
    if (!confirm(`Revoke ${key.key_id} (${key.label || "no label"})? Callers using it are refused from now on.`)) return;
    try {
      await api.post(`/api/keys/${encodeURIComponent(key.key_id)}/revoke`, { reason: "revoked from the console" });
      say(`Revoked ${key.key_id}`);
      load();
    } catch (error) {
      say(error.message);
    }
  }

  let stopped = false;
  async function load() {
    try {
      const { keys } = await api.get("/api/keys", { all: all ? "true" : "" });
      if (!stopped) out.replaceChildren(table(keys, revoke));
    } catch (error) {
      out.replaceChildren(el("p", { class: "error", role: "alert" }, error.message));
    }
  }
  load();
  return () => { stopped = true; };
}
