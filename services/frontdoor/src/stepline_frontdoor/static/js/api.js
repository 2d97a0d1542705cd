// The API client: the pasted key lives in sessionStorage and goes out as a bearer header.
const KEY = "stepline.key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function key() {
  return sessionStorage.getItem(KEY);
}

export function setKey(secret) {
  sessionStorage.setItem(KEY, secret);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${key() || ""}`, ...extra };
}

async function raise(response) {
  let code = "http_" + response.status;
  let message = response.statusText;
  try {
    const body = await response.json();
    code = body.error.code;
    message = body.error.message;
  } catch (_) { /* not our error body */ }
  throw new ApiError(response.status, code, message);
}

export async function get(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  const url = query.toString() ? `${path}?${query}` : path;
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) await raise(response);
  return response.json();
}

export async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) await raise(response);
  return response.status === 202 && response.headers.get("content-length") === "0" ? null : response.json().catch(() => null);
}

// Server-Sent Events over fetch (EventSource cannot send an Authorization header).
// Calls onEvent(type, data, id) per frame; returns a function that stops the stream.
export function watch(path, onEvent, onState) {
  const controller = new AbortController();
  let lastId = "";
  let stopped = false;
  async function connect() {
    while (!stopped) {
      try {
        const h = headers({ Accept: "text/event-stream" });
        if (lastId) h["Last-Event-ID"] = lastId;
        const response = await fetch(path, { headers: h, signal: controller.signal });
        if (!response.ok) await raise(response);
        onState(true);
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, cut);
            buffer = buffer.slice(cut + 2);
            let type = "message", data = "", id = "";
            for (const line of frame.split("\n")) {
              if (line.startsWith("event: ")) type = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
              else if (line.startsWith("id: ")) id = line.slice(4);
            }
            if (id) lastId = id;
            if (type === "end") { stopped = true; onState(false); onEvent("end", null, id); return; }
            if (data) onEvent(type, JSON.parse(data), id);
          }
        }
      } catch (error) {
        if (stopped || error.name === "AbortError") return;
        // A run just submitted is not in the read model yet (404): keep asking; a refused key stops.
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) { onState(false); return; }
      }
      onState(false);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  connect();
  return () => { stopped = true; controller.abort(); };
}
