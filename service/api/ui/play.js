// Playground: one prompt, answered by the base model and by one or two skills side by side, streamed.
import { api, events } from "./api.js";
import { h } from "./dom.js";

const templates = new Map(); // skill name -> its manifest (template text and stops), read once

async function manifestOf(name, signal) {
  if (!templates.has(name)) templates.set(name, api(`/adapters/${encodeURIComponent(name)}`, { signal }).then((d) => d.manifest));
  return templates.get(name);
}

function templateDetails(model, signal) {
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  const details = h("details", {}, h("summary", {}, "Prompt template"), body);
  details.addEventListener("toggle", async () => {
    if (!details.open || details.dataset.loaded) return;
    details.dataset.loaded = "1";
    if (!model.parent) {
      body.replaceChildren(h("p", { class: "muted" }, "The base model renders every prompt with its own chat template, from its tokenizer."));
      return;
    }
    try {
      const manifest = await manifestOf(model.id, signal);
      body.replaceChildren(h("p", { class: "muted" }, `${manifest.template_name}: the template this skill was trained with, `,
        "so every prompt is rendered exactly as its training rows were"), h("pre", {}, manifest.template),
      h("p", { class: "muted" }, "stops at: ", manifest.stop.map((s) => JSON.stringify(s)).join(", ") || "end of sequence"));
    } catch (error) {
      body.replaceChildren(h("p", { class: "muted" }, error.message));
    }
  });
  return details;
}

/** Stream one model's answer into its column. */
async function answer(column, request, signal) {
  const started = performance.now();
  let chunks = 0;
  let finish = null;
  column.output.textContent = "";
  column.meta.textContent = "…";
  try {
    for await (const event of events("/v1/chat/completions", { json: request, signal })) {
      if (event.data === "[DONE]") break;
      const chunk = JSON.parse(event.data);
      for (const choice of chunk.choices || []) {
        if (choice.delta && choice.delta.content) {
          column.output.append(choice.delta.content);
          chunks += 1;
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
    const seconds = (performance.now() - started) / 1000;
    column.meta.textContent = `${chunks} chunks in ${seconds.toFixed(1)} s${finish ? ` · finished: ${finish}` : ""}`;
    column.root.dataset.done = "true";
  } catch (error) {
    if (signal.aborted) return;
    column.meta.textContent = "";
    column.output.replaceChildren(h("span", { class: "gain-down", role: "alert" }, error.message));
    column.root.dataset.done = "error";
  }
}

function column(model, kind, signal) {
  const output = h("output", { "aria-live": "polite", "aria-label": `answer of ${model.id}` });
  const meta = h("div", { class: "meta" });
  const root = h("article", { class: `card answer ${kind}`, "data-model": model.id },
    h("h2", { style: "margin:0" }, model.id, " ", h("span", { class: "muted", style: "font-weight:400;font-size:.85rem" },
      model.parent ? `skill · ${model.template || ""}` : "base model")),
    output, meta, templateDetails(model, signal));
  return { root, output, meta };
}

export async function view(main, { query, signal }) {
  document.title = "Playground · skillserve";
  const models = (await api("/v1/models", { signal })).data;
  const base = models.find((m) => !m.parent);
  const skills = models.filter((m) => m.parent);
  const wanted = query.get("skill");
  const first = skills.find((m) => m.id === wanted) || skills[0];

  const prompt = h("textarea", { id: "prompt", rows: 4, required: true, "aria-describedby": "prompt-help",
    placeholder: "Ask something…", style: "font-family:inherit;font-size:1rem" });
  // A held-out prompt of the chosen skill is a good first question: the evaluation already asked it.
  const suggest = async () => {
    const manifest = first && !prompt.value ? await manifestOf(first.id, signal).catch(() => null) : null;
    const sample = manifest && (manifest.metrics.samples || [])[0];
    if (sample && !prompt.value) prompt.value = sample.prompt;
  };
  const choice = (id, label, selected, optional) => {
    const select = h("select", { id },
      optional ? h("option", { value: "" }, "none") : null,
      skills.map((m) => h("option", { value: m.id, selected: m === selected }, m.id)));
    return [select, h("div", { class: "field" }, h("label", { for: id }, label), select)];
  };
  const [skillA, skillAField] = choice("skill-a", "Skill", first, true);
  const [skillB, skillBField] = choice("skill-b", "Second skill (optional)", null, true);
  const temperature = h("input", { id: "temperature", type: "number", min: 0, max: 2, step: "0.1", value: "0", inputmode: "decimal" });
  const maxTokens = h("input", { id: "max-tokens", type: "number", min: 1, max: 1024, step: "1", value: "96", inputmode: "numeric" });
  const run = h("button", { type: "submit" }, "Run");
  const answers = h("div", { class: "answers", id: "answers" });
  let current = null;

  async function go(event) {
    event.preventDefault();
    if (!prompt.value.trim()) {
      prompt.focus();
      return;
    }
    current?.abort();
    current = new AbortController();
    signal.addEventListener("abort", () => current.abort(), { once: true });
    const chosen = [[base, "base"]];
    const a = skills.find((m) => m.id === skillA.value);
    const b = skills.find((m) => m.id === skillB.value);
    if (a) chosen.push([a, "skill"]);
    if (b && b !== a) chosen.push([b, "skill2"]);
    const columns = chosen.map(([model, kind]) => [model, column(model, kind, signal)]);
    answers.replaceChildren(...columns.map(([, c]) => c.root));
    run.disabled = true;
    const common = {
      messages: [{ role: "user", content: prompt.value }],
      temperature: Number.parseFloat(temperature.value || "0"),
      max_tokens: Number.parseInt(maxTokens.value || "96", 10),
      stream: true,
    };
    await Promise.all(columns.map(([model, c]) => answer(c, { ...common, model: model.id }, current.signal)));
    run.disabled = false;
  }

  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      prompt.form.requestSubmit();
    }
  });

  main.replaceChildren(
    h("div", { class: "head" }, h("div", {}, h("h1", {}, "Playground"),
      h("p", { class: "muted" }, "One prompt, answered by the base model and by your skills side by side."))),
    h("form", { class: "card", onsubmit: go, id: "play-form" },
      h("div", { class: "field" }, h("label", { for: "prompt" }, "Prompt"), prompt,
        h("small", { id: "prompt-help" }, "sent as one user message; ", h("span", { class: "kbd" }, "Ctrl"), "+",
          h("span", { class: "kbd" }, "Enter"), " runs it")),
      skills.length ? null : h("p", { class: "muted" }, "No skills yet: only the base model answers. ", h("a", { href: "#/new" }, "Train a skill"), "."),
      h("div", { class: "row" }, skillAField, skillBField,
        h("div", { class: "field", style: "flex:0 1 7rem" }, h("label", { for: "temperature" }, "Temperature"), temperature),
        h("div", { class: "field", style: "flex:0 1 7rem" }, h("label", { for: "max-tokens" }, "Max tokens"), maxTokens),
        h("div", { class: "field", style: "flex:0 0 auto" }, run))),
    answers);
  prompt.focus();
  await suggest();
}
