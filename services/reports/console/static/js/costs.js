// Cost tracking: the per-user rollup with a date range, search, paging, cost order and CSV.
import { apiUrl } from "./api.js";
import { FIGURES } from "./breakdown.js";
import { count, dayRange } from "./format.js";
import { apiWindow, defaultRange, rangeControl, readRange } from "./range.js";
import { debounce, h, pager, region, replace, table, urlState } from "./ui.js";

export const PAGE_SIZE = 25;

export function userCell(row, range) {
  const params = new URLSearchParams({ start: range.start, end: range.end });
  const name = row.name || row.username || row.user_id;
  return h(
    "div",
    { class: "user-cell" },
    h("a", { href: `/console/users/${encodeURIComponent(row.user_id)}?${params}` }, name),
    h("span", { class: "handle" }, row.username ? `@${row.username}` : row.user_id),
  );
}

export async function render(main, { api }) {
  const defaults = { ...defaultRange(), q: "", page: "1", order: "desc" };
  const { state, save } = urlState(defaults);
  const results = h("div", { id: "cost-results" });
  const view = region(results);
  const summary = h("p", { class: "muted", id: "cost-summary", "aria-live": "polite" });
  const download = h("a", { class: "button", id: "cost-csv", download: "" }, "Download CSV");

  function params() {
    const page = Math.max(1, Number.parseInt(state.page, 10) || 1);
    return { ...apiWindow(state), q: state.q.trim(), order: state.order, limit: PAGE_SIZE, offset: (page - 1) * PAGE_SIZE };
  }

  function refresh() {
    save();
    const query = params();
    const range = readRange(state);
    download.href = apiUrl("costs/users", { start_date: query.start_date, end_date: query.end_date, q: query.q, order: query.order, format: "csv" });
    summary.textContent = `${dayRange(range.start, range.end)}${query.q ? ` · matching “${query.q}”` : ""}`;
    view.load(
      () => api("GET", "costs/users", { params: query }),
      (data) => {
        const columns = [
          { name: "user", label: "User", render: (r) => userCell(r, state), value: (r) => r.user_id },
          ...FIGURES.slice(0, 2),
          { name: "chats", label: "Chats", numeric: true, render: (r) => count(r.chat_count), value: (r) => r.chat_count },
          ...FIGURES.slice(2),
        ];
        columns[1].sort = {
          state: state.order,
          onToggle: () => {
            state.order = state.order === "desc" ? "asc" : "desc";
            state.page = "1";
            refresh();
            requestAnimationFrame(() => document.querySelector("#cost-results th button.sort")?.focus());
          },
        };
        return h(
          "div",
          {},
          table({
            caption: h("span", { class: "sr-only" }, "Spend per user"),
            columns,
            rows: data.users,
            rowKey: (r) => r.user_id,
            emptyText: query.q ? `No users match “${query.q}” in this period.` : "No usage data for this period.",
          }),
          data.count > 0
            ? pager({ offset: query.offset, pageSize: PAGE_SIZE, total: data.count, label: "users", onPage: (offset) => { state.page = String(offset / PAGE_SIZE + 1); refresh(); } })
            : null,
        );
      },
    );
  }

  const search = h("input", { type: "search", id: "cost-search", value: state.q, placeholder: "Name or username", autocomplete: "off" });
  search.addEventListener("input", debounce(() => { state.q = search.value; state.page = "1"; refresh(); }, 300));

  replace(
    main,
    h("h1", {}, "Cost tracking"),
    h("p", { class: "page-lede" }, "LLM chat spend per user. Title generation is not counted."),
    rangeControl(state, () => { state.page = "1"; refresh(); }, "cost-range"),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "cost-search" }, "Search by name or username"), search),
      h("div", { class: "spacer" }),
      download,
    ),
    summary,
    results,
  );
  refresh();
}
