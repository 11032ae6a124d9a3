// The dashboard's shell: hash routes to views, the key prompt, the header.
import { api, apiKey, gatewayConfig } from "./api.js";
import { errorBox, h, loading } from "./dom.js";
import * as audit from "./audit.js";
import * as batches from "./batches.js";
import * as evals from "./evals.js";
import * as jobs from "./jobs.js";
import * as play from "./play.js";
import * as skills from "./skills.js";
import * as stored from "./stored.js";
import * as train from "./train.js";

const main = document.getElementById("main");
const keyButton = document.getElementById("key-button");
const ROUTES = [
  [/^#\/skills$/, "skills", skills.list],
  [/^#\/skills\/([^/]+)$/, "skills", skills.detail],
  [/^#\/jobs$/, "jobs", jobs.list],
  [/^#\/jobs\/([^/]+)$/, "jobs", jobs.detail],
  [/^#\/new$/, "new", train.form],
  [/^#\/play$/, "play", play.view],
  [/^#\/evals$/, "evals", evals.list],
  [/^#\/evals\/([^/]+)$/, "evals", evals.detail],
  [/^#\/stored$/, "stored", stored.list],
  [/^#\/stored\/([^/]+)$/, "stored", stored.detail],
  [/^#\/batches$/, "batches", batches.list],
  [/^#\/audit$/, "audit", audit.list],
];

let config = { auth: false };
let running = null; // the current view's AbortController: leaving a page stops its streams and timers

function highlight(section) {
  for (const link of document.querySelectorAll(".bar nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route() {
  running?.abort();
  running = new AbortController();
  const { signal } = running;
  const [path, query] = location.hash.split("?");
  if (!path || path === "#" || path === "#/") {
    location.replace("#/skills");
    return;
  }
  if (config.auth && !apiKey.get()) {
    askForKey(false);
    return;
  }
  const found = ROUTES.map(([pattern, section, view]) => [path.match(pattern), section, view]).find(([m]) => m);
  if (!found) {
    highlight(null);
    main.replaceChildren(h("section", { class: "card narrow" }, h("h1", {}, "Page not found"),
      h("p", {}, "Nothing lives at this address. ", h("a", { href: "#/skills" }, "See every skill"), ".")));
    return;
  }
  const [match, section, view] = found;
  highlight(section);
  main.setAttribute("aria-busy", "true");
  main.replaceChildren(loading());
  try {
    await view(main, {
      params: match.slice(1).map(decodeURIComponent),
      query: new URLSearchParams(query || ""),
      signal,
    });
  } catch (error) {
    if (signal.aborted || error.name === "AbortError" || error.status === 401) return;
    main.replaceChildren(errorBox("This page could not be loaded", error));
  } finally {
    if (!signal.aborted) main.setAttribute("aria-busy", "false");
  }
}

function askForKey(refused) {
  running?.abort();
  highlight(null);
  keyButton.hidden = true;
  const input = h("input", {
    id: "key-input", type: "password", autocomplete: "off", required: true, spellcheck: "false",
    "aria-describedby": "key-help",
  });
  const form = h("form", {
    onsubmit: async (event) => {
      event.preventDefault();
      apiKey.set(input.value);
      try {
        await api("/v1/models");
      } catch (error) {
        if (error.status !== 401) main.prepend(errorBox("The gateway did not answer", error));
        return; // a 401 brings this prompt back, saying the key was refused
      }
      start();
    },
  },
  h("div", { class: "field" }, h("label", { for: "key-input" }, "API key"), input),
  h("button", { type: "submit" }, "Use this key"));
  main.replaceChildren(h("section", { class: "card narrow", "aria-labelledby": "key-title" },
    h("h1", { id: "key-title" }, "This gateway needs an API key"),
    refused ? h("p", { class: "card alert", role: "alert" }, "That key was refused (401). Check it and try again.") : null,
    h("p", { id: "key-help" },
      "An inference key shows skills and jobs and runs the playground; training, cancelling and deleting need an ",
      "admin key. The key stays in this browser tab (session storage) and is sent only to this gateway."),
    form));
  main.setAttribute("aria-busy", "false");
  document.title = "API key · skillserve";
  input.focus();
}

async function showBaseModel() {
  const models = await api("/v1/models");
  const base = models.data.find((m) => !m.parent);
  document.getElementById("base-model").textContent = base ? `base: ${base.id}` : "";
}

function start() {
  const keyed = config.auth && apiKey.get();
  keyButton.hidden = !keyed;
  if (keyed || !config.auth) showBaseModel().catch(() => {});
  route();
}

window.addEventListener("skillserve:unauthorized", () => {
  apiKey.clear();
  askForKey(true);
});
window.addEventListener("hashchange", () => {
  route().then(() => main.focus({ preventScroll: true }));
});
keyButton.addEventListener("click", () => {
  apiKey.clear();
  askForKey(false);
});

try {
  config = await gatewayConfig();
} catch {
  // unreachable for now: the first API call says so, and a 401 still brings the prompt
}
start();
