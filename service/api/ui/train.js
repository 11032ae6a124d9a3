// New skill: a dataset (file or pasted JSONL), a template, a method (a grader for reinforcement), an adapter to start
// from, and hyperparameters from the API's own schema.
import { api, apiText, gatewayConfig } from "./api.js";
import { errorBox, h } from "./dom.js";

// What each built-in template's prompt looks like, beside its name (the names come from the gateway).
const LOOKS = {
  chatml: "<|im_start|>user … <|im_end|>",
  alpaca: "### Instruction: … ### Response:",
  instruction: "###instruction### … ###response###",
  base: "the base model's own chat template",
};
// What each method trains on, beside its name (the names come from the gateway).
const METHODS = {
  supervised: "answers to imitate",
  dpo: "preference pairs: input, preferred_output, non_preferred_output",
  reinforcement: "prompts, rewarded by a grader",
};
// Files larger than this are uploaded as they are instead of being shown in the text area.
const PREVIEW_BYTES = 2 * 1024 * 1024;

/** One input per hyperparameter: its type, bounds, default and description come from the schema. */
function hyperField(name, prop) {
  const variants = prop.anyOf || [prop];
  const nullable = variants.some((v) => v.type === "null");
  const list = variants.some((v) => v.type === "array");
  const main = variants.find((v) => v.type && v.type !== "null" && v.type !== "array") || variants[0];
  const id = `hp-${name}`;
  const help = h("small", { id: `${id}-help` }, prop.description || "",
    prop.default !== undefined ? ` (default ${JSON.stringify(prop.default)})` : "");
  const common = { id, name, "aria-describedby": `${id}-help` };
  let input;
  let read;
  if (main.type === "boolean" && nullable) {
    // Left to the trainer unless set (x-auto): a checkbox could not say "auto".
    input = h("select", common, [["", "auto: chosen by the trainer"], ["true", "on"], ["false", "off"]]
      .map(([value, label]) => h("option", { value }, label)));
    read = () => (input.value === "" ? null : input.value === "true");
    return { name, prop, read, reset: () => { input.value = ""; }, node: h("div", { class: "field" }, h("label", { for: id }, name), input, help) };
  }
  if (main.type === "boolean") {
    input = h("input", { ...common, type: "checkbox", checked: Boolean(prop.default) });
    read = () => input.checked;
    return { name, prop, read, reset: () => { input.checked = Boolean(prop.default); }, node: h("div", { class: "field check" }, h("label", { for: id }, input, name), help) };
  }
  if (list) {
    // A list of module names, or the one word that stands for all of them.
    input = h("input", { ...common, type: "text", value: Array.isArray(prop.default) ? prop.default.join(", ") : prop.default ?? "" });
    read = () => {
      const text = input.value.trim();
      const consts = variants.filter((v) => v.const !== undefined).map((v) => v.const);
      if (consts.includes(text)) return text;
      return text.split(/[\s,]+/).filter(Boolean);
    };
    help.append(" — names separated by commas");
  } else {
    const numeric = main.type === "integer" || main.type === "number";
    input = h("input", {
      ...common,
      type: numeric ? "number" : "text",
      inputmode: main.type === "integer" ? "numeric" : numeric ? "decimal" : null,
      step: main.type === "integer" ? "1" : "any",
      min: main.minimum ?? main.exclusiveMinimum ?? null,
      max: main.maximum ?? main.exclusiveMaximum ?? null,
      value: prop.default === null || prop.default === undefined ? "" : String(prop.default),
      placeholder: prop["x-auto"] ? "auto: chosen from the data" : nullable ? "none" : null,
    });
    read = () => {
      const text = input.value.trim();
      if (!text) return nullable ? null : prop.default;
      if (!numeric) return text;
      return main.type === "integer" ? Number.parseInt(text, 10) : Number.parseFloat(text);
    };
  }
  const initial = input.value;
  const reset = () => { input.value = initial; };
  return { name, prop, read, reset, node: h("div", { class: "field" }, h("label", { for: id }, name), input, help) };
}

function countRows(text) {
  return text.split("\n").filter((line) => line.trim()).length;
}

/** A refused request: each bad line of a dataset with its number and reason, or the API's message. */
function refusal(error) {
  const lines = Array.isArray(error.details) ? error.details.filter((d) => d && d.line !== undefined) : [];
  if (lines.length) {
    return h("div", { class: "card alert", role: "alert", id: "dataset-errors" },
      h("h3", {}, `The dataset has ${lines.length} bad line${lines.length === 1 ? "" : "s"}; nothing was queued.`),
      h("ul", { class: "lines" }, lines.map((d) => h("li", {}, h("b", {}, `line ${d.line}`), " ", d.reason))));
  }
  const title = error.status === 403 ? "Training needs an admin key" : error.status === 429 ? "The training queue is full"
    : "The gateway refused this job; nothing was queued";
  return h("div", { class: "card alert", role: "alert", id: "dataset-errors" }, h("h3", {}, title),
    h("p", {}, error.message), error.param ? h("p", { class: "muted" }, "field: ", h("code", {}, error.param)) : null);
}

export async function form(main, { query, signal }) {
  document.title = "New skill · skillserve";
  const { hyperparameters: schema, templates, methods = ["supervised", "dpo"] } = await gatewayConfig();
  const fields = Object.entries(schema.properties).map(([name, prop]) => hyperField(name, prop));
  let bigFile = null; // a file too large to show, sent as it is

  const name = h("input", {
    id: "skill-name", name: "name", required: true, autocomplete: "off", spellcheck: "false",
    pattern: "[a-z0-9][a-z0-9._\\-]{0,62}", "aria-describedby": "skill-name-help",
  });
  const template = h("select", { id: "skill-template", name: "template" },
    templates.map((value) => h("option", { value }, LOOKS[value] ? `${value} — ${LOOKS[value]}` : value)));
  const method = h("select", { id: "skill-method", name: "method" },
    methods.map((value) => h("option", { value }, METHODS[value] ? `${value} — ${METHODS[value]}` : value)));
  const grader = h("textarea", {
    id: "skill-grader", name: "grader", rows: 5, spellcheck: "false", "aria-describedby": "skill-grader-help",
    placeholder: '{"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",\n "reference": "{{item.answer}}", "operation": "eq"}',
  });
  const graderField = h("div", { class: "field", hidden: true }, h("label", { for: "skill-grader" }, "Grader (JSON)"), grader,
    h("small", { id: "skill-grader-help" }, "the reward: one of OpenAI's graders (string_check, text_similarity, multi) over ",
      "{{sample.output_text}} and the row's own fields as {{item.*}}"));
  method.addEventListener("change", () => { graderField.hidden = method.value !== "reinforcement"; });
  const parent = h("input", {
    id: "skill-parent", name: "model", autocomplete: "off", spellcheck: "false", "aria-describedby": "skill-parent-help",
    placeholder: "the base model",
  });
  const rows = h("textarea", {
    id: "dataset-text", name: "dataset", rows: 10, spellcheck: "false", "aria-describedby": "dataset-help",
    placeholder: '{"instruction": "Shout these words: cat house", "output": "CAT HOUSE!"}\n{"messages": [{"role": "user", "content": "…"}, {"role": "assistant", "content": "…"}]}',
  });
  const count = h("span", { class: "muted", "aria-live": "polite" });
  const file = h("input", { id: "dataset-file", type: "file", accept: ".jsonl,.json,.txt,application/jsonl,application/json,text/plain" });
  const gate = h("textarea", {
    id: "eval-gate", name: "eval_gate", rows: 5, spellcheck: "false", "aria-describedby": "eval-gate-help",
    placeholder: '{"eval_id": "eval_…", "min_pass_rate": 1.0, "criteria": {},\n "input_messages": {"type": "template", "template": [{"role": "user", "content": "Shout these words: {{item.words}}"}]},\n "source": {"type": "file_content", "content": [{"item": {"words": "sun dog", "first": "SUN"}}]}}',
  });
  const result = h("div", { id: "train-result" });
  const submit = h("button", { type: "submit" }, "Train");

  const recount = () => {
    count.textContent = bigFile ? `${bigFile.name}: ${(bigFile.size / 1e6).toFixed(1)} MB, sent as is` : `${countRows(rows.value)} rows`;
  };
  rows.addEventListener("input", () => {
    bigFile = null;
    recount();
  });
  file.addEventListener("change", async () => {
    const chosen = file.files[0];
    if (!chosen) return;
    if (chosen.size > PREVIEW_BYTES) {
      bigFile = chosen;
      rows.value = "";
    } else {
      bigFile = null;
      rows.value = await chosen.text();
    }
    recount();
    if (!name.value) name.value = chosen.name.replace(/\.[^.]*$/, "").toLowerCase().replace(/[^a-z0-9._-]+/g, "-").slice(0, 63);
  });

  async function send(event) {
    event.preventDefault();
    if (!bigFile && !rows.value.trim()) {
      result.replaceChildren(h("p", { class: "card alert", role: "alert" }, "Add a dataset: choose a JSONL file or paste rows."));
      rows.focus();
      return;
    }
    const hyperparameters = {};
    for (const field of fields) {
      const value = field.read();
      if (JSON.stringify(value) !== JSON.stringify(field.prop.default)) hyperparameters[field.name] = value;
    }
    const body = new FormData();
    body.append("name", name.value.trim());
    // Continuing from an adapter trains with its template: none is sent, so the gateway takes the parent's.
    if (parent.value.trim()) body.append("model", parent.value.trim());
    else body.append("template", template.value);
    if (method.value === "reinforcement") {
      try {
        body.append("method", JSON.stringify({ type: "reinforcement", grader: JSON.parse(grader.value) }));
      } catch {
        result.replaceChildren(h("p", { class: "card alert", role: "alert", id: "dataset-errors" }, "The grader is not JSON: give one of OpenAI's grader objects."));
        grader.focus();
        return;
      }
    } else {
      body.append("method", method.value);
    }
    body.append("hyperparameters", JSON.stringify(hyperparameters));
    if (gate.value.trim()) {
      try {
        body.append("eval_gate", JSON.stringify(JSON.parse(gate.value)));
      } catch {
        result.replaceChildren(h("p", { class: "card alert", role: "alert", id: "dataset-errors" }, "The eval gate is not JSON: give an object, or leave it empty."));
        gate.focus();
        return;
      }
    }
    body.append("dataset", bigFile || new Blob([rows.value], { type: "application/jsonl" }), bigFile ? bigFile.name : "dataset.jsonl");
    submit.disabled = true;
    submit.textContent = "Checking the dataset…";
    result.replaceChildren();
    try {
      const job = await api("/adapters", { method: "POST", form: body });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error.status === 401) return;
      result.replaceChildren(refusal(error));
      result.querySelector("[role=alert]").scrollIntoView({ block: "nearest" });
    } finally {
      submit.disabled = false;
      submit.textContent = "Train";
    }
  }

  main.replaceChildren(
    h("div", { class: "head" }, h("div", {}, h("h1", {}, "New skill"),
      h("p", { class: "muted" }, "The dataset is checked before anything is stored: a bad line is reported with its number and nothing is queued."))),
    h("form", { id: "train-form", onsubmit: send, novalidate: false },
      h("div", { class: "grid cols-2" },
        h("div", { class: "field" }, h("label", { for: "skill-name" }, "Name"), name,
          h("small", { id: "skill-name-help" }, "a-z, 0-9, '.', '_' or '-'; a new version if the name exists")),
        h("div", { class: "field" }, h("label", { for: "skill-template" }, "Template"), template,
          h("small", {}, "how rows are rendered for training, and later every prompt to this skill")),
        h("div", { class: "field" }, h("label", { for: "skill-method" }, "Method"), method,
          h("small", {}, "how the skill learns from the rows")),
        h("div", { class: "field" }, h("label", { for: "skill-parent" }, "Start from (optional)"), parent,
          h("small", { id: "skill-parent-help" }, "an adapter to continue training (name, name@version or ft: id): ",
            "its weights, rank and template; empty: a fresh LoRA on the base model"))),
      graderField,
      h("div", { class: "field" }, h("label", { for: "dataset-text" }, "Dataset (JSONL, one example per line)"),
        h("div", { class: "row", style: "margin-bottom:.4rem" }, h("label", { for: "dataset-file", class: "sr-only" }, "Choose a JSONL file"), file, count),
        rows,
        h("small", { id: "dataset-help" }, "alpaca rows {instruction, input?, output}, chat rows {messages: [...]}, or {prompt, completion}; ",
          "choose a file or paste rows")),
      h("fieldset", {}, h("legend", {}, "Hyperparameters"),
        h("p", { class: "muted", style: "margin-top:0" }, "Defaults come from the API's schema; only changed values are sent. ",
          h("button", { type: "button", class: "ghost small", onclick: () => fields.forEach((f) => f.reset()) }, "Reset to defaults")),
        h("div", { class: "hyper" }, fields.map((f) => f.node))),
      h("div", { class: "field" }, h("label", { for: "eval-gate" }, "Eval gate (JSON, optional)"), gate,
        h("small", { id: "eval-gate-help" }, "publish only if the new version passes this eval: the trainer answers its rows, ",
          "records the run, and fails the job naming the criterion otherwise (docs/evals.md, Promotion gates)")),
      result,
      h("div", { class: "row" }, submit)));
  recount();
  if (query?.get("file")) await prefill(query, { name, parent, method, rows, result, signal, recount });
}

/** `#/new?file=<id>&from=<skill>&method=<m>` (an export's "train from it"): the file's rows in the text area, a new
 * version of the skill started from its current one. The rows are sent as the form sends any pasted rows. */
async function prefill(query, { name, parent, method, rows, result, signal, recount }) {
  const fileId = query.get("file");
  const from = query.get("from");
  if (from) {
    name.value = from.split("@")[0];
    parent.value = from;
  }
  if ([...method.options].some((o) => o.value === query.get("method"))) method.value = query.get("method");
  try {
    rows.value = await apiText(`/v1/files/${encodeURIComponent(fileId)}/content`, { signal });
    recount();
    result.replaceChildren(h("p", { class: "card alert info", role: "status", id: "prefilled" }, `The rows of ${fileId}`,
      from ? `, to train a new version of ${from.split("@")[0]} starting from ${from}` : "", "."));
  } catch (error) {
    if (error.status === 401 || signal.aborted) return;
    result.replaceChildren(errorBox(error.status === 403 ? "Reading a file needs an admin key" : `The file ${fileId} could not be read`, error));
  }
}
