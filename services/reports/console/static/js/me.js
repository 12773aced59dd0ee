// A user's own page: whether a limit applies, the limit, spend, the reset, and this period's costs.
import { dateTime, day, dollars, PERIOD_TITLES } from "./format.js";
import { chatTable, modelTable, notes, summaryCards } from "./breakdown.js";
import { limitCard } from "./limit.js";
import { h, region, replace } from "./ui.js";

export async function render(main, { api, session }) {
  if (session.role !== "portal") {
    replace(
      main,
      h("h1", {}, "My spend"),
      h("p", { class: "notice" }, "This page shows one user's own spend and opens with the portal token the platform gives that user. As an admin, open a user from ", h("a", { href: "/console/costs" }, "cost tracking"), "."),
    );
    return;
  }
  const userId = session.user_id;
  const body = h("div", { id: "me" });
  replace(main, h("h1", {}, "My spend"), h("p", { class: "page-lede" }, "Your AI chat spend in the current period."), body);
  region(body).load(
    async () => {
      const status = await api("GET", `limits/status/${encodeURIComponent(userId)}`);
      const costs = await api("GET", `costs/users/${encodeURIComponent(userId)}`, {
        params: { start_date: status.period_start, end_date: status.period_end },
      }).catch((error) => {
        if (error.status === 404) return null;
        throw error;
      });
      return { status, costs };
    },
    ({ status, costs }) => {
      const limit = costs && costs.usage_limit ? costs.usage_limit : { ...status, source: status.source };
      const periodEnd = new Date(new Date(status.period_end).getTime() - 1);
      return h(
        "div",
        {},
        h(
          "section",
          { class: "panel", "aria-labelledby": "status-title", id: "my-status" },
          h("h2", { id: "status-title" }, "Status"),
          h(
            "dl",
            { class: "facts" },
            h("dt", {}, "Spend limit"),
            h("dd", { id: "my-limited" }, status.is_limited ? "Active" : "No limit applies to you"),
            h("dt", {}, "Effective limit"),
            h("dd", { id: "my-limit" }, status.is_limited ? `${dollars(status.limit_micros)} ${(PERIOD_TITLES[status.period] || "").toLowerCase()}` : "—"),
            h("dt", {}, "Spent this period"),
            h("dd", { id: "my-spent", "data-value": String(status.spent_micros) }, dollars(status.spent_micros)),
            h("dt", {}, "Period"),
            h("dd", {}, `${day(status.period_start)} – ${day(periodEnd)}`),
            h("dt", {}, "Resets"),
            h("dd", { id: "my-reset" }, dateTime(status.period_end)),
          ),
        ),
        status.is_limited ? limitCard(limit, { who: "you" }) : null,
        costs && costs.message_count > 0 ? summaryCards(costs) : h("p", { class: "empty" }, "No usage data for this period."),
        costs ? notes(costs) : null,
        costs && costs.message_count > 0 ? modelTable(costs.by_model) : null,
        costs && costs.message_count > 0 ? chatTable(costs.by_chat) : null,
      );
    },
  );
}
