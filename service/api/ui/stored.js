// Stored completions: a skill's kept answers (newest first, filtered by metadata and rating), one opened to its
// messages and answer with a rating and a corrected answer, and the filtered set exported as a /v1/files dataset
// (the export alone also by time: GET /v1/chat/completions, OpenAI's list, takes no time range).
import { api, apiText } from "./api.js";
import { badge, errorBox, h, when } from "./dom.js";
import { range, RANGE_HELP, rangeFields } from "./timerange.js";

const KINDS = {
  sft: "SFT rows: the conversations rated good or corrected, ending in the corrected answer",
  dpo: "DPO pairs: the corrected answer preferred to the original",
  evals: "Eval items: input, messages and the ideal answer, for the Evals API",
};
const PAGE = 20;

/** "app=demo, tier=free" -> {app: "demo", tier: "free"}; the same text back. */
function parseMetadata(text) {
  const pairs = (text || "").split(",").map((p) => p.trim()).filter(Boolean).map((p) => {
    const at = p.indexOf("=");
    return at > 0 ? [p.slice(0, at).trim(), p.slice(at + 1).trim()] : null;
  });
  return pairs.includes(null) ? null : Object.fromEntries(pairs);
}

const answerOf = (completion) => completion.choices?.[0]?.message?.content ?? "";

function ratingBadge(feedback) {
  if (!feedback) return h("span", { class: "muted" }, "unrated");
  return h("span", {}, feedback.rating ? badge(feedback.rating) : null, feedback.corrected ? h("span", { class: "badge corrected" }, "corrected") : null);
}

const forbidden = (what) => (error) => (error.status === 403 ? `${what} needs an admin key` : `${what} failed`);

// ------------------------------------------------------------------ the list, and the export

export async function list(main, { query, signal }) {
  document.title = "Stored completions · skillserve";
  const model = query.get("model") || "";
  const metadataText = query.get("metadata") || "";
  const rating = query.get("rating") || "";
  const after = query.get("after") || "";
  const metadata = parseMetadata(metadataText);

  const served = (await api("/v1/models", { signal })).data;
  const models = served.map((m) => m.id);
  // A new version starts from a skill; the base model is no skill, so an export of its answers trains a fresh one.
  const skill = model && served.some((m) => m.id === model && m.parent) ? model : "";
  const modelPick = h("select", { id: "stored-model" }, h("option", { value: "" }, "every model"),
    [...new Set([...models, ...(model ? [model] : [])])].map((id) => h("option", { value: id, selected: id === model }, id)));
  const metaInput = h("input", { id: "stored-metadata", value: metadataText, placeholder: "app=demo, tier=free", spellcheck: "false",
    "aria-describedby": "stored-metadata-help" });
  const ratingPick = h("select", { id: "stored-rating" }, [["", "any"], ["good", "good"], ["bad", "bad"], ["unrated", "unrated"]]
    .map(([value, label]) => h("option", { value, selected: value === rating }, label)));
  const filters = h("form", {
    class: "card row", style: "margin-bottom:1rem",
    onsubmit: (event) => {
      event.preventDefault();
      const next = Object.entries({ model: modelPick.value, metadata: metaInput.value.trim(), rating: ratingPick.value })
        .filter(([, v]) => v);
      location.hash = `#/stored${next.length ? `?${new URLSearchParams(next)}` : ""}`;
    },
  },
  h("div", { class: "field" }, h("label", { for: "stored-model" }, "Model"), modelPick),
  h("div", { class: "field" }, h("label", { for: "stored-metadata" }, "Metadata"), metaInput,
    h("small", { id: "stored-metadata-help" }, "key=value pairs, every one must match")),
  h("div", { class: "field" }, h("label", { for: "stored-rating" }, "Rating"), ratingPick),
  h("div", { class: "field", style: "flex:0 0 auto" }, h("button", { type: "submit" }, "Filter")));

  const head = h("div", { class: "head" }, h("div", {}, h("h1", {}, "Stored completions", model ? ` of ${model}` : ""),
    h("p", { class: "muted" }, "Answers kept with ", h("code", {}, "store: true"), ", newest first. Open one to rate it or correct it; ",
      "export the rated ones as a dataset to train the next version.")),
  h("div", { class: "actions" }, skill ? h("a", { class: "button ghost", href: `#/skills/${encodeURIComponent(skill)}` }, "The skill") : null));

  if (metadata === null) {
    main.replaceChildren(head, filters, h("p", { class: "card alert", role: "alert" }, "Metadata is key=value pairs separated by commas."));
    return;
  }
  const params = new URLSearchParams({ order: "desc", limit: String(PAGE) });
  if (model) params.set("model", model);
  if (rating) params.set("rating", rating);
  if (after) params.set("after", after);
  for (const [k, v] of Object.entries(metadata)) params.set(`metadata[${k}]`, v);
  let page;
  try {
    page = await api(`/v1/chat/completions?${params}`, { signal });
  } catch (error) {
    if (error.status === 401) throw error;
    main.replaceChildren(head, filters, errorBox(forbidden("Reading stored completions")(error), error));
    return;
  }

  const here = Object.fromEntries([...query.entries()].filter(([k]) => k !== "after"));
  const pager = h("p", { class: "row" },
    after ? h("a", { class: "button ghost small", href: `#/stored?${new URLSearchParams(here)}` }, "Newest") : null,
    page.has_more ? h("a", { class: "button ghost small", href: `#/stored?${new URLSearchParams({ ...here, after: page.last_id })}` }, "Older") : null);
  const rows = page.data.map((c) => {
    const question = h("td", {}, "…");
    const row = h("tr", { "data-completion": c.id },
      h("th", { scope: "row" }, h("a", { href: `#/stored/${encodeURIComponent(c.id)}` }, when(c.created)),
        h("div", { class: "muted mono" }, c.id.slice(-12))),
      h("td", { class: "mono hide-narrow" }, c.answered_by || c.model),
      question,
      h("td", {}, h("div", { class: "clip" }, answerOf(c))),
      h("td", {}, ratingBadge(c.feedback)),
      h("td", { class: "mono hide-narrow" }, Object.entries(c.metadata || {}).map(([k, v]) => `${k}=${v}`).join(", ")));
    return { c, row, question };
  });
  const table = h("div", { class: "card table-wrap" }, h("table", { id: "stored" },
    h("thead", {}, h("tr", {}, h("th", {}, "created"), h("th", { class: "hide-narrow" }, "answered by"), h("th", {}, "question"),
      h("th", {}, "answer"), h("th", {}, "feedback"), h("th", { class: "hide-narrow" }, "metadata"))),
    h("tbody", {}, rows.length ? rows.map((r) => r.row)
      : h("tr", {}, h("td", { colspan: 6, class: "empty" }, "Nothing stored matches. Ask with ", h("code", {}, "store: true"), " to keep answers.")))));

  main.replaceChildren(head, filters, table, pager, exportCard(model, skill, metadata, rating));
  // The question of each row fills in as it comes: the list object holds the answer, not the request.
  await Promise.all(rows.map(async ({ c, question }) => {
    const messages = (await api(`/v1/chat/completions/${encodeURIComponent(c.id)}/messages?order=desc&limit=100`, { signal })).data;
    const user = messages.find((m) => m.role === "user");
    question.replaceChildren(h("div", { class: "clip" }, user ? user.content ?? "" : "—"));
  }));
}

function exportCard(model, skill, metadata, rating) {
  const kind = h("select", { id: "export-kind" }, Object.entries(KINDS).map(([value, label]) => h("option", { value }, `${value} — ${label}`)));
  const filename = h("input", { id: "export-filename", placeholder: "stored-<kind>-<time>.jsonl", spellcheck: "false" });
  const period = rangeFields("export");
  const result = h("div", { id: "export-result" });
  const button = h("button", { type: "submit" }, "Export as dataset");
  // The export takes a rating of good or bad; "unrated" selects nothing to learn from, so it is not sent.
  const filter = { ...(model ? { model } : {}), ...(Object.keys(metadata).length ? { metadata } : {}),
    ...(rating === "good" || rating === "bad" ? { rating } : {}) };
  const described = Object.entries(filter).map(([k, v]) => `${k} ${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ");

  async function send(event) {
    event.preventDefault();
    const created = range(period.from.value, period.until.value);
    if (created === null) {
      result.replaceChildren(h("p", { class: "card alert", role: "alert" }, RANGE_HELP));
      return;
    }
    button.disabled = true;
    result.replaceChildren(h("p", { class: "muted" }, "Exporting…"));
    try {
      const file = await api("/v1/chat/completions/exports", {
        method: "POST", json: { kind: kind.value, ...filter, ...(filename.value.trim() ? { filename: filename.value.trim() } : {}),
          ...(created.start !== null ? { created_after: created.start } : {}),
          ...(created.end !== null ? { created_before: created.end } : {}) },
      });
      const text = await apiText(`/v1/files/${encodeURIComponent(file.id)}/content`);
      const count = text.split("\n").filter((line) => line.trim()).length;
      const method = kind.value === "dpo" ? "dpo" : "supervised";
      const train = new URLSearchParams({ file: file.id, method, ...(skill ? { from: skill } : {}) });
      result.replaceChildren(h("div", { class: "card alert info", role: "status" },
        h("h3", {}, `Exported ${count} row${count === 1 ? "" : "s"}`),
        h("dl", { class: "facts" }, h("dt", {}, "file"), h("dd", { class: "mono", id: "export-file" }, file.id),
          h("dt", {}, "name"), h("dd", {}, file.filename), h("dt", {}, "purpose"), h("dd", {}, file.purpose),
          h("dt", {}, "rows"), h("dd", { id: "export-rows" }, String(count))),
        kind.value === "evals"
          ? h("p", { class: "muted" }, "Use it as an eval run's rows: ", h("code", {}, `{"type": "file_id", "id": "${file.id}"}`), ".")
          : h("p", {}, h("a", { class: "button", href: `#/new?${train}` }, skill ? `Train a new version of ${skill} from it` : "Train a skill from it"))));
    } catch (error) {
      if (error.status === 401) return;
      result.replaceChildren(errorBox(forbidden("The export")(error), error));
    } finally {
      button.disabled = false;
    }
  }

  return h("section", { class: "card", "aria-labelledby": "export-title", style: "margin-top:1rem" },
    h("h2", { id: "export-title", style: "margin-top:0" }, "Export as dataset"),
    h("p", { class: "muted" }, described ? `What the filters select (${described}), ` : "Every stored completion, ",
      "created between From and Until where given (in this browser's time zone; the list above is not filtered by time), ",
      "written as one file in /v1/files and checked as an upload is."),
    h("form", { onsubmit: send },
      h("div", { class: "row" },
        h("div", { class: "field" }, h("label", { for: "export-kind" }, "Kind"), kind),
        h("div", { class: "field" }, h("label", { for: "export-filename" }, "File name (optional)"), filename)),
      h("div", { class: "row" }, period.fields, h("div", { class: "field", style: "flex:0 0 auto" }, button))),
    result);
}

// ------------------------------------------------------------------ one stored completion, with its feedback

export async function detail(main, { params: [id], signal }) {
  const path = `/v1/chat/completions/${encodeURIComponent(id)}`;
  let completion;
  let messages;
  try {
    [completion, messages] = await Promise.all([api(path, { signal }), api(`${path}/messages?limit=100`, { signal })]);
  } catch (error) {
    if (error.status !== 403) throw error;
    main.replaceChildren(errorBox("Reading stored completions needs an admin key", error));
    return;
  }
  document.title = `Stored completion · skillserve`;
  const original = answerOf(completion);
  const status = h("p", { id: "feedback-status", role: "status", class: "muted" });
  const notice = h("div");
  const good = h("button", { type: "button", class: "ghost", onclick: () => rate("good") }, "Good");
  const bad = h("button", { type: "button", class: "ghost", onclick: () => rate("bad") }, "Bad");
  const corrected = h("textarea", { id: "corrected", rows: 6, spellcheck: "true", "aria-describedby": "corrected-help" });
  const note = h("input", { id: "feedback-note", maxlength: 2000 });
  const save = h("button", { type: "submit" }, "Save correction");

  function show(next) {
    completion = next;
    const feedback = completion.feedback || {};
    good.setAttribute("aria-pressed", String(feedback.rating === "good"));
    bad.setAttribute("aria-pressed", String(feedback.rating === "bad"));
    corrected.value = feedback.corrected ?? original;
    note.value = feedback.note ?? "";
    status.replaceChildren(completion.feedback
      ? `Rated ${feedback.rating || "—"}${feedback.corrected ? ", corrected" : ""}${feedback.at ? ` · ${when(feedback.at)}` : ""}`
      : "No feedback yet.");
  }

  // The endpoint replaces the whole feedback, so each change sends what is kept of the rest.
  async function send(change) {
    const feedback = completion.feedback || {};
    const text = corrected.value.trim() && corrected.value !== original ? corrected.value : null;
    const body = { rating: feedback.rating ?? null, corrected: text, note: note.value.trim() || null, ...change };
    for (const control of [good, bad, save]) control.disabled = true;
    notice.replaceChildren();
    try {
      show(await api(`${path}/feedback`, { method: "POST", json: body }));
    } catch (error) {
      if (error.status !== 401) notice.replaceChildren(errorBox("The feedback was refused", error));
    } finally {
      for (const control of [good, bad, save]) control.disabled = false;
    }
  }
  const rate = (rating) => send({ rating });

  main.replaceChildren(
    h("div", { class: "head" }, h("div", {}, h("h1", {}, "Stored completion"),
      h("p", { class: "muted mono" }, `${completion.id} · ${completion.model}`,
        completion.answered_by && completion.answered_by !== completion.model ? ` (answered by ${completion.answered_by})` : "",
        ` · ${when(completion.created)}`)),
    h("div", { class: "actions" }, h("a", { class: "button ghost", href: `#/stored?${new URLSearchParams({ model: completion.model })}` },
      `Stored completions of ${completion.model}`))),
    Object.keys(completion.metadata || {}).length ? h("dl", { class: "facts card", style: "margin-bottom:1rem" },
      Object.entries(completion.metadata).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])) : null,
    h("section", { "aria-labelledby": "conversation-title" }, h("h2", { id: "conversation-title" }, "Conversation"),
      h("div", { class: "messages", id: "messages" }, messages.data.map((m) => h("article", { class: `message ${m.role}` },
        h("h3", {}, m.role), h("pre", {}, m.content ?? (m.tool_calls ? JSON.stringify(m.tool_calls, null, 2) : "")))),
      h("article", { class: "message assistant answer-given", id: "answer" }, h("h3", {}, `answer · ${completion.answered_by || completion.model}`),
        h("pre", {}, original || JSON.stringify(completion.choices?.[0]?.message?.tool_calls ?? null, null, 2))))),
    h("section", { class: "card", "aria-labelledby": "feedback-title", style: "margin-top:1rem" },
      h("h2", { id: "feedback-title", style: "margin-top:0" }, "Feedback"),
      h("div", { class: "row", role: "group", "aria-label": "rating" }, good, bad), status, notice,
      h("form", { onsubmit: (event) => { event.preventDefault(); send({}); } },
        h("div", { class: "field" }, h("label", { for: "corrected" }, "Corrected answer"), corrected,
          h("small", { id: "corrected-help" }, "the answer it should have given; left as the original, no correction is sent")),
        h("div", { class: "field" }, h("label", { for: "feedback-note" }, "Note (optional)"), note),
        save)));
  show(completion);
}
