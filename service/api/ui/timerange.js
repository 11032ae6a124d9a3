// A page's From and Until: datetime-local inputs, read in the browser's time zone as the unix seconds the API takes
// (From inclusive, Until exclusive, as GET /v1/audit and POST /v1/chat/completions/exports both count them).
import { h } from "./dom.js";

/** From and Until, each a datetime-local input to the second (a minute is too coarse to tell apart answers given a
 * moment apart), labelled, side by side in one box that wraps as one: {from, until, fields}. */
export function rangeFields(prefix, { from = "", until = "" } = {}) {
  const input = (id, value) => h("input", { id, type: "datetime-local", step: "1", value });
  const inputs = { from: input(`${prefix}-from`, from), until: input(`${prefix}-until`, until) };
  const field = (input, label) => h("div", { class: "field" }, h("label", { for: input.id }, label), input);
  return { ...inputs, fields: h("div", { class: "range" }, field(inputs.from, "From"), field(inputs.until, "Until")) };
}

/** A datetime-local value (the browser's time zone) -> unix seconds; "" -> null, a bad one -> NaN. */
function seconds(local) {
  return local ? new Date(local).getTime() / 1000 : null;
}

/** From and Until's values -> {start, end} in unix seconds (each null when empty), or null when either is no date. */
export function range(from, to) {
  const [start, end] = [seconds(from), seconds(to)];
  return Number.isNaN(start) || Number.isNaN(end) ? null : { start, end };
}

export const RANGE_HELP = "From and Until are a date and a time.";
