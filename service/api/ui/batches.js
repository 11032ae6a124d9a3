// Batches: every batch with its status, line counts and times, its output and error files, and cancel.
import { api, download } from "./api.js";
import { badge, errorBox, h, when } from "./dom.js";

const FINISHED = new Set(["completed", "failed", "expired", "cancelled"]);
const CANCELLABLE = new Set(["validating", "in_progress"]);

const sleep = (ms, signal) => new Promise((resolve) => {
  const timer = setTimeout(resolve, ms);
  signal.addEventListener("abort", () => clearTimeout(timer), { once: true });
});

const finishedAt = (b) => b.completed_at || b.failed_at || b.cancelled_at || b.expired_at || null;

function counts(b) {
  const { completed, failed, total } = b.request_counts;
  return h("td", { class: "num counts" }, `${completed} / ${failed} / ${total}`,
    total && !FINISHED.has(b.status) ? h("progress", { max: total, value: completed + failed, "aria-label": `lines answered of ${b.id}` }) : null);
}

export async function list(main, { query, signal }) {
  document.title = "Batches · skillserve";
  const after = query.get("after") || "";
  const notice = h("div");
  const body = h("tbody");
  const pager = h("p", { class: "row" });
  main.replaceChildren(h("div", { class: "head" }, h("div", {}, h("h1", {}, "Batches"),
    h("p", { class: "muted" }, "Files of requests answered in the background (OpenAI's Batch API), newest first. ",
      "Create them with the API or the openai SDK: ", h("code", {}, "client.batches.create(...)"), "."))),
  notice,
  h("div", { class: "card table-wrap" }, h("table", { id: "batches" }, h("thead", {}, h("tr", {},
    h("th", {}, "batch"), h("th", {}, "status"), h("th", { class: "hide-narrow" }, "model"),
    h("th", { class: "num" }, "completed / failed / total"), h("th", { class: "hide-narrow" }, "created"),
    h("th", { class: "hide-narrow" }, "finished"), h("th", {}, "files"), h("th", {}, h("span", { class: "sr-only" }, "actions")))), body)),
  pager);

  async function fetchFile(fileId) {
    try {
      await download(fileId);
    } catch (error) {
      if (error.status !== 401) notice.replaceChildren(errorBox(error.status === 403 ? "Reading a file needs an admin key" : "The file could not be read", error));
    }
  }

  async function cancel(batch) {
    if (!confirm(`Cancel batch ${batch.id}? Lines already answered stay in its output.`)) return;
    try {
      await api(`/v1/batches/${encodeURIComponent(batch.id)}/cancel`, { method: "POST" });
      await refresh();
    } catch (error) {
      if (error.status !== 401) notice.replaceChildren(errorBox(error.status === 403 ? "Cancelling needs an admin key" : "Cancel failed", error));
    }
  }

  const fileButton = (label, fileId, batch) => (fileId
    ? h("button", { type: "button", class: "ghost small", onclick: () => fetchFile(fileId), "aria-label": `${label} file of ${batch.id}` }, label)
    : null);

  function row(b) {
    const errors = b.errors?.data || [];
    return h("tr", { "data-batch": b.id },
      h("th", { scope: "row" }, h("span", { class: "mono" }, b.id), h("div", { class: "muted mono" }, b.endpoint),
        Object.keys(b.metadata || {}).length ? h("div", { class: "muted" }, Object.entries(b.metadata).map(([k, v]) => `${k}=${v}`).join(", ")) : null),
      h("td", {}, badge(b.status), errors.length ? h("details", {}, h("summary", {}, `${errors.length} error${errors.length === 1 ? "" : "s"}`),
        h("ul", { class: "lines" }, errors.map((e) => h("li", {}, e.line ? h("b", {}, `line ${e.line}`) : null, " ",
          e.code ? `${e.code}: ` : "", e.message || "", e.param ? ` (${e.param})` : "")))) : null),
      h("td", { class: "mono hide-narrow" }, b.model || "several"),
      counts(b),
      h("td", { class: "hide-narrow" }, when(b.created_at)),
      h("td", { class: "hide-narrow" }, when(finishedAt(b))),
      h("td", {}, h("div", { class: "row" }, fileButton("Output", b.output_file_id, b), fileButton("Errors", b.error_file_id, b))),
      h("td", {}, CANCELLABLE.has(b.status)
        ? h("button", { type: "button", class: "danger small", onclick: () => cancel(b), "aria-label": `cancel ${b.id}` }, "Cancel") : null));
  }

  let page;
  async function refresh() {
    page = await api(`/v1/batches?limit=20${after ? `&after=${encodeURIComponent(after)}` : ""}`, { signal });
    body.replaceChildren(...(page.data.length ? page.data.map(row)
      : [h("tr", {}, h("td", { colspan: 8, class: "empty" }, "No batches yet: docs/batches.md shows how to create one."))]));
    pager.replaceChildren(...[after ? h("a", { class: "button ghost small", href: "#/batches" }, "Newest") : null,
      page.has_more ? h("a", { class: "button ghost small", href: `#/batches?after=${encodeURIComponent(page.last_id)}` }, "Older") : null]
      .filter(Boolean));
  }
  await refresh();
  // Refreshed every few seconds while a batch is unfinished; leaving the page stops it.
  while (page.data.some((b) => !FINISHED.has(b.status))) {
    await sleep(3000, signal);
    if (signal.aborted) return;
    await refresh();
  }
}
