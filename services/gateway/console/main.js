// The console's entry point: the API key form, the page router (`#chat`,
// `#knowledge?collection=docs`, ...) and the notice line every page reports to.
// Each page module exports `render(root, ctx)`; `ctx.signal` is aborted when the user
// leaves the page, which stops its polling and its open requests.

import * as api from "./api.js";
import { h, replace } from "./dom.js";
import * as chat from "./pages/chat.js";
import * as knowledge from "./pages/knowledge.js";
import * as personas from "./pages/personas.js";
import * as fineTuning from "./pages/fine_tuning.js";
import * as operations from "./pages/operations.js";
import * as audit from "./pages/audit.js";

const PAGES = {
  chat: { title: "Chat", module: chat },
  knowledge: { title: "Knowledge", module: knowledge },
  personas: { title: "Personas", module: personas },
  "fine-tuning": { title: "Fine-tuning", module: fineTuning },
  operations: { title: "Operations", module: operations },
  audit: { title: "Audit", module: audit },
};

const notice = document.getElementById("notice");
const main = document.getElementById("page");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const forget = document.getElementById("key-forget");
let leaving = new AbortController();

/** Shows `message` on the notice line: `error`, `ok` or `info`. */
export function notify(message, kind = "error") {
  notice.textContent = message;
  notice.className = kind;
  notice.hidden = !message;
}

/** What to say about an error from the API, by its status. */
export function explain(err) {
  if (err.name === "AbortError") return null;
  if (err.status === 401) {
    return `The gateway refused the API key: ${err.message}. Enter a valid key above.`;
  }
  if (err.status === 403) return `This key may not do that: ${err.message}`;
  return err.message || String(err);
}

/** Reports `err` on the notice line (nothing for a cancelled request). */
export function fail(err) {
  const message = explain(err);
  if (message) notify(message, "error");
}

function showKeyState() {
  const present = Boolean(api.key.get());
  forget.hidden = !present;
  keyInput.placeholder = present ? "key in use (hidden); type another to switch" : "sk-...";
}

function welcome() {
  return h("section", { class: "welcome" },
    h("h1", {}, "Welcome to SloughGPT"),
    h("p", {}, "Enter an API key above to use the console. The first ", h("code", {}, "slough up"),
      " prints an admin key (", h("code", {}, "sk-..."), "); an admin can make more keys on the Operations page."),
    h("p", {}, "The key stays in this browser tab only and is sent to the API as a Bearer header."),
    h("p", {}, "The API itself is at ", h("code", {}, "/v1"), ", described by ",
      h("a", { href: "/openapi.json" }, "/openapi.json"), "."));
}

async function route() {
  leaving.abort();
  leaving = new AbortController();
  const [name, query] = (location.hash.slice(1) || "chat").split("?");
  const page = PAGES[name] ?? PAGES.chat;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.page === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${page.title} · SloughGPT console`;
  notify("");
  if (!api.key.get()) {
    replace(main, welcome());
    return;
  }
  const root = h("div", { class: `page page-${name}` });
  replace(main, root);
  try {
    await page.module.render(root, {
      params: new URLSearchParams(query ?? ""),
      signal: leaving.signal,
      notify,
      fail,
    });
  } catch (err) {
    fail(err);
  }
}

keyForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = keyInput.value.trim();
  if (!value) {
    notify("Type an API key first (it starts with sk-).");
    keyInput.focus();
    return;
  }
  const previous = api.key.get();
  api.key.set(value);
  try {
    await api.get("/v1/models");
  } catch (err) {
    if (previous) api.key.set(previous);
    else api.key.forget();
    fail(err);
    return;
  }
  keyInput.value = "";
  showKeyState();
  await route();
  notify("Key accepted.", "ok");
});

forget.addEventListener("click", () => {
  api.key.forget();
  showKeyState();
  route();
});

window.addEventListener("hashchange", route);
showKeyState();
route();
