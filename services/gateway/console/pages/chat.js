// The chat playground: pick a model, a persona and a collection, chat with streaming,
// stop an answer (closing the stream cancels the generation on the server), see each
// answer's time to first token, tokens per second, citations and persona adherence,
// and copy the conversation as the equivalent curl or Python `openai` call.

import * as api from "../api.js";
import { copy, field, h, number, replace, select } from "../dom.js";

/** The sampling inputs: request field, label, bounds and step. */
const SAMPLING = [
  ["temperature", "Temperature", 0, 2, 0.05],
  ["top_p", "Top p", 0, 1, 0.05],
  ["top_k", "Top k", 0, 1000, 1],
  ["min_p", "Min p", 0, 1, 0.01],
  ["repetition_penalty", "Repetition penalty", 0.5, 2, 0.05],
  ["max_tokens", "Max tokens", 1, 4096, 1],
  ["seed", "Seed", 0, 4294967295, 1],
];

let answers = 0;

export async function render(root, ctx) {
  const [models, personas, collections] = await Promise.all([
    api.get("/v1/models", ctx.signal),
    api.get("/v1/personas", ctx.signal).catch(() => ({ data: [] })),
    api.get("/v1/collections", ctx.signal).catch((err) => ({ data: [], refused: err })),
  ]);
  const chatModels = models.data.filter((model) => model.kind === "chat" && !model.persona);
  if (!chatModels.length) {
    ctx.notify("No chat model is loaded yet; inference may still be starting. Reload in a moment.", "info");
  }
  const wanted = ctx.params.get("model");
  if (wanted && !chatModels.some((m) => m.id === wanted)) {
    ctx.notify(`Model ${wanted} is not being served (yet); pick another or reload in a moment.`, "info");
  }
  const model = select(chatModels.map((m) => [m.id, m.parent ? `${m.id} (fine-tuned)` : m.id]),
    { name: "model", value: chatModels.some((m) => m.id === wanted) ? wanted : chatModels[0]?.id });
  const persona = select([["", "None"], ...personas.data.map((p) => [p.id, `${p.name} (${p.id})`])],
    { name: "persona", value: ctx.params.get("persona") ?? "" });
  const collection = select([["", "None"], ...collections.data.map((c) => [c.name, `${c.name} (${number(c.documents)} document${c.documents === 1 ? "" : "s"})`])],
    { name: "collection", value: ctx.params.get("collection") ?? "" });
  const mode = select(["hybrid", "dense", "sparse"], { name: "mode" });
  const topK = h("input", { type: "number", name: "rag_top_k", min: 1, max: 100, value: 4 });
  const sampling = Object.fromEntries(SAMPLING.map(([name, , min, max, step]) =>
    [name, h("input", { type: "number", name, min, max, step, placeholder: "default", inputMode: "decimal" })]));

  const conversation = [];
  const messages = h("ol", { class: "messages", "aria-live": "polite", "aria-label": "Conversation" });
  const input = h("textarea", { name: "message", rows: 3, placeholder: "Ask something… (Enter sends, Shift+Enter adds a line)", required: true });
  const send = h("button", { type: "submit" }, "Send");
  const stop = h("button", { type: "button", class: "danger", disabled: true }, "Stop");
  let running = null;

  function requestBody(stream) {
    const body = { model: model.value, messages: conversation.map(({ role, content }) => ({ role, content })) };
    for (const [name, control] of Object.entries(sampling)) {
      if (control.value !== "") body[name] = Number(control.value);
    }
    if (persona.value) body.persona = persona.value;
    if (collection.value) body.rag = { collection: collection.value, mode: mode.value, top_k: Number(topK.value) || 4 };
    if (stream) {
      body.stream = true;
      body.stream_options = { include_usage: true };
    }
    return body;
  }

  async function ask(text) {
    conversation.push({ role: "user", content: text });
    messages.append(h("li", { class: "message user" }, h("span", { class: "role" }, "You"), h("p", { class: "content" }, text)));
    answers += 1;
    const answer = newAnswer(`a${answers}`, persona.value, model.value);
    messages.append(answer.element);
    answer.element.scrollIntoView({ block: "end" });
    const controller = new AbortController();
    running = controller;
    send.disabled = true;
    stop.disabled = false;
    const started = performance.now();
    let first = null;
    let reply = "";
    let parts = 0;
    let usage = null;
    let finish = null;
    let stopped = false;
    let failed = false;
    try {
      for await (const chunk of api.stream("/v1/chat/completions", requestBody(true), controller.signal)) {
        const choice = chunk.choices?.[0];
        if (choice?.delta?.content) {
          if (first === null) first = performance.now();
          reply += choice.delta.content;
          parts += 1;
          answer.content.textContent = reply;
          answer.element.dataset.parts = String(parts);
        }
        if (choice?.finish_reason) finish = choice.finish_reason;
        if (choice?.persona_adherence) answer.showAdherence(choice.persona_adherence);
        if (chunk.citations) answer.showCitations(chunk.citations, collection.value);
        if (chunk.usage) usage = chunk.usage;
      }
    } catch (err) {
      if (err.name === "AbortError") stopped = true;
      else {
        failed = true;
        answer.element.classList.add("failed");
        answer.stats.textContent = `failed: ${err.message}`;
        ctx.fail(err);
      }
    } finally {
      running = null;
      send.disabled = false;
      stop.disabled = true;
    }
    const ended = performance.now();
    answer.linkCitations(reply);
    if (reply) conversation.push({ role: "assistant", content: reply });
    if (!failed) answer.showStats({ started, first, ended, parts, usage, finish: stopped ? "stopped" : finish });
    answer.element.dataset.state = failed ? "failed" : stopped ? "stopped" : "done";
  }

  const form = h("form", { class: "composer", onsubmit: (event) => {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || running) return;
    input.value = "";
    ask(text);
  } },
  field("Message", input), h("div", { class: "buttons" }, send, stop));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", () => running?.abort());
  ctx.signal.addEventListener("abort", () => running?.abort());

  const dialog = codeDialog();
  const ragFields = h("div", { class: "rag-fields" }, field("Search mode", mode), field("Chunks to retrieve", topK));
  const showRag = () => { ragFields.hidden = !collection.value; };
  collection.addEventListener("change", showRag);
  showRag();

  replace(root,
    h("div", { class: "chat-layout" },
      h("aside", { class: "panel settings", "aria-label": "Chat settings" },
        h("h2", {}, "Settings"),
        field("Model", model),
        field("Persona", persona, "Who the model is; its adherence is measured per answer."),
        field("Collection", collection, collections.refused ? "This key may not read collections." : "Answers cite retrieved chunks."),
        ragFields,
        h("details", { class: "sampling" },
          h("summary", {}, "Sampling"),
          SAMPLING.map(([name, label]) => field(label, sampling[name]))),
        h("div", { class: "buttons" },
          h("button", { type: "button", class: "quiet", "data-copy": "curl", onclick: () => dialog.show("curl", curl(requestBody(true))) }, "Copy as curl"),
          h("button", { type: "button", class: "quiet", "data-copy": "python", onclick: () => dialog.show("Python (openai)", python(requestBody(true))) }, "Copy as Python"),
          h("button", { type: "button", class: "quiet", onclick: () => {
            running?.abort();
            conversation.length = 0;
            messages.replaceChildren();
          } }, "Clear"))),
      h("section", { class: "conversation" }, messages, form)),
    dialog.element);
  input.focus();
}

/** An assistant message being streamed, with its stats, citations and adherence. */
function newAnswer(id, personaId, modelId) {
  const content = h("p", { class: "content" });
  const stats = h("p", { class: "stats" }, "waiting for the first token…");
  const extra = h("div", { class: "extra" });
  const element = h("li", { class: "message assistant", id, "data-state": "streaming" },
    h("span", { class: "role" }, personaId ? `${modelId} as ${personaId}` : modelId),
    content, stats, extra);
  let citations = [];

  return {
    element,
    content,
    stats,
    showStats({ started, first, ended, parts, usage, finish }) {
      const tokens = usage?.completion_tokens ?? parts;
      const ttft = first === null ? null : first - started;
      const rate = first !== null && tokens > 1 && ended > first ? (tokens - 1) / ((ended - first) / 1000) : null;
      replace(stats,
        h("span", { class: "ttft" }, `first token ${ttft === null ? "–" : `${number(ttft)} ms`}`),
        h("span", { class: "rate" }, `${rate === null ? "–" : number(rate, 1)} tokens/s`),
        h("span", {}, `${usage ? "" : "≈"}${number(tokens)} tokens`),
        finish ? h("span", { class: `finish finish-${finish}` }, finish) : null);
    },
    showCitations(list, collection) {
      citations = list;
      extra.append(h("section", { class: "citations", "aria-label": "Sources" },
        h("h3", {}, "Sources"),
        h("ol", {}, list.map((cite) => h("li", { id: `${id}-cite-${cite.number}`, value: cite.number },
          h("details", {},
            h("summary", {},
              h("strong", {}, cite.document_id),
              ` · chunk ${cite.chunk_index} · bytes ${cite.start}–${cite.end} · score ${number(cite.score, 3)}`),
            h("blockquote", {}, cite.text),
            collection ? h("a", { href: `#knowledge?collection=${encodeURIComponent(collection)}&q=${encodeURIComponent(cite.text.slice(0, 80))}` }, "Find in Knowledge") : null))))));
    },
    /** Turns `[n]` in the finished answer into links to source n. */
    linkCitations(text) {
      if (!citations.length) return;
      const numbers = new Set(citations.map((cite) => cite.number));
      const parts = [];
      let last = 0;
      for (const match of text.matchAll(/\[(\d+)\]/g)) {
        const n = Number(match[1]);
        if (!numbers.has(n)) continue;
        parts.push(text.slice(last, match.index));
        parts.push(h("a", { class: "cite", href: `#${id}-cite-${n}`, onclick: (event) => {
          event.preventDefault();
          const target = document.getElementById(`${id}-cite-${n}`);
          target?.querySelector("details")?.setAttribute("open", "");
          target?.scrollIntoView({ block: "center" });
        } }, `[${n}]`));
        last = match.index + match[0].length;
      }
      parts.push(text.slice(last));
      replace(content, parts);
    },
    showAdherence(adherence) {
      const rows = Object.entries(adherence.traits).map(([name, score]) => h("tr", {},
        h("th", { scope: "row" }, name),
        h("td", {}, number(score.target, 2)),
        h("td", {}, number(score.measured, 2)),
        h("td", {}, h("meter", { min: 0, max: 1, value: score.score }), ` ${number(score.score, 2)}`)));
      extra.append(h("details", { class: "adherence" },
        h("summary", {}, `Persona adherence `, h("strong", { class: "adherence-score" }, number(adherence.score, 2)),
          ` (${adherence.persona})`),
        h("table", {},
          h("thead", {}, h("tr", {}, ["Trait", "Target", "Measured", "Score"].map((name) => h("th", { scope: "col" }, name)))),
          h("tbody", {}, rows))));
    },
  };
}

/** A dialog that shows code to copy. */
function codeDialog() {
  const title = h("h2", {});
  const code = h("textarea", { readOnly: true, rows: 16, "aria-label": "Code", spellcheck: "false" });
  const status = h("span", { class: "muted" });
  const element = h("dialog", { class: "code" }, title, code,
    h("div", { class: "buttons" },
      h("button", { type: "button", onclick: async () => {
        status.textContent = (await copy(code.value, code)) ? "Copied." : "Selected: press Ctrl+C to copy.";
      } }, "Copy"),
      h("button", { type: "button", class: "quiet", onclick: () => element.close() }, "Close"),
      status));
  return {
    element,
    show(name, text) {
      title.textContent = `The conversation as ${name}`;
      code.value = text;
      status.textContent = "";
      element.showModal();
    },
  };
}

function curl(body) {
  const json = JSON.stringify(body, null, 2).replaceAll("'", "'\\''");
  return [
    `curl -N ${location.origin}/v1/chat/completions \\`,
    `  -H "Authorization: Bearer $SLOUGH_API_KEY" \\`,
    `  -H "Content-Type: application/json" \\`,
    `  -d '${json}'`,
  ].join("\n");
}

/** `value` as a Python literal. */
function py(value, indent = "") {
  const inner = `${indent}    `;
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") return String(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((item) => `${inner}${py(item, inner)},`).join("\n")}\n${indent}]`;
  }
  const entries = Object.entries(value);
  if (!entries.length) return "{}";
  return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${py(v, inner)},`).join("\n")}\n${indent}}`;
}

function python(body) {
  const { model, messages, stream, stream_options: _options, persona, rag, ...sampling } = body;
  const extra = {};
  if (persona) extra.persona = persona;
  if (rag) extra.rag = rag;
  for (const name of ["top_k", "min_p", "repetition_penalty"]) {
    if (name in sampling) {
      extra[name] = sampling[name];
      delete sampling[name];
    }
  }
  const args = [
    `    model=${py(model)},`,
    `    messages=${py(messages, "    ")},`,
    `    stream=${py(stream)},`,
    ...Object.entries(sampling).map(([name, value]) => `    ${name}=${py(value)},`),
  ];
  if (Object.keys(extra).length) args.push(`    extra_body=${py(extra, "    ")},`);
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    `client = OpenAI(base_url=${py(`${location.origin}/v1`)}, api_key=os.environ["SLOUGH_API_KEY"])`,
    "stream = client.chat.completions.create(",
    ...args,
    ")",
    "for chunk in stream:",
    "    if chunk.choices:",
    "        print(chunk.choices[0].delta.content or \"\", end=\"\", flush=True)",
    "print()",
  ].join("\n");
}
