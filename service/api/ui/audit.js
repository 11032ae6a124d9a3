// The audit log: the project's admin actions, newest first (who, what, on which object, how it ended), filtered by
// action, object, key, outcome and time, paged with the API's `after` cursor. Reading it takes an admin key.
import { api, gatewayConfig } from "./api.js";
import { badge, errorBox, h } from "./dom.js";
import { range, RANGE_HELP, rangeFields } from "./timerange.js";

const PAGE = 20;
const FILTERS = ["action", "object", "key", "outcome", "from", "to"];

// To the second (two actions a moment apart should not read as one); the date and the time each kept on one line.
function at(s) {
  const moment = new Date(s * 1000);
  return [h("span", { class: "nowrap" }, moment.toLocaleDateString(undefined, { dateStyle: "medium" })), " ",
    h("span", { class: "nowrap" }, moment.toLocaleTimeString(undefined, { timeStyle: "medium" }))];
}

const actor = (e) => e.actor.key_id || (e.actor.role === "runner" ? "the gateway" : "no key");

const address = (query) => {
  const kept = Object.entries(query).filter(([, v]) => v);
  return `#/audit${kept.length ? `?${new URLSearchParams(kept)}` : ""}`;
};

export async function list(main, { query, signal }) {
  document.title = "Audit log · skillserve";
  const chosen = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || ""]));
  const after = query.get("after") || "";
  const config = await gatewayConfig();

  const field = (id, label, control, help) => h("div", { class: "field" }, h("label", { for: id }, label), control,
    help ? h("small", {}, help) : null);
  const actionInput = h("input", { id: "audit-action", list: "audit-actions", value: chosen.action, spellcheck: "false",
    placeholder: "adapter.delete" });
  const objectInput = h("input", { id: "audit-object", value: chosen.object, spellcheck: "false", placeholder: "shout@3" });
  const keyInput = h("input", { id: "audit-key", value: chosen.key, spellcheck: "false", placeholder: "key_9b2f4c1e0a7d3b58" });
  const outcomePick = h("select", { id: "audit-outcome" }, [["", "any"], ["succeeded", "succeeded"], ["failed", "failed"]]
    .map(([value, label]) => h("option", { value, selected: value === chosen.outcome }, label)));
  const period = rangeFields("audit", { from: chosen.from, until: chosen.to });
  const filters = h("form", {
    class: "card row filters",
    onsubmit: (event) => {
      event.preventDefault();
      location.hash = address({ action: actionInput.value.trim(), object: objectInput.value.trim(),
        key: keyInput.value.trim(), outcome: outcomePick.value, from: period.from.value, to: period.until.value });
    },
  },
  field("audit-action", "Action", actionInput),
  h("datalist", { id: "audit-actions" }, (config.audit_actions || []).map((name) => h("option", { value: name }))),
  field("audit-object", "Object", objectInput),
  field("audit-key", "Key", keyInput),
  field("audit-outcome", "Outcome", outcomePick),
  period.fields,
  h("div", { class: "field", style: "flex:0 0 auto" }, h("button", { type: "submit" }, "Filter")));

  const head = h("div", { class: "head" }, h("div", {}, h("h1", {}, "Audit log"),
    h("p", { class: "muted" }, "Who changed this project's skills, files, jobs, evals, batches and stored completions, ",
      "and how it ended, newest first; refused attempts too. The same log as ", h("code", {}, "GET /v1/audit"), " and ",
      h("code", {}, "skillserve audit"), ".")));

  const span = range(chosen.from, chosen.to);
  if (span === null) {
    main.replaceChildren(head, filters, h("p", { class: "card alert", role: "alert" }, RANGE_HELP));
    return;
  }
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (chosen.action) params.set("action", chosen.action);
  if (chosen.object) params.set("object_id", chosen.object);
  if (chosen.key) params.set("actor_key_id", chosen.key);
  if (chosen.outcome) params.set("outcome", chosen.outcome);
  if (span.start !== null) params.set("start_time", String(span.start));
  if (span.end !== null) params.set("end_time", String(span.end));
  if (after) params.set("after", after);
  let page;
  try {
    page = await api(`/v1/audit?${params}`, { signal });
  } catch (error) {
    if (error.status === 401) throw error;
    main.replaceChildren(head, filters, errorBox(error.status === 403 ? "Reading the audit log needs an admin key"
      : "The audit log could not be read", error));
    return;
  }

  // The key, the action and the object of a row filter the log to it, the other filters kept.
  const only = (key, value) => h("a", { href: address({ ...chosen, [key]: value }), title: `only ${value}` }, value);
  const who = (e) => h("span", { class: "mono" }, e.actor.key_id ? only("key", e.actor.key_id) : actor(e));
  const object = (e) => [e.object_id ? only("object", e.object_id) : "—",
    Object.keys(e.detail || {}).length ? h("div", { class: "muted" }, Object.entries(e.detail).map(([k, v]) => `${k}=${v}`).join(", ")) : null];
  // On a phone the who and object columns give way: who sits under when, the object under the action.
  const row = (e) => h("tr", { "data-entry": e.id, "data-action": e.action, "data-outcome": e.outcome },
    h("th", { scope: "row" }, at(e.created_at), h("div", { class: "narrow-only muted" }, who(e),
      ` ${e.actor.role}`)),
    h("td", { class: "hide-narrow" }, who(e), h("div", { class: "muted" }, e.actor.role)),
    h("td", {}, h("span", { class: "mono" }, only("action", e.action)),
      e.route ? h("div", { class: "muted mono hide-narrow" }, `${e.method} ${e.route}`) : null,
      h("div", { class: "narrow-only mono object" }, object(e))),
    h("td", { class: "mono object hide-narrow" }, object(e)),
    h("td", { class: "outcome" }, badge(e.outcome), " ", h("span", { class: "mono" }, e.status_code ?? ""),
      e.error_code ? h("div", { class: "mono muted" }, e.error_code) : null));
  const filtered = FILTERS.some((k) => chosen[k]);
  const table = h("div", { class: "card table-wrap" }, h("table", { id: "audit" },
    h("thead", {}, h("tr", {}, h("th", {}, "when"), h("th", { class: "hide-narrow" }, "who"), h("th", {}, "action"), h("th", { class: "hide-narrow" }, "object"),
      h("th", {}, "outcome"))),
    h("tbody", {}, page.data.length ? page.data.map(row)
      : h("tr", {}, h("td", { colspan: 5, class: "empty" }, filtered ? "No entry matches these filters." : "No admin action yet.")))));

  const here = Object.fromEntries([...query.entries()].filter(([k]) => k !== "after"));
  const pager = h("p", { class: "row" },
    after ? h("a", { class: "button ghost small", href: address(here) }, "Newest") : null,
    page.has_more ? h("a", { class: "button ghost small", href: address({ ...here, after: page.last_id }) }, "Older") : null);
  main.replaceChildren(head, filters, table, pager);
}
