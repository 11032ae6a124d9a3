// Skills: every adapter, and one adapter's versions, evaluation against the base, samples and template.
import { api } from "./api.js";
import { badge, errorBox, fixed, h, percent, when } from "./dom.js";

const ref = (name) => `#/skills/${encodeURIComponent(name)}`;

/** The evaluation figures of one version: [label, adapter, base, higher is better?, format]. */
function figures(metrics) {
  const rows = [
    // Preference (DPO) skills: held-out pairs; the base's accuracy is how often it prefers the preferred answer itself.
    ["Preference accuracy", metrics.eval_preference_accuracy, metrics.base_preference_accuracy, true, percent],
    ["Preferred likelier", metrics.eval_likelihood_preference, metrics.base_preference_accuracy, true, percent],
    ["Reward margin", metrics.eval_reward_margin, null, true, fixed],
    ["Exact match", metrics.eval_exact_match, metrics.base_exact_match, true, percent],
    ["ROUGE-L", metrics.eval_rouge_l, metrics.base_rouge_l, true, fixed],
    ["Eval loss", metrics.eval_loss, metrics.base_eval_loss, false, fixed],
  ];
  // The forgetting figure (general ability kept), whatever its key, once the trainer writes one.
  for (const [key, value] of Object.entries(metrics)) {
    if (key.includes("forgetting") && typeof value === "number") rows.push([key.replaceAll("_", " "), value, null, false, fixed]);
  }
  return rows.filter(([, adapter, base]) => typeof adapter === "number" || typeof base === "number");
}

function gain(adapter, base, higherIsBetter, format) {
  if (typeof adapter !== "number" || typeof base !== "number") return h("td", { class: "num" }, "—");
  const diff = adapter - base;
  const better = higherIsBetter ? diff > 0 : diff < 0;
  const text = format === percent ? `${diff >= 0 ? "+" : ""}${(diff * 100).toFixed(1)} pt` : `${diff >= 0 ? "+" : ""}${diff.toFixed(3)}`;
  return h("td", { class: `num ${diff === 0 ? "" : better ? "gain-up" : "gain-down"}` }, text);
}

export function evaluationTable(metrics) {
  const rows = figures(metrics || {});
  if (!rows.length) return h("p", { class: "muted" }, "No evaluation: the dataset had no held-out rows (or eval_samples was 0).");
  return h("div", { class: "table-wrap" }, h("table", { class: "evaluation" },
    h("caption", { class: "muted", style: "text-align:left" },
      metrics.eval_generated ? `On ${metrics.eval_generated} held-out rows, answered greedily` : "On the held-out rows"),
    h("thead", {}, h("tr", {}, h("th", {}, "figure"), h("th", { class: "num" }, "skill"), h("th", { class: "num" }, "base"),
      h("th", { class: "num" }, "gain"))),
    h("tbody", {}, rows.map(([label, adapter, base, higher, format]) => h("tr", {},
      h("th", { scope: "row" }, label), h("td", { class: "num" }, format(adapter)), h("td", { class: "num" }, format(base)),
      gain(adapter, base, higher, format))))));
}

export function samplesView(samples) {
  if (!samples || !samples.length) return null;
  return h("div", { class: "samples" }, samples.map((s) => h("article", { class: "sample", "aria-label": "held-out sample" },
    h("div", {}, h("h3", {}, "Prompt"), h("pre", {}, s.prompt)),
    h("div", {}, h("h3", {}, "Reference"), h("pre", {}, s.reference)),
    h("div", {}, h("h3", {}, "Base"), h("pre", {}, s.base)),
    h("div", { class: s.adapter.trim() === s.reference.trim() ? "hit" : "" },
      h("h3", {}, "Skill", s.adapter.trim() === s.reference.trim() ? " ✓" : ""), h("pre", {}, s.adapter)))));
}

export async function list(main, { signal }) {
  document.title = "Skills · skillserve";
  const adapters = (await api("/adapters", { signal })).data;
  const head = h("div", { class: "head" }, h("div", {}, h("h1", {}, "Skills"),
    h("p", { class: "muted" }, "Every adapter this gateway serves, with its evaluation against the base model.")),
  h("div", { class: "actions" }, h("a", { class: "button", href: "#/new" }, "New skill")));
  if (!adapters.length) {
    main.replaceChildren(head, h("div", { class: "card empty" }, h("p", {}, "No skills yet."),
      h("a", { class: "button", href: "#/new" }, "Train the first one")));
    return;
  }
  const rows = adapters.map((a) => {
    const cells = {
      template: h("td", { class: "hide-narrow" }, "…"), rank: h("td", { class: "num hide-narrow" }, "…"),
      created: h("td", { class: "hide-narrow" }, "…"), rouge: h("td", { class: "num" }, "…"),
    };
    const row = h("tr", {}, h("th", { scope: "row" }, h("a", { href: ref(a.name) }, a.name)), h("td", {}, badge(a.status)),
      h("td", { class: "num" }, a.versions), cells.template, cells.rank, cells.created, cells.rouge);
    return { a, row, cells };
  });
  main.replaceChildren(head, h("div", { class: "card table-wrap" }, h("table", { id: "skills" },
    h("thead", {}, h("tr", {}, h("th", {}, "skill"), h("th", {}, "status"), h("th", { class: "num" }, "versions"),
      h("th", { class: "hide-narrow" }, "template"), h("th", { class: "num hide-narrow" }, "rank"),
      h("th", { class: "hide-narrow" }, "created"), h("th", { class: "num" }, "ROUGE-L skill / base"))),
    h("tbody", {}, rows.map((r) => r.row)))));
  // Details fill in as they come; a list of a few dozen skills costs a few dozen small reads.
  await Promise.all(rows.map(async ({ a, cells }) => {
    const m = a.latest ? (await api(`/adapters/${encodeURIComponent(a.name)}`, { signal })).manifest : null;
    cells.template.textContent = m ? m.template_name : "—";
    cells.rank.textContent = m ? m.lora.rank : "—";
    cells.created.textContent = m ? when(m.created_at) : "—";
    cells.rouge.textContent = m && typeof m.metrics.eval_rouge_l === "number"
      ? `${fixed(m.metrics.eval_rouge_l)} / ${fixed(m.metrics.base_rouge_l)}` : "—";
  }));
}

export async function detail(main, { params: [name], signal }) {
  document.title = `${name} · skillserve`;
  const skill = await api(`/adapters/${encodeURIComponent(name)}`, { signal });
  const versions = [...skill.versions].reverse(); // newest first
  let chosen = versions[0] || null;
  const manifest = skill.manifest;
  const evaluation = h("section", { "aria-labelledby": "eval-title" });
  const notice = h("div");

  async function remove(model, what) {
    if (!confirm(`Delete ${what}? Requests already using it finish; new ones get 404.`)) return;
    try {
      await api(`/adapters/${encodeURIComponent(model)}`, { method: "DELETE" });
      if (model.includes("@") && skill.versions.length > 1) await detail(main, { params: [name], signal });
      else location.hash = "#/skills";
    } catch (error) {
      notice.replaceChildren(errorBox(error.status === 403 ? "Deleting needs an admin key" : "Delete failed", error));
    }
  }

  function showVersion(version) {
    chosen = version;
    for (const row of main.querySelectorAll("tr[data-version]")) row.classList.toggle("selected", row.dataset.version === version.version);
    evaluation.replaceChildren(h("h2", { id: "eval-title" }, `Evaluation of ${version.version}`), h("div", { class: "card" },
      evaluationTable(version.metrics)), version.metrics.samples ? h("h2", {}, "Held-out samples, side by side") : null,
    samplesView(version.metrics.samples));
  }

  const head = h("div", { class: "head" }, h("div", {}, h("h1", {}, name, " ", badge(skill.status)),
    h("p", { class: "muted" }, skill.latest ? `newest version ${skill.latest}` : "not published yet")),
  h("div", { class: "actions" },
    skill.latest ? h("a", { class: "button", href: `#/play?skill=${encodeURIComponent(name)}` }, "Try in playground") : null,
    h("a", { class: "button ghost", href: `#/stored?${new URLSearchParams({ model: name })}` }, "Stored completions"),
    skill.versions.length ? h("button", { class: "danger", type: "button", onclick: () => remove(name, `every version of ${name}`) },
      "Delete skill") : null));

  const facts = manifest ? h("section", { class: "card" }, h("dl", { class: "facts" },
    h("dt", {}, "base model"), h("dd", {}, manifest.base_model),
    h("dt", {}, "template"), h("dd", {}, manifest.template_name),
    h("dt", {}, "LoRA"), h("dd", {}, `rank ${manifest.lora.rank}, alpha ${manifest.lora.alpha}, on ${manifest.lora.target_modules.join(", ")}`),
    h("dt", {}, "dataset"), h("dd", {}, manifest.dataset_rows ? `${manifest.dataset_rows} rows` : "—"),
    h("dt", {}, "created"), h("dd", {}, when(manifest.created_at)),
    manifest.job_id ? [h("dt", {}, "trained by"), h("dd", {}, h("a", { href: `#/jobs/${manifest.job_id}` }, `job ${manifest.job_id.slice(0, 8)}`))] : null),
  h("details", {}, h("summary", {}, "Template text (what every prompt to this skill is rendered with)"),
    h("pre", { class: "template" }, manifest.template),
    h("p", { class: "muted" }, "stop sequences: ", manifest.stop.map((s) => JSON.stringify(s)).join(", ") || "none"))) : null;

  const versionRow = (v) => h("tr", { "data-version": v.version },
    h("th", { scope: "row", class: "mono" }, v.version), h("td", { class: "hide-narrow" }, when(v.created_at)),
    h("td", { class: "hide-narrow" }, v.template), h("td", { class: "num hide-narrow" }, v.rank),
    h("td", { class: "num" }, percent(v.metrics.eval_exact_match)), h("td", { class: "num" }, fixed(v.metrics.eval_rouge_l)),
    h("td", { class: "num hide-narrow" }, fixed(v.metrics.eval_loss)),
    h("td", {}, h("div", { class: "row" },
      h("button", { class: "ghost small", type: "button", onclick: () => showVersion(v), "aria-label": `show evaluation of ${v.version}` }, "Show"),
      h("button", { class: "danger small", type: "button", onclick: () => remove(`${name}@${v.version}`, `version ${v.version}`),
        "aria-label": `delete version ${v.version}` }, "Delete"))));
  const versionHead = h("thead", {}, h("tr", {}, h("th", {}, "version"), h("th", { class: "hide-narrow" }, "created"),
    h("th", { class: "hide-narrow" }, "template"), h("th", { class: "num hide-narrow" }, "rank"), h("th", { class: "num" }, "exact"),
    h("th", { class: "num" }, "ROUGE-L"), h("th", { class: "num hide-narrow" }, "eval loss"), h("th", {}, h("span", { class: "sr-only" }, "actions"))));
  const versionTable = versions.length
    ? [h("h2", {}, "Versions"), h("div", { class: "card table-wrap" }, h("table", { id: "versions" }, versionHead, h("tbody", {}, versions.map(versionRow))))]
    : [];

  const jobRows = skill.jobs.length ? [h("h2", {}, "Training jobs"), h("div", { class: "card table-wrap" }, h("table", {},
    h("tbody", {}, skill.jobs.map((j) => h("tr", {}, h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.id}` }, j.id.slice(0, 8))),
      h("td", {}, badge(j.status)), h("td", { class: "mono" }, j.version), h("td", {}, when(j.created_at)))))))] : [];

  main.replaceChildren(head, notice, facts, ...versionTable, evaluation, ...jobRows);
  if (chosen) showVersion(chosen);
}
