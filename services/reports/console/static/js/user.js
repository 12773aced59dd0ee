// One user's spend: identity, summary cards, the usage-limit bar, by model and by chat.
import { dayRange } from "./format.js";
import { chatTable, modelTable, notes, summaryCards } from "./breakdown.js";
import { limitCard } from "./limit.js";
import { apiWindow, defaultRange, rangeControl, readRange } from "./range.js";
import { empty, h, initials, region, replace, urlState } from "./ui.js";

export async function render(main, { api }) {
  const userId = decodeURIComponent(window.location.pathname.split("/")[3] || "");
  const { state, save } = urlState(defaultRange());
  const body = h("div", { id: "user-detail" });
  const view = region(body);
  const back = h("a", { href: "/console/costs" }, "← Back to cost tracking");

  function refresh() {
    save();
    const params = new URLSearchParams({ start: state.start, end: state.end });
    back.href = `/console/costs?${params}`;
    const range = readRange(state);
    view.load(
      () => api("GET", `costs/users/${encodeURIComponent(userId)}`, { params: apiWindow(state) }),
      (data) => h(
        "div",
        {},
        h(
          "div",
          { class: "panel identity" },
          h("div", { class: "avatar", "aria-hidden": "true" }, initials(data.name || data.username || data.user_id)),
          h(
            "div",
            {},
            h("div", { class: "name" }, data.name || data.username || data.user_id),
            h("div", { class: "muted" }, data.username ? `@${data.username} · ` : "", h("code", {}, data.user_id)),
            h("div", { class: "muted" }, dayRange(range.start, range.end)),
          ),
        ),
        data.usage_limit ? limitCard(data.usage_limit) : null,
        data.message_count === 0 ? empty("No usage data for this user in this period.") : summaryCards(data),
        notes(data),
        data.message_count === 0 ? null : modelTable(data.by_model),
        data.message_count === 0 ? null : chatTable(data.by_chat),
      ),
    );
  }

  replace(main, h("p", {}, back), h("h1", {}, "User spend"), rangeControl(state, refresh, "user-range"), body);
  refresh();
}
