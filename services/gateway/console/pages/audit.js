// Audit (admin keys): the audit log, newest first: who changed what, from where and how
// it ended, filtered by key, action, resource and outcome, a page of 50 at a time.
// Summaries hold parameter and field names only, never values, so they are shown whole.

import * as api from "../api.js";
import { field, h, replace, select, table, when } from "../dom.js";

const OUTCOMES = [["", "any"], ["succeeded", "succeeded"], ["refused", "refused"], ["failed", "failed"]];
const PAGE = 50;

export async function render(root, ctx) {
  let keys;
  try {
    keys = await api.get("/v1/keys", ctx.signal);
  } catch (err) {
    if (err.status !== 403) throw err;
    replace(root, h("h1", {}, "Audit"), h("section", { class: "panel" },
      h("p", {}, "The audit log needs a key with the admin scope. ", h("span", { class: "muted" }, err.message))));
    return;
  }
  const names = new Map(keys.data.map((k) => [k.id, k.name]));
  const actor = select([["", "anyone"], ...keys.data.map((k) => [k.id, k.name])], { name: "actor" });
  const action = h("input", { name: "action", placeholder: "e.g. DELETE /v1/keys/{id}" });
  const resource = h("input", { name: "resource_type", placeholder: "keys, collections, …" });
  const outcome = select(OUTCOMES, { name: "outcome" });
  const since = h("input", { type: "date", name: "since" });
  const rows = h("div", { id: "audit-events" });
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Older events");
  let after = null;

  async function load(append) {
    const query = new URLSearchParams({ limit: String(PAGE) });
    for (const [name, control] of [["actor", actor], ["action", action], ["resource_type", resource], ["outcome", outcome], ["since", since]]) {
      if (control.value.trim()) query.set(name, control.value.trim());
    }
    if (append && after) query.set("after", after);
    try {
      const page = await api.get(`/v1/audit?${query}`, ctx.signal);
      const found = page.data.map((event) => h("tr", {}, row(event, names).map((cell) => h("td", {}, cell))));
      if (!append) {
        replace(rows, page.data.length
          ? table(["When", "Who", "Action", "Resource", "Outcome", "From", "Request"], [], { class: "compact" })
          : h("p", { class: "muted" }, "No audit events match."));
      }
      rows.querySelector("tbody")?.append(...found);
      if (page.data.length) after = page.data[page.data.length - 1].id;
      more.hidden = !page.has_more;
    } catch (err) {
      ctx.fail(err);
    }
  }

  const form = h("form", { class: "inline", onsubmit: (event) => {
    event.preventDefault();
    after = null;
    load(false);
  } },
  field("Key", actor), field("Action", action), field("Resource type", resource),
  field("Outcome", outcome), field("Since", since),
  h("button", { type: "submit" }, "Show"));
  more.addEventListener("click", () => load(true));

  replace(root,
    h("h1", {}, "Audit"),
    h("section", { class: "panel" },
      h("p", { class: "muted" }, "Every change made through the API or by ", h("code", {}, "slough"),
        ", every export of personal data and every refused admin request, chained by hashes: ",
        h("code", {}, "slough audit verify"), " names a record changed behind the platform's back."),
      form, rows, more));
  await load(false);
}

/** The cells of one event's row. */
function row(event, names) {
  const who = names.get(event.actor) ?? (event.actor_prefix ? `${event.actor_prefix}…` : event.actor);
  const id = event.resource_type === "keys" ? names.get(event.resource_id) ?? event.resource_id : event.resource_id;
  const resource = id ? `${event.resource_type} ${id}` : event.resource_type;
  const summary = JSON.stringify(event.summary);
  return [
    h("span", { title: event.at }, when(event.at)),
    h("span", { title: event.actor }, who),
    h("code", { title: summary }, event.action),
    resource,
    h("span", { class: `status status-${event.outcome === "refused" ? "cancelled" : event.outcome}` }, `${event.outcome} (${event.status})`),
    event.client_address ?? "–",
    event.request_id ? h("code", { title: event.request_id }, `…${event.request_id.slice(-8)}`) : "–",
  ];
}
