// The console's only way to the platform: the public HTTP API under /v1, with the key
// the user typed in as a Bearer header (kept in this tab's session storage; no cookies,
// so no other site can make the browser call the API on the user's behalf).

const KEY = "slough.key";

export const key = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  forget: () => sessionStorage.removeItem(KEY),
};

/** An answer that was not a success, with the API's error object. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `the gateway answered HTTP ${status}`);
    this.status = status;
    this.code = error?.code ?? null;
    this.param = error?.param ?? null;
  }
}

function headers(extra = {}) {
  const value = key.get();
  return value ? { Authorization: `Bearer ${value}`, ...extra } : extra;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON: a proxy's page, say; the status is all there is.
  }
  return new ApiError(response.status, body?.error);
}

async function request(method, path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: "the gateway cannot be reached; is `slough up` running?" });
  }
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

export const get = (path, signal) => request("GET", path, undefined, signal);
export const post = (path, body, signal) => request("POST", path, body ?? {}, signal);
export const patch = (path, body) => request("PATCH", path, body);
export const del = (path) => request("DELETE", path);

/**
 * POSTs `body` and yields each server-sent event's data, parsed, until `[DONE]`.
 * An error event (`{"error": ...}`) is thrown as an ApiError. Aborting `signal`
 * closes the connection, which cancels the work on the server.
 */
export async function* stream(path, body, signal) {
  let response;
  try {
    response = await fetch(path, {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, { message: "the gateway cannot be reached; is `slough up` running?" });
  }
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const parsed = JSON.parse(data);
      if (parsed.error) throw new ApiError(200, parsed.error);
      yield parsed;
    }
  }
}

/**
 * Sends a multipart form with upload progress (`onProgress(sent, total)`), which fetch
 * cannot report, and answers the parsed JSON.
 */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    for (const [name, value] of Object.entries(headers())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress?.(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        // handled below
      }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body?.error));
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, { message: "the upload did not reach the gateway" })));
    xhr.send(form);
  });
}
