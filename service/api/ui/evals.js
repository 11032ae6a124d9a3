// Evals: every eval, and one eval's runs with pass rates per criterion; two runs side by side (model A vs model B
// per criterion) and the rows where they differ, each with its input, both answers and every grader's result.
import { api } from "./api.js";
import { badge, h, when } from "./dom.js";

const FINISHED = new Set(["completed", "failed", "canceled"]);
const ref = (id, query) => `#/evals/${encodeURIComponent(id)}${query ? `?${query}` : ""}`;

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
});

/** Every object of a paged list (OpenAI's `after` cursor). */
async function all(path, signal) {
  const found = [];
  let after = null;
  for (;;) {
    const page = await api(`${path}?limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`, { signal });
    found.push(...page.data);
    if (!page.has_more || !page.data.length) return found;
    after = page.last_id;
  }
}

/** Each criterion's {passed, graded} in a run (errored rows are graded by none). */
export function criterionRates(run) {
  return new Map((run.per_testing_criteria_results || []).map((r) => [r.testing_criteria, { passed: r.passed, graded: r.passed + r.failed }]));
}

const share = ({ passed, graded }) => (graded ? passed / graded : null);

function rateCell({ passed, graded } = { passed: 0, graded: 0 }) {
  if (!graded) return h("td", { class: "num" }, "—");
  const value = passed / graded;
  return h("td", { class: "num" }, h("span", { class: "rate" }, `${(value * 100).toFixed(0)}%`),
    h("span", { class: "muted" }, ` ${passed}/${graded}`),
    h("meter", { min: 0, max: 1, value, "aria-hidden": "true" }));
}

/** The rows (by datasource_item_id) whose status or any criterion's verdict differs; a row one run lacks too. */
export function differingRows(itemsA, itemsB) {
  const byRow = (items) => new Map(items.map((i) => [i.datasource_item_id, i]));
  const a = byRow(itemsA);
  const b = byRow(itemsB);
  const verdicts = (item) => JSON.stringify(Object.fromEntries((item.results || []).map((r) => [r.name, r.passed])));
  return [...new Set([...a.keys(), ...b.keys()])].sort((x, y) => x - y)
    .filter((row) => !a.has(row) || !b.has(row) || a.get(row).status !== b.get(row).status || verdicts(a.get(row)) !== verdicts(b.get(row)))
    .map((row) => ({ row, a: a.get(row) || null, b: b.get(row) || null }));
}

function answerText(item) {
  if (item.sample?.error) return `(no answer: ${item.sample.error.message})`;
  return (item.sample?.output || []).map((m) => m.content || "").join("");
}

// ------------------------------------------------------------------ the list

export async function list(main, { signal }) {
  document.title = "Evals · skillserve";
  const evals = await all("/v1/evals", signal);
  const head = h("div", { class: "head" }, h("div", {}, h("h1", {}, "Evals"),
    h("p", { class: "muted" }, "Your rows, graded your way, on any model this gateway serves. ",
      "Create evals and start runs with the API, the openai SDK or ", h("code", {}, "skillserve eval"), ".")));
  if (!evals.length) {
    main.replaceChildren(head, h("div", { class: "card empty" }, h("p", {}, "No evals yet."),
      h("p", { class: "muted" }, h("code", {}, "skillserve eval create --name N --criteria criteria.json"))));
    return;
  }
  const rows = [...evals].reverse().map((e) => { // newest first
    const runs = h("td", { class: "num" }, "…");
    const latest = h("td", { class: "hide-narrow" }, "…");
    const row = h("tr", {}, h("th", { scope: "row" }, h("a", { href: ref(e.id) }, e.name || e.id), h("div", { class: "muted mono" }, e.id)),
      h("td", {}, e.testing_criteria.map((c) => c.name).join(", ")), runs, latest, h("td", { class: "hide-narrow" }, when(e.created_at)));
    return { e, row, runs, latest };
  });
  main.replaceChildren(head, h("div", { class: "card table-wrap" }, h("table", { id: "evals" },
    h("thead", {}, h("tr", {}, h("th", {}, "eval"), h("th", {}, "criteria"), h("th", { class: "num" }, "runs"),
      h("th", { class: "hide-narrow" }, "newest run"), h("th", { class: "hide-narrow" }, "created"))),
    h("tbody", {}, rows.map((r) => r.row)))));
  await Promise.all(rows.map(async ({ e, runs, latest }) => {
    const page = await api(`/v1/evals/${encodeURIComponent(e.id)}/runs?limit=100&order=desc`, { signal });
    runs.textContent = page.has_more ? "100+" : String(page.data.length);
    const newest = page.data[0];
    latest.replaceChildren(...(newest ? [badge(newest.status), " ", newest.model] : ["—"]));
  }));
}

// ------------------------------------------------------------------ one eval

function runsTable(runs, names, chosen) {
  return h("table", { id: "runs" },
    h("thead", {}, h("tr", {}, h("th", {}, "run"), h("th", {}, "model"), h("th", {}, "status"),
      h("th", { class: "num" }, "rows passed"), names.map((n) => h("th", { class: "num" }, n)),
      h("th", { class: "hide-narrow" }, "created"))),
    h("tbody", {}, runs.map((run) => {
      const counts = run.result_counts;
      const rates = criterionRates(run);
      const side = run.id === chosen.a ? "A" : run.id === chosen.b ? "B" : null;
      return h("tr", { "data-run": run.id, class: side ? "selected" : "" },
        h("th", { scope: "row" }, run.name || run.id, side ? h("span", { class: `side side-${side.toLowerCase()}` }, side) : null,
          h("div", { class: "muted mono" }, run.id)),
        h("td", { class: "mono" }, run.model),
        h("td", {}, badge(run.status), run.error ? h("div", { class: "muted" }, `${run.error.code}: ${run.error.message}`) : null,
          counts.errored ? h("div", { class: "muted" }, `${counts.errored} errored`) : null),
        rateCell({ passed: counts.passed, graded: counts.total }),
        names.map((n) => rateCell(rates.get(n))),
        h("td", { class: "hide-narrow" }, when(run.created_at)));
    })));
}

function pointsCell(rateA, rateB) {
  const a = rateA && share(rateA);
  const b = rateB && share(rateB);
  if (typeof a !== "number" || typeof b !== "number") return h("td", { class: "num" }, "—");
  const diff = (b - a) * 100;
  return h("td", { class: `num ${diff > 0 ? "gain-up" : diff < 0 ? "gain-down" : ""}` }, `${diff >= 0 ? "+" : ""}${diff.toFixed(1)} pt`);
}

function comparison(runA, runB, names) {
  const ratesA = criterionRates(runA);
  const ratesB = criterionRates(runB);
  const rows = names.map((n) => [n, ratesA.get(n), ratesB.get(n)]);
  rows.push(["rows passed (every criterion)", { passed: runA.result_counts.passed, graded: runA.result_counts.total },
    { passed: runB.result_counts.passed, graded: runB.result_counts.total }]);
  return h("div", { class: "card table-wrap" }, h("table", { id: "side-by-side" },
    h("thead", {}, h("tr", {}, h("th", {}, "criterion"),
      h("th", { class: "num" }, h("span", { class: "side side-a" }, "A"), " ", runA.model),
      h("th", { class: "num" }, h("span", { class: "side side-b" }, "B"), " ", runB.model),
      h("th", { class: "num" }, "B − A"))),
    h("tbody", {}, rows.map(([name, a, b]) => h("tr", {}, h("th", { scope: "row" }, name), rateCell(a), rateCell(b), pointsCell(a, b))))));
}

function gradesList(item, names) {
  const results = new Map((item.results || []).map((r) => [r.name, r]));
  return h("ul", { class: "grades" }, names.map((name) => {
    const r = results.get(name);
    if (!r) return h("li", {}, h("b", {}, name), " —");
    const errors = (r.errors || []).map((e) => e.message || e.code || JSON.stringify(e));
    return h("li", { class: r.passed ? "pass" : "fail" }, h("b", {}, name), " ", r.passed ? "✓ pass" : "✗ fail",
      typeof r.score === "number" ? h("span", { class: "muted" }, ` score ${r.score.toFixed(2)}`) : null,
      errors.length ? h("div", { class: "muted" }, errors.join("; ")) : null);
  }));
}

function answerColumn(label, run, item, names) {
  const side = label.toLowerCase();
  if (!item) {
    return h("div", { class: `answer-${side}` }, h("h3", {}, h("span", { class: `side side-${side}` }, label), " ", run.model),
      h("p", { class: "muted" }, "No output item: the run did not reach this row."));
  }
  return h("div", { class: `answer-${side}`, "data-status": item.status },
    h("h3", {}, h("span", { class: `side side-${side}` }, label), " ", run.model, " ", badge(item.status)),
    h("pre", { class: "said" }, answerText(item)), gradesList(item, names));
}

function differences(runA, runB, itemsA, itemsB, names) {
  const found = differingRows(itemsA, itemsB);
  const rows = new Set([...itemsA, ...itemsB].map((i) => i.datasource_item_id)).size;
  const intro = h("p", { class: "muted", id: "differ-count" }, `${found.length} of ${rows} rows differ`,
    found.length ? " (a row differs when its status or any criterion's verdict does)." : ".");
  return [intro, h("div", { class: "diffs" }, found.map(({ row, a, b }) => {
    const input = (a || b);
    const prompt = (input.sample?.input || []).filter((m) => m.role !== "assistant");
    return h("article", { class: "card diff", "aria-label": `row ${row}`, "data-row": row },
      h("h3", {}, `Row ${row}`),
      h("div", { class: "diff-input" }, h("h4", {}, "Input"),
        h("dl", { class: "facts" }, Object.entries(input.datasource_item || {}).map(([k, v]) =>
          [h("dt", {}, k), h("dd", {}, typeof v === "string" ? v : JSON.stringify(v))])),
        prompt.length ? h("details", {}, h("summary", {}, "Prompt as sent"),
          h("pre", {}, prompt.map((m) => `${m.role}: ${m.content ?? ""}`).join("\n"))) : null),
      h("div", { class: "diff-answers" }, answerColumn("A", runA, a, names), answerColumn("B", runB, b, names)));
  }))];
}

export async function detail(main, { params: [id], query, signal }) {
  const evaluation = await api(`/v1/evals/${encodeURIComponent(id)}`, { signal });
  document.title = `${evaluation.name || id} · Evals · skillserve`;
  const names = evaluation.testing_criteria.map((c) => c.name);
  let runs = await all(`/v1/evals/${encodeURIComponent(id)}/runs`, signal);
  // A and B: from the address, else the two newest completed runs (older as A)
  const completed = runs.filter((r) => r.status === "completed");
  const chosen = {
    a: query.get("a") || (completed.length >= 2 ? completed[completed.length - 2].id : null),
    b: query.get("b") || (completed.length >= 2 ? completed[completed.length - 1].id : null),
  };

  const criteria = h("details", { class: "card" }, h("summary", {}, `${names.length} testing criteria`),
    h("ul", { class: "lines" }, evaluation.testing_criteria.map((c) => h("li", {}, h("b", {}, c.name), " ", c.type,
      c.operation ? ` (${c.operation})` : "", c.evaluation_metric ? ` (${c.evaluation_metric}, passes at ${c.pass_threshold})` : "",
      h("pre", {}, JSON.stringify(c, null, 2))))));
  const runsCard = h("div", { class: "card table-wrap" });
  const pick = (side) => h("select", {
    id: `run-${side}`,
    onchange: (event) => {
      const next = Object.entries({ ...chosen, [side]: event.target.value }).filter(([, run]) => run);
      location.hash = ref(id, new URLSearchParams(next).toString());
    },
  }, h("option", { value: "" }, "choose a run"), runs.map((r) => h("option", { value: r.id, selected: r.id === chosen[side] },
    `${r.name || r.id} · ${r.model} · ${r.status}`)));
  const compare = h("section", { "aria-labelledby": "compare-title" });

  main.replaceChildren(h("div", { class: "head" }, h("div", {}, h("h1", {}, evaluation.name || id),
    h("p", { class: "muted mono" }, id)), h("div", { class: "actions" }, h("a", { class: "button ghost", href: "#/evals" }, "Every eval"))),
  criteria, h("h2", {}, "Runs"), runsCard,
  h("h2", { id: "compare-title" }, "Side by side"),
  h("div", { class: "card row pick-runs" }, h("div", { class: "field" }, h("label", { for: "run-a" }, "Run A"), pick("a")),
    h("div", { class: "field" }, h("label", { for: "run-b" }, "Run B"), pick("b"))),
  compare);

  runsCard.replaceChildren(runs.length ? runsTable(runs, names, chosen)
    : h("p", { class: "muted empty" }, "No runs yet: ", h("code", {}, `skillserve eval run ${id} --model M --rows rows.jsonl`)));

  const runA = runs.find((r) => r.id === chosen.a);
  const runB = runs.find((r) => r.id === chosen.b);
  if (runA && runB) {
    const [itemsA, itemsB] = await Promise.all([runA, runB].map((r) =>
      all(`/v1/evals/${encodeURIComponent(id)}/runs/${encodeURIComponent(r.id)}/output_items`, signal)));
    compare.replaceChildren(comparison(runA, runB, names), h("h2", {}, "Rows where they differ"),
      ...differences(runA, runB, itemsA, itemsB, names));
  } else {
    compare.replaceChildren(h("p", { class: "muted" }, runs.length < 2 ? "Two runs are needed to compare." : "Choose two runs above."));
  }

  // The runs' figures refresh while one is unfinished; the side by side is as of when the page opened.
  while (runs.some((r) => !FINISHED.has(r.status))) {
    await sleep(3000, signal);
    if (signal.aborted) return;
    runs = await all(`/v1/evals/${encodeURIComponent(id)}/runs`, signal);
    runsCard.replaceChildren(runsTable(runs, names, chosen));
  }
}
