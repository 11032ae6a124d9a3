// The gateway's API as the page uses it: the user's key on every call, errors in OpenAI's shape,
// and Server-Sent Events read with fetch() (EventSource cannot send an Authorization header).

const KEY = "skillserve.key";

export const apiKey = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value.trim()),
  clear: () => sessionStorage.removeItem(KEY),
};

let config = null;

/** /ui/config.json, read once: whether the gateway wants a key, its templates, the Hyperparameters schema. */
export function gatewayConfig() {
  config ??= fetch("config.json").then((reply) => (reply.ok ? reply.json() : { auth: false }));
  return config;
}

/** An API error: the HTTP status, OpenAI's message, and its details (a bad dataset's lines). */
export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `the gateway answered HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.param = error.param || null;
    this.details = error.details || null;
  }
}

function headers(extra = {}) {
  const key = apiKey.get();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failed(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const error = new ApiError(response.status, body);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("skillserve:unauthorized", { detail: error }));
  return error;
}

/** Call the API; `json` is sent as a JSON body, `form` as multipart. Resolves to the parsed JSON reply. */
export async function api(path, { method = "GET", json, form, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failed(response);
  return response.json();
}

/** A file's bytes as text (`/v1/files/{id}/content`): not JSON, so not through api(). */
export async function apiText(path, { signal } = {}) {
  const response = await fetch(path, { signal, headers: headers() });
  if (!response.ok) throw await failed(response);
  return response.text();
}

/** Save a /v1/files file from the browser: fetched with the key (a plain link could not send it), then downloaded. */
export async function download(fileId, filename) {
  const text = await apiText(`/v1/files/${encodeURIComponent(fileId)}/content`);
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([text], { type: "application/jsonl" }));
  link.download = filename || `${fileId}.jsonl`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

/** Server-Sent Events from GET (or POST with `json`): yields {event, data} until the stream ends. */
export async function* events(path, { json, signal } = {}) {
  const init = { signal, headers: headers({ Accept: "text/event-stream" }) };
  if (json !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failed(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: data.join("\n") };
      }
    }
  } finally {
    reader.releaseLock();
  }
}
