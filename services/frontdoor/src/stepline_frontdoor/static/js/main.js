// The console shell: key entry, who-am-I, hash routes, the pending-approvals count.
import * as api from "./api.js";
import { el, fill, say } from "./util.js";
import * as runs from "./runs.js";
import * as run from "./run.js";
import * as compare from "./compare.js";
import * as approvals from "./approvals.js";
import * as costs from "./costs.js";
import * as providers from "./providers.js";
import * as keys from "./keys.js";

const main = document.getElementById("main");
let cleanup = () => {};
let me = null;

function signIn(message) {
  cleanup();
  document.getElementById("sign-out").hidden = true;
  document.querySelector("nav a[data-page=keys]").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { type: "password", id: "key", name: "key", required: true, autocomplete: "off", size: 48 });
  const form = el("form", { class: "card inline", onsubmit: async (e) => {
    e.preventDefault();
    api.setKey(input.value.trim());
    await start();
  } },
    el("label", { for: "key" }, "API key", input),
    el("button", { class: "primary", type: "submit" }, "Use key"));
  fill(main,
    el("h1", {}, "Sign in"),
    el("p", {}, "Paste an API key. It stays in this tab (sessionStorage) and is sent as a bearer header."),
    message ? el("p", { class: "error", role: "alert" }, message) : null,
    form);
  input.focus();
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "runs";
  const [page, ...rest] = hash.split("/");
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === page || ((page === "run" || page === "compare") && link.dataset.page === "runs")) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  cleanup();
  const ctx = { me, main };
  const pages = { runs, run, compare, approvals, costs, providers, keys };
  const view = pages[page] || runs;
  const [path, query] = rest.join("/").split("?");
  cleanup = view.render(ctx, decodeURIComponent(path || ""), new URLSearchParams(query || "")) || (() => {});
  main.focus({ preventScroll: true });
}

async function refreshPending() {
  if (!me) return;
  try {
    const { approvals: pending } = await api.get("/api/approvals", { status: "pending" });
    const count = document.getElementById("pending-count");
    count.hidden = pending.length === 0;
    count.textContent = String(pending.length);
    count.setAttribute("aria-label", `${pending.length} pending`);
  } catch (_) { /* shown by the pages */ }
}

async function start() {
  if (!api.key()) return signIn();
  try {
    me = await api.get("/api/me");
  } catch (error) {
    api.forgetKey();
    return signIn(error.status === 401 || error.status === 403 ? "That key was not accepted: " + error.message : error.message);
  }
  document.getElementById("who").textContent = `${me.label || me.key_id} · tenant ${me.tenant_id}`;
  // The Keys page is offered to admin keys only (the API refuses others with 403 anyway).
  document.querySelector("nav a[data-page=keys]").hidden = !me.scopes.includes("admin");
  const out = document.getElementById("sign-out");
  out.hidden = false;
  out.onclick = () => { api.forgetKey(); me = null; signIn(); say("Key forgotten"); };
  route();
  refreshPending();
}

window.addEventListener("hashchange", () => { if (me) route(); });
setInterval(refreshPending, 5000);
window.addEventListener("approvals-changed", refreshPending);
start();
