// Operations (admin keys): every service instance as monitoring sees it (refreshed every
// few seconds), the models loaded, the API keys (create with scopes and limits, the
// secret shown once, revoke) and one key's usage over time with latency percentiles.

import * as api from "../api.js";
import { lineChart, timeLabel } from "../chart.js";
import { copy, duration, field, h, number, replace, select, table, when } from "../dom.js";

const SCOPES = ["inference", "rag", "fine-tune", "admin"];
const RANGES = {
  hour: { label: "Last hour, by minute", ms: 3600e3, interval: "minute" },
  day: { label: "Last day, by hour", ms: 86400e3, interval: "hour" },
  month: { label: "Last 30 days, by day", ms: 30 * 86400e3, interval: "day" },
};

export async function render(root, ctx) {
  let status;
  try {
    status = await api.get("/v1/status", ctx.signal);
  } catch (err) {
    if (err.status !== 403) throw err;
    replace(root, h("h1", {}, "Operations"), h("section", { class: "panel" },
      h("p", {}, "Operations needs a key with the admin scope. ", h("span", { class: "muted" }, err.message))));
    return;
  }
  const [models, keys] = await Promise.all([api.get("/v1/models", ctx.signal), api.get("/v1/keys", ctx.signal)]);
  const instances = h("div", { id: "instances" });
  showInstances(instances, status);
  const timer = setInterval(async () => {
    try {
      showInstances(instances, await api.get("/v1/status", ctx.signal));
    } catch (err) {
      ctx.fail(err);
    }
  }, 5000);
  ctx.signal.addEventListener("abort", () => clearInterval(timer));

  replace(root,
    h("h1", {}, "Operations"),
    h("section", { class: "panel" }, h("h2", {}, "Service instances"), instances),
    h("section", { class: "panel" }, h("h2", {}, "Models"),
      table(["Model", "Kind", "Context", "Fine-tuned from", "Owner"], models.data.filter((m) => !m.persona).map((m) => [
        m.id, m.kind, number(m.context_length), m.parent ?? "–", m.owned_by,
      ]), { class: "compact", id: "models" }),
      h("p", { class: "muted" }, `Each chat model is also served as <model>:<persona>, for ${new Set(models.data.map((m) => m.persona).filter(Boolean)).size} personas.`)),
    keysPanel(keys, ctx, () => render(root, ctx)),
    usagePanel(keys, ctx));
}

function showInstances(element, status) {
  const rows = status.instances.map((i) => {
    const requests = i.endpoints.reduce((sum, e) => sum + e.requests, 0);
    const errors = i.endpoints.reduce((sum, e) => sum + e.errors, 0);
    const mean = requests ? i.endpoints.reduce((sum, e) => sum + e.average_processing_ms * e.requests, 0) / requests : null;
    return [
      i.service,
      h("code", { title: i.id }, `…${i.id.slice(-8)}`),
      i.version,
      duration(i.uptime_seconds),
      i.healthy ? h("span", { class: "status status-succeeded" }, "healthy") : h("span", { class: "status status-failed", title: i.problem ?? "" }, `unhealthy: ${i.problem ?? "no answer"}`),
      number(requests), number(errors), mean === null ? "–" : `${number(mean, 1)} ms`,
    ];
  });
  replace(element,
    table(["Service", "Instance", "Version", "Uptime", "Health", "Requests", "Errors", "Mean time"], rows, { class: "compact" }),
    h("p", { class: "muted" }, `Swept ${when(status.swept_at)}; refreshed every 5 s.`));
}

function keysPanel(keys, ctx, reload) {
  const name = h("input", { name: "name", required: true, placeholder: "team-a" });
  const scopes = SCOPES.map((scope) => h("input", { type: "checkbox", name: "scope", value: scope, id: `scope-${scope}`, checked: scope === "inference" }));
  const rpm = h("input", { type: "number", name: "requests_per_minute", min: 1, placeholder: "unlimited" });
  const tpm = h("input", { type: "number", name: "tokens_per_minute", min: 1, placeholder: "unlimited" });
  const budget = h("input", { type: "number", name: "token_budget", min: 1, placeholder: "unlimited" });
  const models = h("input", { name: "models", placeholder: "all models" });
  const secret = h("div", { class: "secret", role: "status" });
  const form = h("form", { class: "key-form", onsubmit: async (event) => {
    event.preventDefault();
    const body = { name: name.value, scopes: scopes.filter((s) => s.checked).map((s) => s.value) };
    if (rpm.value) body.requests_per_minute = Number(rpm.value);
    if (tpm.value) body.tokens_per_minute = Number(tpm.value);
    if (budget.value) body.token_budget = Number(budget.value);
    if (models.value.trim()) body.models = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    try {
      const created = await api.post("/v1/keys", body);
      const value = h("input", { readOnly: true, value: created.secret, class: "mono", "aria-label": "The new key", id: "new-secret" });
      replace(secret,
        h("p", {}, h("strong", {}, `Key ${created.key.name} created. `), "Copy it now: it is shown only this once."),
        h("div", { class: "inline" }, value,
          h("button", { type: "button", onclick: () => copy(created.secret, value) }, "Copy"),
          h("button", { type: "button", class: "quiet", onclick: reload }, "Done")));
    } catch (err) {
      ctx.fail(err);
    }
  } },
  field("Name", name),
  h("fieldset", { class: "scopes" }, h("legend", {}, "Scopes"),
    scopes.map((box) => h("label", { for: box.id, class: "check" }, box, ` ${box.value}`))),
  field("Requests per minute", rpm), field("Tokens per minute", tpm), field("Token budget", budget),
  field("Models (comma-separated)", models),
  h("button", { type: "submit" }, "Create key"));

  const rows = keys.data.map((k) => [
    k.name, h("code", {}, `${k.prefix}…`), k.scopes.join(", "),
    [k.requests_per_minute && `${k.requests_per_minute} req/min`, k.tokens_per_minute && `${k.tokens_per_minute} tok/min`, k.token_budget && `budget ${number(k.token_budget)}`].filter(Boolean).join(", ") || "none",
    when(k.created_at),
    k.revoked_at ? h("span", { class: "status status-cancelled" }, `revoked ${when(k.revoked_at)}`)
      : h("button", { type: "button", class: "quiet danger", "data-key": k.name, onclick: async () => {
        if (!confirm(`Revoke key ${k.name}? Requests with it fail from now on.`)) return;
        try {
          await api.del(`/v1/keys/${k.id}`);
          ctx.notify(`Key ${k.name} revoked.`, "ok");
          reload();
        } catch (err) {
          ctx.fail(err);
        }
      } }, "Revoke"),
  ]);
  return h("section", { class: "panel", id: "keys" },
    h("h2", {}, "API keys"),
    table(["Name", "Key", "Scopes", "Limits", "Created", ""], rows, { class: "compact", id: "key-table" }),
    h("h3", {}, "New key"), form, secret);
}

function usagePanel(keys, ctx) {
  const active = keys.data.filter((k) => !k.revoked_at);
  const key = select(active.map((k) => [k.id, k.name]), { name: "key" });
  const range = select(Object.entries(RANGES).map(([value, r]) => [value, r.label]), { name: "range", value: "hour" });
  const charts = h("div", { class: "charts" });
  const totals = h("p", { class: "muted" });
  async function show() {
    if (!key.value) return;
    const chosen = RANGES[range.value];
    const since = new Date(Math.floor((Date.now() - chosen.ms) / 60000) * 60000).toISOString();
    try {
      const report = await api.get(`/v1/usage?${new URLSearchParams({ key_id: key.value, since, interval: chosen.interval })}`, ctx.signal);
      const x = report.series.map((b) => Date.parse(b.start));
      const formatX = timeLabel(chosen.ms);
      totals.textContent = `${number(report.requests)} requests, ${number(report.prompt_tokens)} prompt and ${number(report.completion_tokens)} completion tokens`
        + (report.budget_remaining === null || report.budget_remaining === undefined ? "" : `; ${number(report.budget_remaining)} tokens left of the budget`);
      replace(charts,
        lineChart({ x, formatX, formatY: (v) => number(v), yMin: 0, label: "Requests", series: [
          { name: "requests", values: report.series.map((b) => b.requests) },
          { name: "errors", values: report.series.map((b) => b.errors) }] }),
        lineChart({ x, formatX, formatY: (v) => number(v), yMin: 0, label: "Tokens", series: [
          { name: "prompt", values: report.series.map((b) => b.prompt_tokens) },
          { name: "completion", values: report.series.map((b) => b.completion_tokens) }] }),
        lineChart({ x, formatX, formatY: (v) => `${number(v)} ms`, yMin: 0, label: "Latency percentiles", series: [
          { name: "p50", values: report.series.map((b) => b.latency_p50_ms) },
          { name: "p95", values: report.series.map((b) => b.latency_p95_ms) }] }));
    } catch (err) {
      ctx.fail(err);
    }
  }
  key.addEventListener("change", show);
  range.addEventListener("change", show);
  show();
  return h("section", { class: "panel", id: "usage" },
    h("h2", {}, "Usage over time"),
    h("div", { class: "inline" }, field("Key", key), field("Range", range)),
    totals, charts);
}
