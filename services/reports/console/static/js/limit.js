// The usage-limit card: spent against the limit, a colour-coded bar, what remains and the reset.
import { day, dateTime, dollars, limitState, PERIOD_TITLES } from "./format.js";
import { h } from "./ui.js";

function sourceText(limit) {
  if (limit.source === "user") return "a limit set for this user";
  if (limit.source === "group") return `the group ${limit.group_name || limit.group_id}`;
  if (limit.source === "default") return "the default limit";
  return null;
}

export function limitCard(limit, { who = "this user" } = {}) {
  const spent = Number(limit.spent_micros);
  const cap = Number(limit.limit_micros);
  const { percent, colour, reached } = limitState(spent, cap);
  const end = new Date(new Date(limit.period_end).getTime() - 1);
  const source = sourceText(limit);
  return h(
    "section",
    { class: "panel limit-card", id: "limit-card", "aria-labelledby": "limit-title", dataset: { colour, reached: String(reached) } },
    h(
      "div",
      { class: "limit-head" },
      h("h2", { id: "limit-title" }, `${PERIOD_TITLES[limit.period] || ""} Spend Limit`),
      h("span", { class: "muted" }, `${day(limit.period_start)} – ${day(end)}`),
    ),
    h("div", { class: "limit-amounts", id: "limit-amounts" }, `${dollars(spent)} / ${dollars(cap)}`),
    h(
      "div",
      {
        class: `progress ${colour}`,
        role: "progressbar",
        "aria-label": `Spend against the limit for ${who}`,
        "aria-valuemin": "0",
        "aria-valuemax": "100",
        "aria-valuenow": String(Math.round(percent)),
        "aria-valuetext": `${Math.floor(percent)}% used${reached ? ", limit reached" : ""}`,
      },
      h("span", { style: { width: `${percent.toFixed(2)}%` } }),
    ),
    h(
      "div",
      { class: "limit-foot" },
      h("span", {}, `${Math.floor(percent)}% used`),
      reached
        ? h("span", { class: "limit-reached", id: "limit-status" }, "Limit reached")
        : h("span", { id: "limit-status" }, `${dollars(cap - spent)} remaining`),
    ),
    h(
      "p",
      { class: "help" },
      `Resets ${dateTime(limit.period_end)}.`,
      source ? ` Comes from ${source}.` : "",
      reached ? " Chat messages are refused until then." : "",
    ),
  );
}
