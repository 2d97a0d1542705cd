// Small DOM and formatting helpers; data always goes in as text, never as HTML.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value == null || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (value === true) node.setAttribute(name, "");
    else node.setAttribute(name, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function money(amount, currency = "USD") {
  if (amount === "" || amount == null) return "–";
  const value = Number(amount);
  const symbol = !currency || currency === "USD" ? "$" : currency + " ";
  if (value === 0) return symbol + "0";
  return symbol + (Math.abs(value) < 0.01 ? value.toPrecision(3) : value.toFixed(4));
}

// One formatter for every date: `toLocaleString` with options builds a new one per call, which
// was most of the time a 1,000-run list took to draw.
const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });

export function when(iso) {
  if (!iso) return "–";
  return DATE_TIME.format(new Date(iso));
}

export function ms(value) {
  if (value == null) return "–";
  if (value < 1000) return `${Math.round(value)} ms`;
  if (value < 120000) return `${(value / 1000).toFixed(1)} s`;
  return `${Math.round(value / 60000)} min`;
}

export function label(text) {
  return String(text || "").replaceAll("_", " ");
}

export function badge(prefix, value) {
  return el("span", { class: `badge ${prefix}-${value}` }, label(value));
}

export function truncated(text, limit = 160) {
  const value = String(text ?? "");
  if (value.length <= limit) return el("pre", {}, value);
  return el("details", {}, el("summary", {}, el("code", {}, value.slice(0, limit) + "…")), el("pre", {}, value));
}

export function pretty(json) {
  try { return JSON.stringify(JSON.parse(json), null, 2); } catch (_) { return json; }
}

let toastTimer;
export function say(text) {
  const box = document.getElementById("status");
  box.textContent = text;
  box.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => box.classList.remove("show"), 3000);
}

// replaceChildren that skips null/false, like `el` does.
export function fill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c != null && c !== false));
}
