// Personas: the list, one persona in full, a copy of a built-in one, editing a stored
// one's traits, rules and template with a live preview of the system prompt it
// composes (rendered by the personality service, nothing stored until saved), and the
// style metrics of any text.

import * as api from "../api.js";
import { field, h, number, replace, table } from "../dom.js";

const TRAITS = ["warmth", "formality", "verbosity", "humour", "optimism"];

export async function render(root, ctx) {
  const list = await api.get("/v1/personas", ctx.signal);
  const chosen = list.data.find((p) => p.id === ctx.params.get("id")) ?? list.data[0];
  const nav = h("ul", { class: "persona-list" }, list.data.map((p) => h("li", {},
    h("a", { href: `#personas?id=${encodeURIComponent(p.id)}`, "aria-current": p.id === chosen?.id ? "true" : null },
      h("strong", {}, p.name), h("small", { class: "muted" }, ` ${p.id}${p.builtin ? " · built-in" : ""}`)))));
  replace(root,
    h("h1", {}, "Personas"),
    h("div", { class: "two-columns personas-layout" },
      h("aside", { class: "panel", "aria-label": "Personas" }, h("h2", {}, "All personas"), nav),
      chosen ? personaPanel(chosen, ctx) : h("p", {}, "No personas.")),
    analyzePanel(ctx));
}

function personaPanel(persona, ctx) {
  const path = `/v1/personas/${encodeURIComponent(persona.id)}`;
  const readOnly = persona.builtin;
  const inputs = {
    name: h("input", { name: "name", value: persona.name, disabled: readOnly }),
    description: h("input", { name: "description", value: persona.description, disabled: readOnly }),
    archetype: h("input", { name: "archetype", value: persona.archetype, disabled: readOnly }),
    style_rules: h("textarea", { name: "style_rules", rows: 4, disabled: readOnly }),
    system_template: h("textarea", { name: "system_template", rows: 8, spellcheck: "false", class: "mono", disabled: readOnly }),
  };
  inputs.style_rules.value = persona.style_rules.join("\n");
  inputs.system_template.value = persona.system_template;
  const sliders = Object.fromEntries(TRAITS.map((name) => {
    const output = h("output", {}, number(persona.traits[name], 2));
    const slider = h("input", { type: "range", name, min: 0, max: 1, step: 0.05, value: persona.traits[name], disabled: readOnly });
    slider.addEventListener("input", () => { output.textContent = number(slider.value, 2); });
    return [name, { slider, output }];
  }));
  const preview = h("pre", { class: "preview", "aria-live": "polite" }, "…");
  const previewError = h("p", { class: "error-text", role: "status" });

  const patch = () => ({
    name: inputs.name.value,
    description: inputs.description.value,
    archetype: inputs.archetype.value,
    style_rules: inputs.style_rules.value.split("\n").map((line) => line.trim()).filter(Boolean),
    system_template: inputs.system_template.value,
    traits: Object.fromEntries(TRAITS.map((name) => [name, Number(sliders[name].slider.value)])),
  });
  let timer = null;
  async function refreshPreview() {
    try {
      const answer = await api.post(`${path}/preview`, readOnly ? {} : patch(), ctx.signal);
      preview.textContent = answer.system_prompt;
      previewError.textContent = "";
    } catch (err) {
      if (err.name === "AbortError") return;
      previewError.textContent = `${err.param ? `${err.param}: ` : ""}${err.message}`;
    }
  }
  const later = () => {
    clearTimeout(timer);
    timer = setTimeout(refreshPreview, 250);
  };
  for (const control of [...Object.values(inputs), ...Object.values(sliders).map((s) => s.slider)]) {
    control.addEventListener("input", later);
  }
  refreshPreview();

  const save = h("form", { class: "persona-form", onsubmit: async (event) => {
    event.preventDefault();
    try {
      await api.post(path, patch());
      ctx.notify(`Persona ${persona.id} saved.`, "ok");
    } catch (err) {
      ctx.fail(err);
    }
  } },
  field("Name", inputs.name),
  field("Description", inputs.description),
  field("Archetype", inputs.archetype),
  h("fieldset", { class: "traits" }, h("legend", {}, "Traits (0 to 1)"),
    TRAITS.map((name) => h("div", { class: "trait" },
      h("label", { for: `trait-${name}` }, name), Object.assign(sliders[name].slider, { id: `trait-${name}` }), sliders[name].output))),
  field("Style rules, one per line", inputs.style_rules),
  field("System template (minijinja: name, description, archetype, traits, style_rules)", inputs.system_template),
  readOnly ? null : h("div", { class: "buttons" },
    h("button", { type: "submit" }, "Save"),
    h("button", { type: "button", class: "quiet danger", onclick: async () => {
      if (!confirm(`Delete persona ${persona.id}?`)) return;
      try {
        await api.del(path);
        ctx.notify(`Persona ${persona.id} deleted.`, "ok");
        location.hash = "personas";
      } catch (err) {
        ctx.fail(err);
      }
    } }, "Delete")));

  const copyId = h("input", { name: "id", required: true, pattern: "[a-z0-9][a-z0-9_-]{0,63}", placeholder: `my-${persona.id}` });
  const copyForm = h("form", { class: "inline", onsubmit: async (event) => {
    event.preventDefault();
    try {
      const made = await api.post("/v1/personas", { id: copyId.value, from: persona.id });
      ctx.notify(`Persona ${made.id} created from ${persona.id}; edit it below.`, "ok");
      location.hash = `personas?id=${encodeURIComponent(made.id)}`;
    } catch (err) {
      ctx.fail(err);
    }
  } }, field("New persona's id", copyId), h("button", { type: "submit" }, `Copy ${persona.name}`));

  const sampling = Object.entries(persona.sampling).filter(([, value]) => value !== null);
  return h("section", { class: "panel persona", id: "persona" },
    h("h2", {}, persona.name, h("small", { class: "muted" }, ` ${persona.id}`)),
    h("p", {}, persona.description),
    readOnly ? h("p", { class: "muted" }, "Built-in personas cannot change; copy one to make your own.") : null,
    copyForm,
    h("div", { class: "two-columns" },
      save,
      h("div", {},
        h("h3", {}, "System prompt it composes"),
        preview, previewError,
        sampling.length ? h("p", { class: "muted" }, `Sampling defaults: ${sampling.map(([k, v]) => `${k} ${v}`).join(", ")}`) : null,
        h("p", {}, h("a", { href: `#chat?persona=${encodeURIComponent(persona.id)}` }, `Chat as ${persona.name} →`)))));
}

function analyzePanel(ctx) {
  const text = h("textarea", { name: "text", rows: 5, required: true, placeholder: "Paste any text to measure its style." });
  const result = h("div", { class: "analysis" });
  const form = h("form", { onsubmit: async (event) => {
    event.preventDefault();
    try {
      const metrics = await api.post("/v1/personality/analyze", { text: text.value });
      const rows = [
        ["Sentiment (compound)", number(metrics.sentiment?.compound, 3)],
        ["Formality", number(metrics.formality, 3)],
        ["Flesch reading ease", number(metrics.flesch_reading_ease, 1)],
        ["Flesch–Kincaid grade", number(metrics.flesch_kincaid_grade, 1)],
        ["Words per sentence", number(metrics.avg_sentence_length, 1)],
        ["Lexical diversity", number(metrics.lexical_diversity, 3)],
        ["Emoji per word", number(metrics.emoji_density, 3)],
        ["Exclamations", number(metrics.exclamation_ratio, 3)],
        ["Questions", number(metrics.question_ratio, 3)],
      ];
      replace(result, table(["Metric", "Value"], rows, { class: "compact", id: "metrics" }));
    } catch (err) {
      ctx.fail(err);
    }
  } }, field("Text", text), h("button", { type: "submit" }, "Analyze"));
  return h("section", { class: "panel", id: "analyze" }, h("h2", {}, "Analyze a text's style"), form, result);
}
