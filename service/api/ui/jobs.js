// Jobs: the list, and one job live: progress, loss curves drawn as /jobs/{id}/events arrive, cancel, outcome.
import { api, events } from "./api.js";
import { badge, duration, errorBox, fixed, h, when } from "./dom.js";
import { evaluationTable } from "./skills.js";

const FINISHED = new Set(["succeeded", "failed", "cancelled"]);

/** Plain words for a failed job's error; the trainer's own message stays one click away. */
const EXPLANATIONS = [
  [/^BelowMinimumScore/, "The skill trained, but on the held-out rows it scored below the min_score it had to reach, so it was not published."],
  [/max_job_seconds/, "The job ran longer than this gateway allows one job (max_job_seconds) and was stopped."],
  [/out of memory|MemoryError|OutOfMemory/i, "The trainer ran out of memory. A smaller batch_size or max_seq_length needs less."],
  [/^interrupted/, "The gateway stopped while this job was running. Submit it again."],
  [/^cancel/i, "The job was cancelled; nothing was published."],
  [/StoreUnavailable/, "The object store could not be reached, so the job could not finish."],
  [/Kubernetes Job/, "The Kubernetes Job that ran the trainer failed."],
  [/trainer exited with code/, "The training process stopped before it finished."],
  [/DatasetError|dataset/i, "The dataset could not be used for training."],
];

export function explain(error) {
  const found = EXPLANATIONS.find(([pattern]) => pattern.test(error || ""));
  return found ? found[1] : "Training failed; nothing was published.";
}

function progressText(job) {
  const p = job.progress;
  return p.total_steps ? `${p.step} / ${p.total_steps}` : p.phase ? p.phase.replace("_", " ") : job.status;
}

function elapsed(job) {
  if (!job.started_at) return null;
  return (job.finished_at || Date.now() / 1000) - job.started_at;
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
});

export async function list(main, { signal }) {
  document.title = "Jobs · skillserve";
  const body = h("tbody");
  main.replaceChildren(h("div", { class: "head" }, h("div", {}, h("h1", {}, "Jobs"),
    h("p", { class: "muted" }, "Training jobs, newest first.")), h("div", { class: "actions" },
    h("a", { class: "button", href: "#/new" }, "New skill"))),
  h("div", { class: "card table-wrap" }, h("table", { id: "jobs" }, h("thead", {}, h("tr", {},
    h("th", {}, "skill"), h("th", {}, "status"), h("th", {}, "progress"), h("th", { class: "hide-narrow" }, "created"),
    h("th", { class: "num hide-narrow" }, "took"), h("th", { class: "num" }, "loss"))), body)));
  // Refreshed every few seconds while a job is unfinished; leaving the page stops it.
  for (;;) {
    const jobs = (await api("/jobs", { signal })).data;
    body.replaceChildren(...(jobs.length ? jobs.map((j) => h("tr", {},
      h("th", { scope: "row" }, h("a", { href: `#/jobs/${j.id}` }, j.name), h("div", { class: "muted mono" }, j.id.slice(0, 8))),
      h("td", {}, badge(j.status)),
      h("td", {}, progressText(j), j.progress.total_steps && !FINISHED.has(j.status)
        ? h("progress", { max: j.progress.total_steps, value: j.progress.step }) : null),
      h("td", { class: "hide-narrow" }, when(j.created_at)), h("td", { class: "num hide-narrow" }, duration(elapsed(j))),
      h("td", { class: "num" }, fixed(j.progress.loss))))
      : [h("tr", {}, h("td", { colspan: 6, class: "empty" }, "No jobs yet. ", h("a", { href: "#/new" }, "Train a skill"), "."))]));
    if (jobs.every((j) => FINISHED.has(j.status))) return;
    await sleep(3000, signal);
    if (signal.aborted) return;
  }
}

// ------------------------------------------------------------------ the loss curves

/** Points seen so far, kept in the tab's session storage so a job's curve survives leaving its page. */
function loadCurve(id) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(`skillserve.curve.${id}`));
    if (saved && Array.isArray(saved.steps)) return saved;
  } catch {
    // a damaged entry: start again
  }
  return { steps: [], loss: [], eval: [], lastEval: null };
}

function record(curve, id, progress) {
  const { step, loss, eval_loss: evalLoss } = progress;
  if (!step || (loss === null && evalLoss === null)) return false;
  // The record carries the last eval loss forward: a new value is a new evaluation, drawn at its step.
  const fresh = evalLoss !== null && evalLoss !== curve.lastEval;
  const last = curve.steps.length - 1;
  if (last >= 0 && curve.steps[last] === step) {
    curve.loss[last] = loss;
    if (fresh) curve.eval[last] = evalLoss;
  } else if (last < 0 || step > curve.steps[last]) {
    curve.steps.push(step);
    curve.loss.push(loss);
    curve.eval.push(fresh ? evalLoss : null);
  } else {
    return false;
  }
  if (fresh) curve.lastEval = evalLoss;
  sessionStorage.setItem(`skillserve.curve.${id}`, JSON.stringify(curve));
  return true;
}

function chart(container, curve) {
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const axis = (label) => ({ label, stroke: color("--muted"), grid: { stroke: color("--line") }, ticks: { stroke: color("--line") } });
  const plot = new uPlot({
    width: Math.max(container.clientWidth, 280),
    height: 280,
    scales: { x: { time: false } },
    // Whole steps only on the x axis.
    axes: [{ ...axis("step"), incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000] }, axis("loss")],
    series: [
      { label: "step" },
      { label: "train loss", stroke: color("--skill"), width: 2, spanGaps: true, value: (_, v) => fixed(v, 4) },
      { label: "eval loss", stroke: color("--eval"), width: 2, spanGaps: true, points: { show: true, size: 8 }, value: (_, v) => fixed(v, 4) },
    ],
  }, [curve.steps, curve.loss, curve.eval], container);
  new ResizeObserver(() => plot.setSize({ width: Math.max(container.clientWidth, 280), height: 280 })).observe(container);
  return plot;
}

// ------------------------------------------------------------------ one job, live

export async function detail(main, { params: [id], signal }) {
  let job = await api(`/jobs/${encodeURIComponent(id)}`, { signal });
  document.title = `Job ${job.name} · skillserve`;
  const curve = loadCurve(id);
  record(curve, id, job.progress);

  const stat = (label) => {
    const dd = h("dd", {}, "—");
    return [h("div", { class: "stat" }, h("dt", {}, label), dd), dd];
  };
  const [phaseBox, phase] = stat("phase");
  const [stepBox, step] = stat("step");
  const [etaBox, eta] = stat("ETA");
  const [rateBox, rate] = stat("tokens/s");
  const [lossBox, loss] = stat("train loss");
  const [evalBox, evalLoss] = stat("eval loss");
  const [lrBox, lr] = stat("learning rate");
  const [timeBox, took] = stat("elapsed");
  const bar = h("progress", { max: 1, value: 0, "aria-label": "training progress" });
  const status = h("span");
  const notice = h("div");
  const outcome = h("section");
  const plotBox = h("div", { class: "chart", id: "loss-chart", role: "img", "aria-label": "train and eval loss by step" });
  const empty = h("p", { class: "muted" }, "The curve starts with the first training step.");
  const hyper = h("tbody");
  const cancel = h("button", { class: "danger", type: "button", onclick: cancelJob }, "Cancel job");

  async function cancelJob() {
    if (!confirm(`Cancel training ${job.name}? Nothing will be published.`)) return;
    cancel.disabled = true;
    try {
      update(await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" }));
    } catch (error) {
      cancel.disabled = false;
      notice.replaceChildren(errorBox(error.status === 403 ? "Cancelling needs an admin key" : "Cancel failed", error));
    }
  }

  main.replaceChildren(
    h("div", { class: "head" }, h("div", {}, h("h1", {}, "Training ", h("a", { href: `#/skills/${encodeURIComponent(job.name)}` }, job.name), " ", status),
      h("p", { class: "muted mono" }, `job ${job.id} · version ${job.version} · template ${job.template} · ${job.runner} runner`)),
    h("div", { class: "actions" }, cancel)),
    notice,
    h("dl", { class: "stats" }, phaseBox, stepBox, etaBox, rateBox, lossBox, evalBox, lrBox, timeBox),
    h("div", { style: "margin:.75rem 0 1rem" }, bar),
    h("section", { class: "card", "aria-labelledby": "curve-title" }, h("h2", { id: "curve-title", style: "margin-top:0" }, "Loss"), empty, plotBox),
    outcome,
    h("details", { class: "card", style: "margin-top:1rem" }, h("summary", {}, "Hyperparameters in use"),
      h("div", { class: "table-wrap" }, h("table", {}, hyper))),
  );
  const plot = chart(plotBox, curve);

  function update(next) {
    job = next;
    const p = job.progress;
    const done = FINISHED.has(job.status);
    status.replaceChildren(badge(job.status));
    phase.textContent = done ? job.status : (p.phase || "queued").replace("_", " ");
    step.textContent = p.total_steps ? `${p.step} / ${p.total_steps}` : "—";
    eta.textContent = done ? "—" : duration(p.eta_seconds);
    rate.textContent = p.tokens_per_second ? Math.round(p.tokens_per_second).toLocaleString() : "—";
    loss.textContent = fixed(p.loss, 4);
    evalLoss.textContent = fixed(p.eval_loss, 4);
    lr.textContent = typeof p.learning_rate === "number" ? p.learning_rate.toExponential(2) : "—";
    took.textContent = duration(elapsed(job));
    bar.max = p.total_steps || 1;
    bar.value = job.status === "succeeded" ? bar.max : p.step;
    cancel.hidden = done;
    plotBox.dataset.points = String(curve.steps.length);
    empty.hidden = curve.steps.length > 0 && !(done && curve.steps.length < p.step);
    if (done && curve.steps.length < p.step) {
      empty.textContent = "A job record keeps only its latest figures: the curve shows the steps this tab saw live.";
    }
    plot.setData([curve.steps, curve.loss, curve.eval]);
    hyper.replaceChildren(...Object.entries(job.hyperparameters).map(([k, v]) => h("tr", {}, h("th", { scope: "row", class: "mono" }, k),
      h("td", { class: "mono" }, typeof v === "object" && v !== null ? JSON.stringify(v) : String(v)))));
    if (job.status === "succeeded") {
      outcome.replaceChildren(h("div", { class: "card alert info", role: "status", style: "margin-top:1rem" },
        h("h2", {}, `Published ${job.name} ${job.version}`),
        h("p", {}, h("a", { class: "button", href: `#/play?skill=${encodeURIComponent(job.name)}` }, "Try it in the playground"), " ",
          h("a", { class: "button ghost", href: `#/skills/${encodeURIComponent(job.name)}` }, "See the skill")),
        evaluationTable(job.metrics)));
    } else if (job.status === "failed" || job.status === "cancelled") {
      outcome.replaceChildren(h("div", { class: "card alert", role: "alert", style: "margin-top:1rem" },
        h("h2", {}, job.status === "failed" ? "Why it failed" : "Cancelled"), h("p", { class: "explanation" }, explain(job.error)),
        job.error ? h("details", {}, h("summary", {}, "The trainer's message"), h("pre", {}, job.error)) : null));
    }
  }
  update(job);
  if (FINISHED.has(job.status)) return;

  // Followed in the background, so the page is usable at once; leaving it aborts the stream.
  (async () => {
    while (!signal.aborted && !FINISHED.has(job.status)) {
      try {
        for await (const event of events(`/jobs/${encodeURIComponent(id)}/events`, { signal })) {
          if (event.event !== "job") continue;
          const next = JSON.parse(event.data);
          record(curve, id, next.progress);
          update(next);
        }
      } catch (error) {
        if (signal.aborted || error.status === 401) return;
        notice.replaceChildren(h("p", { class: "muted", role: "status" }, `Lost the live stream (${error.message}); reconnecting…`));
        await sleep(2000, signal);
        continue;
      }
      notice.replaceChildren();
      if (!FINISHED.has(job.status)) await sleep(1000, signal); // the stream ended early: follow again
    }
  })();
}
