// Fine-tuning: upload a training file (checked line by line on upload; a bad line is
// named in the error), start a job, watch its events and loss curve live, and open the
// model it made in the chat playground.

import * as api from "../api.js";
import { lineChart } from "../chart.js";
import { bytes, field, h, number, replace, select, table, when } from "../dom.js";

const ENDED = new Set(["succeeded", "failed", "cancelled"]);

export async function render(root, ctx) {
  const [models, files, jobs] = await Promise.all([
    api.get("/v1/models", ctx.signal),
    api.get("/v1/files?purpose=fine-tune", ctx.signal),
    api.get("/v1/fine_tuning/jobs?limit=50", ctx.signal),
  ]);
  const chosen = ctx.params.get("job") ?? jobs.data[0]?.id ?? null;
  const reload = () => render(root, ctx);

  replace(root,
    h("h1", {}, "Fine-tuning"),
    h("div", { class: "two-columns" },
      uploadPanel(files, ctx, reload),
      createPanel(models, files, ctx)),
    h("section", { class: "panel" },
      h("h2", {}, "Jobs"),
      jobs.data.length
        ? table(["Job", "Base model", "Status", "Created", "Model made"], jobs.data.map((job) => [
          h("a", { href: `#fine-tuning?job=${encodeURIComponent(job.id)}`, "aria-current": job.id === chosen ? "true" : null }, job.id),
          job.model,
          h("span", { class: `status status-${job.status}`, "data-job": job.id }, job.status),
          when(job.created_at),
          job.fine_tuned_model ? h("a", { href: `#chat?model=${encodeURIComponent(job.fine_tuned_model)}` }, job.fine_tuned_model) : "–",
        ]), { id: "jobs" })
        : h("p", { class: "muted" }, "No jobs yet: upload a training file and start one.")),
    chosen ? await jobPanel(chosen, ctx) : null);
}

function uploadPanel(files, ctx, reload) {
  const file = h("input", { type: "file", name: "file", accept: ".jsonl,application/jsonl", required: true });
  const progress = h("progress", { max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const problem = h("p", { class: "error-text", role: "status" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    const body = new FormData();
    body.append("purpose", "fine-tune");
    body.append("file", chosen, chosen.name);
    progress.hidden = false;
    problem.textContent = "";
    try {
      const stored = await api.upload("/v1/files", body, (sent, total) => { progress.value = sent / total; });
      ctx.notify(`Uploaded ${stored.filename} as ${stored.id}.`, "ok");
      reload();
    } catch (err) {
      progress.hidden = true;
      problem.textContent = err.message;
      ctx.fail(err);
    }
  } },
  field("Training file (JSONL)", file, "One example per line: {\"messages\": [...]} for a chat model, or {\"text\", \"label\"} for a classifier."),
  h("button", { type: "submit" }, "Upload"), progress, problem);
  return h("section", { class: "panel" },
    h("h2", {}, "Training files"),
    form,
    files.data.length
      ? table(["File", "Name", "Size", "Uploaded"], files.data.map((f) => [f.id, f.filename, bytes(f.bytes), when(f.created_at)]), { class: "compact", id: "files" })
      : h("p", { class: "muted" }, "No training files yet."));
}

function createPanel(models, files, ctx) {
  const chat = models.data.filter((m) => m.kind === "chat" && !m.persona).map((m) => m.id);
  const fileOptions = files.data.map((f) => [f.id, `${f.filename} (${f.id})`]);
  const model = select(chat, { name: "model" });
  const training = select(fileOptions, { name: "training_file" });
  const validation = select([["", "None"], ...fileOptions], { name: "validation_file" });
  const method = select([["supervised", "Supervised (chat)"], ["classifier", "Classifier"]], { name: "method" });
  const suffix = h("input", { name: "suffix", maxLength: 18, pattern: "[a-z0-9_-]{1,18}", placeholder: "my-model" });
  const epochs = h("input", { type: "number", name: "n_epochs", min: 1, max: 50, placeholder: "auto" });
  const batch = h("input", { type: "number", name: "batch_size", min: 1, max: 256, placeholder: "auto" });
  const rate = h("input", { type: "number", name: "learning_rate_multiplier", min: 0.01, max: 10, step: 0.01, placeholder: "auto" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    const body = { model: model.value, training_file: training.value, method: { type: method.value } };
    if (validation.value) body.validation_file = validation.value;
    if (suffix.value) body.suffix = suffix.value;
    const hyperparameters = {};
    if (epochs.value) hyperparameters.n_epochs = Number(epochs.value);
    if (batch.value) hyperparameters.batch_size = Number(batch.value);
    if (rate.value) hyperparameters.learning_rate_multiplier = Number(rate.value);
    if (Object.keys(hyperparameters).length) body.hyperparameters = hyperparameters;
    try {
      const job = await api.post("/v1/fine_tuning/jobs", body);
      ctx.notify(`Job ${job.id} created.`, "ok");
      location.hash = `fine-tuning?job=${encodeURIComponent(job.id)}`;
    } catch (err) {
      ctx.fail(err);
    }
  } },
  field("Base model", model), field("Training file", training), field("Validation file", validation),
  field("Method", method), field("Suffix", suffix, "Part of the new model's name."),
  h("div", { class: "row" }, field("Epochs", epochs), field("Batch size", batch), field("Learning rate multiplier", rate)),
  h("button", { type: "submit", disabled: !fileOptions.length }, "Start job"));
  return h("section", { class: "panel" }, h("h2", {}, "New job"), form);
}

/** Every event of a job, oldest first, paging through the newest-first list. */
async function allEvents(id, signal) {
  const events = [];
  let after = null;
  for (let page = 0; page < 50; page += 1) {
    const query = new URLSearchParams({ limit: "100" });
    if (after) query.set("after", after);
    const answer = await api.get(`/v1/fine_tuning/jobs/${encodeURIComponent(id)}/events?${query}`, signal);
    events.push(...answer.data);
    if (!answer.has_more || !answer.data.length) break;
    after = answer.data[answer.data.length - 1].id;
  }
  return events.reverse();
}

async function jobPanel(id, ctx) {
  const path = `/v1/fine_tuning/jobs/${encodeURIComponent(id)}`;
  const summary = h("dl", { class: "facts" });
  const chart = h("div", { class: "loss" });
  const log = h("ol", { class: "events", "aria-live": "polite", "aria-label": "Events" });
  const actions = h("div", { class: "buttons" });
  const panel = h("section", { class: "panel", id: "job" }, h("h2", {}, `Job ${id}`), summary, actions, chart, h("h3", {}, "Events"), log);

  async function refresh() {
    const [job, events] = await Promise.all([api.get(path, ctx.signal), allEvents(id, ctx.signal)]);
    replace(summary, [
      ["Status", h("span", { class: `status status-${job.status}` }, job.status)],
      ["Base model", job.model],
      ["Method", job.method?.type ?? "supervised"],
      ["Training file", job.training_file],
      ["Epochs", String(job.hyperparameters?.n_epochs ?? "auto")],
      ["Trained tokens", number(job.trained_tokens)],
      ["Created", when(job.created_at)],
      ["Finished", when(job.finished_at)],
      ["Model made", job.fine_tuned_model ?? "–"],
    ].flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]));
    // The jobs table above shows this job's status too.
    for (const cell of document.querySelectorAll(`[data-job="${CSS.escape(job.id)}"]`)) {
      cell.textContent = job.status;
      cell.className = `status status-${job.status}`;
    }
    if (job.error) summary.append(h("dt", {}, "Error"), h("dd", { class: "error-text" }, `${job.error.code}: ${job.error.message}`));
    replace(actions,
      job.fine_tuned_model ? h("a", { class: "button", href: `#chat?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Open in the playground") : null,
      ENDED.has(job.status) ? null : h("button", { type: "button", class: "danger", onclick: async () => {
        try {
          await api.post(`${path}/cancel`);
          ctx.notify(`Job ${id} cancelled.`, "ok");
        } catch (err) {
          ctx.fail(err);
        }
      } }, "Cancel job"));
    const steps = events.filter((e) => e.type === "metrics" && e.data);
    replace(chart, lineChart({
      x: steps.map((e) => e.data.step),
      series: [
        { name: "training loss", values: steps.map((e) => e.data.train_loss ?? null) },
        { name: "validation loss", values: steps.map((e) => e.data.valid_loss ?? null) },
      ],
      label: "Loss by step",
      formatX: (v) => number(v),
      formatY: (v) => number(v, 2),
    }));
    replace(log, events.slice().reverse().slice(0, 200).map((e) => h("li", { class: `level-${e.level}` },
      h("time", {}, when(e.created_at)), " ", e.message)));
    return ENDED.has(job.status);
  }

  const ended = await refresh();
  if (!ended) {
    const timer = setInterval(async () => {
      try {
        if (await refresh()) clearInterval(timer);
      } catch (err) {
        clearInterval(timer);
        ctx.fail(err);
      }
    }, 2000);
    ctx.signal.addEventListener("abort", () => clearInterval(timer));
  }
  return panel;
}
