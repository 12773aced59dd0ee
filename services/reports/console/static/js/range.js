// The date range control of the cost, user and activity pages: two dates (inclusive) and presets.
import { addDays, isoDay, parseDay, todayUtc } from "./format.js";
import { h } from "./ui.js";

const PRESETS = [
  ["Today", 0, 0],
  ["Yesterday", 1, 1],
  ["Last 7 days", 6, 0],
  ["Last 14 days", 13, 0],
  ["Last 30 days", 29, 0],
];

/** The default range: the last 30 days, today included. */
export function defaultRange() {
  const today = todayUtc();
  return { start: isoDay(addDays(today, -29)), end: isoDay(today) };
}

/** Start and end (inclusive) as Dates, repaired when the address held nonsense. */
export function readRange(state) {
  const fallback = defaultRange();
  let start = parseDay(state.start) || parseDay(fallback.start);
  let end = parseDay(state.end) || parseDay(fallback.end);
  if (end < start) [start, end] = [end, start];
  return { start, end };
}

/** The API's half-open window for an inclusive range. */
export function apiWindow(state) {
  const { start, end } = readRange(state);
  return { start_date: isoDay(start), end_date: isoDay(addDays(end, 1)) };
}

/** The control; `onChange()` runs after state.start/state.end change. */
export function rangeControl(state, onChange, idPrefix = "range") {
  const today = isoDay(todayUtc());
  const startInput = h("input", { type: "date", id: `${idPrefix}-start`, value: state.start, max: today });
  const endInput = h("input", { type: "date", id: `${idPrefix}-end`, value: state.end, max: today });
  const buttons = [];
  function markPressed() {
    const todayDate = todayUtc();
    for (const [button, back, endBack] of buttons) {
      const pressed = state.start === isoDay(addDays(todayDate, -back)) && state.end === isoDay(addDays(todayDate, -endBack));
      button.setAttribute("aria-pressed", pressed ? "true" : "false");
    }
  }
  function set(start, end) {
    state.start = start;
    state.end = end;
    startInput.value = start;
    endInput.value = end;
    markPressed();
    onChange();
  }
  function fromInputs() {
    if (!startInput.value || !endInput.value) return;
    let start = startInput.value;
    let end = endInput.value;
    if (end < start) [start, end] = [end, start];
    set(start, end);
  }
  startInput.addEventListener("change", fromInputs);
  endInput.addEventListener("change", fromInputs);
  const presetNodes = PRESETS.map(([label, back, endBack]) => {
    const button = h("button", { type: "button", "aria-pressed": "false", onclick: () => {
      const todayDate = todayUtc();
      set(isoDay(addDays(todayDate, -back)), isoDay(addDays(todayDate, -endBack)));
    } }, label);
    buttons.push([button, back, endBack]);
    return button;
  });
  markPressed();
  return h(
    "div",
    { class: "toolbar", role: "group", "aria-label": "Date range" },
    h("div", { class: "field" }, h("label", { for: `${idPrefix}-start` }, "From"), startInput),
    h("div", { class: "field" }, h("label", { for: `${idPrefix}-end` }, "To (inclusive)"), endInput),
    h("div", { class: "field" }, h("span", { class: "label", id: `${idPrefix}-presets` }, "Quick ranges"), h("div", { class: "presets", role: "group", "aria-labelledby": `${idPrefix}-presets` }, presetNodes)),
  );
}
