// Knowledge: the collections with their sizes, a new collection, uploads of text,
// Markdown and JSONL files with progress, and a search shown dense, sparse and hybrid
// side by side.

import * as api from "../api.js";
import { bytes, field, h, number, replace, select, table, when } from "../dom.js";

export async function render(root, ctx) {
  const [collections, models] = await Promise.all([
    api.get("/v1/collections", ctx.signal),
    api.get("/v1/models", ctx.signal),
  ]);
  const chosen = ctx.params.get("collection") ?? collections.data[0]?.name ?? null;
  const go = (name, query) => {
    const params = new URLSearchParams({ collection: name });
    if (query) params.set("q", query);
    location.hash = `knowledge?${params}`;
  };

  const rows = collections.data.map((c) => [
    h("a", { href: `#knowledge?collection=${encodeURIComponent(c.name)}`, "aria-current": c.name === chosen ? "true" : null }, c.name),
    number(c.documents), number(c.chunks), c.embedding_model, `${c.chunk_size} / ${c.chunk_overlap}`, when(c.created_at),
    h("button", { type: "button", class: "quiet danger", onclick: async () => {
      if (!confirm(`Delete collection ${c.name} and its ${c.documents} documents?`)) return;
      try {
        await api.del(`/v1/collections/${encodeURIComponent(c.name)}`);
        ctx.notify(`Collection ${c.name} deleted.`, "ok");
        location.hash = "knowledge";
        if (c.name !== chosen) render(root, ctx);
      } catch (err) {
        ctx.fail(err);
      }
    } }, "Delete"),
  ]);

  const embedding = models.data.filter((m) => m.kind === "embedding").map((m) => m.id);
  const name = h("input", { name: "name", required: true, pattern: "[a-z0-9][a-z0-9_-]{0,63}", placeholder: "docs" });
  const model = select(embedding, { name: "embedding_model" });
  const create = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api.post("/v1/collections", { name: name.value, embedding_model: model.value });
      ctx.notify(`Collection ${name.value} created.`, "ok");
      go(name.value);
    } catch (err) {
      ctx.fail(err);
    }
  } }, field("Name", name, "Lowercase letters, digits, - and _."), field("Embedding model", model), h("button", { type: "submit" }, "Create collection"));

  replace(root,
    h("h1", {}, "Knowledge"),
    h("section", { class: "panel" },
      h("h2", {}, "Collections"),
      collections.data.length
        ? table(["Name", "Documents", "Chunks", "Embedding model", "Chunk size / overlap", "Created", ""], rows, { id: "collections" })
        : h("p", { class: "muted" }, "No collections yet: create one, then upload documents to it."),
      create),
    chosen ? collectionPanel(chosen, ctx, go) : null);
}

function collectionPanel(name, ctx, go) {
  const path = `/v1/collections/${encodeURIComponent(name)}`;
  const files = h("input", { type: "file", name: "files", multiple: true, accept: ".txt,.md,.markdown,.jsonl,text/plain,text/markdown" });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("span", { class: "muted", "aria-live": "polite" });
  const results = h("div", { class: "upload-results" });
  const uploadForm = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    if (!files.files.length) {
      ctx.notify("Choose one or more files to upload first.");
      return;
    }
    const form = new FormData();
    let total = 0;
    for (const file of files.files) {
      form.append("file", file, file.name);
      total += file.size;
    }
    progress.hidden = false;
    progress.value = 0;
    progressText.textContent = `uploading ${files.files.length} file(s), ${bytes(total)}…`;
    try {
      const answer = await api.upload(`${path}/documents`, form, (sent, size) => {
        progress.value = sent / size;
        progressText.textContent = sent < size ? `uploading… ${Math.round((100 * sent) / size)}%` : "embedding and indexing…";
      });
      progress.value = 1;
      progressText.textContent = `done: ${answer.documents.length} document(s), ${answer.chunks} chunk(s)`;
      replace(results, table(["Document", "Chunks", "Status"],
        answer.documents.map((d) => [d.id, number(d.chunks), d.status]), { class: "compact" }));
      files.value = "";
      ctx.notify(`Uploaded to ${name}: ${answer.chunks} chunks indexed.`, "ok");
    } catch (err) {
      progress.hidden = true;
      progressText.textContent = "";
      ctx.fail(err);
    }
  } }, field("Files (text, Markdown, JSONL)", files, "JSONL: one document per line, with id, text and optional metadata."),
  h("button", { type: "submit" }, "Upload"), progress, progressText);

  const query = h("input", { type: "search", name: "q", required: true, placeholder: "What are you looking for?", value: ctx.params.get("q") ?? "" });
  const topK = h("input", { type: "number", name: "top_k", min: 1, max: 100, value: 5 });
  const columns = h("div", { class: "search-columns" });
  async function search() {
    const body = { query: query.value, top_k: Number(topK.value) || 5 };
    replace(columns, h("p", { class: "muted" }, "searching…"));
    try {
      const answers = await Promise.all(["dense", "sparse", "hybrid"].map(async (mode) => {
        const started = performance.now();
        const answer = await api.post(`${path}/search`, { ...body, mode }, ctx.signal);
        return { mode, hits: answer.hits, ms: performance.now() - started };
      }));
      replace(columns, answers.map(({ mode, hits, ms }) => h("section", { class: `hits hits-${mode}`, "aria-label": `${mode} results` },
        h("h3", {}, mode, h("small", { class: "muted" }, ` ${hits.length} hits, ${number(ms)} ms`)),
        hits.length ? h("ol", {}, hits.map((hit) => h("li", {},
          h("p", { class: "hit-head" }, h("strong", {}, hit.document_id), ` · chunk ${hit.chunk_index} · score ${number(hit.score, 3)}`),
          h("p", { class: "hit-text" }, hit.text)))) : h("p", { class: "muted" }, "No hits."))));
    } catch (err) {
      replace(columns);
      ctx.fail(err);
    }
  }
  const searchForm = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    const before = location.hash;
    go(name, query.value);
    // The same query again changes nothing in the address, so no new page runs it.
    if (location.hash === before) search();
  } }, field("Query", query), field("Hits", topK), h("button", { type: "submit" }, "Search"));
  if (query.value) search();

  return h("section", { class: "panel", id: "collection" },
    h("h2", {}, `Collection ${name}`),
    h("h3", {}, "Upload documents"), uploadForm, results,
    h("h3", {}, "Try a search"), searchForm, columns,
    h("p", {}, h("a", { href: `#chat?collection=${encodeURIComponent(name)}` }, `Chat with ${name} →`)));
}
