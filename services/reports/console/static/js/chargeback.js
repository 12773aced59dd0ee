// Chargeback: a month's report per workspace (team), member and licensed user, with downloads.
import { apiUrl } from "./api.js";
import { count, dateTime, dollars } from "./format.js";
import { h, pagedTable, region, replace, table } from "./ui.js";

function thisMonth() {
  const now = new Date();
  return `${now.getUTCFullYear()}-${String(now.getUTCMonth() + 1).padStart(2, "0")}`;
}

function mb(value) {
  return `${Number(value).toLocaleString("en-US", { maximumFractionDigits: 1 })} MB`;
}

export async function render(main, { api }) {
  const params = new URLSearchParams(window.location.search);
  let month = /^\d{4}-\d{2}$/.test(params.get("month") || "") ? params.get("month") : thisMonth();
  const picker = h("input", { type: "month", id: "chargeback-month", value: month, max: thisMonth() });
  const downloads = h("div", { class: "presets", id: "chargeback-downloads", role: "group", "aria-label": "Downloads" });
  const body = h("div", { id: "chargeback" });
  const view = region(body);

  function links() {
    const base = { reportMonth: month };
    replace(
      downloads,
      h("a", { class: "button", href: apiUrl("chargeback/report", base), download: `tollgate-chargeback-${month}.json`, id: "download-json" }, "JSON"),
      ["workspaces", "members", "users"].map((t) => h("a", { class: "button", href: apiUrl("chargeback/report", { ...base, format: "csv", table: t }), download: "", id: `download-${t}` }, `CSV: ${t}`)),
    );
  }

  function refresh() {
    window.history.replaceState(null, "", `${window.location.pathname}?month=${month}`);
    links();
    view.load(
      () => api("GET", "chargeback/report", { params: { reportMonth: month } }),
      (report) => {
        const members = report.workspaces.flatMap((w) => w.members.map((m) => ({ ...m, workspace: w.name })));
        const users = report.users.licensedUsers;
        const cost = users.reduce((sum, u) => sum + u.llmCostMicros, 0);
        const builds = users.reduce((sum, u) => sum + u.agentBuilds, 0);
        return h(
          "div",
          {},
          h(
            "div",
            { class: "cards" },
            h("div", { class: "card" }, h("div", { class: "label" }, "Workspaces"), h("div", { class: "value", id: "cb-workspaces" }, count(report.workspaces.length))),
            h("div", { class: "card" }, h("div", { class: "label" }, "Licensed users"), h("div", { class: "value", id: "cb-users" }, count(report.users.numberOfUsers))),
            h("div", { class: "card" }, h("div", { class: "label" }, "LLM cost (licensed users)"), h("div", { class: "value" }, dollars(cost))),
            h("div", { class: "card" }, h("div", { class: "label" }, "Agent builds"), h("div", { class: "value" }, count(builds))),
          ),
          h("h2", { id: "ws-title" }, "Workspaces"),
          table({
            caption: h("span", { class: "sr-only" }, "Workspaces"),
            columns: [
              { name: "workspace", label: "Workspace", render: (w) => w.name, value: (w) => w.id },
              { name: "members", label: "Members", numeric: true, render: (w) => count(w.numberOfMembers), value: (w) => w.numberOfMembers },
              { name: "projects", label: "Projects", numeric: true, render: (w) => count(w.projects.length) },
              { name: "experiments", label: "Experiments", numeric: true, render: (w) => count(w.numberOfExperiments), value: (w) => w.numberOfExperiments },
              { name: "size", label: "Storage", numeric: true, render: (w) => mb(w.totalSizeInMb), value: (w) => w.totalSizeInMb },
              { name: "cost", label: "LLM cost", numeric: true, render: (w) => dollars(w.llmCostMicros), value: (w) => w.llmCostMicros },
              { name: "builds", label: "Agent builds", numeric: true, render: (w) => count(w.agentBuilds), value: (w) => w.agentBuilds },
            ],
            rows: report.workspaces,
            rowKey: (w) => w.id,
            emptyText: "No workspaces in the directory.",
          }),
          h("h2", {}, "Members"),
          pagedTable({
            caption: h("span", { class: "sr-only" }, "Members by workspace"),
            columns: [
              { name: "user", label: "Member", render: (m) => m.userName, value: (m) => m.userId },
              { name: "workspace", label: "Workspace", render: (m) => m.workspace },
              { name: "email", label: "Email", render: (m) => m.email },
              { name: "experiments", label: "Experiments", numeric: true, render: (m) => count(m.numberOfExperiments) },
              { name: "size", label: "Storage", numeric: true, render: (m) => mb(m.totalSizeInMb) },
              { name: "cost", label: "LLM cost", numeric: true, render: (m) => dollars(m.llmCostMicros), value: (m) => m.llmCostMicros },
              { name: "builds", label: "Agent builds", numeric: true, render: (m) => count(m.agentBuilds) },
            ],
            rows: members,
            rowKey: (m) => `${m.workspace}/${m.userId}`,
            emptyText: "No members.",
            pagerLabel: "members",
          }, 25),
          h("h2", {}, "Licensed users"),
          pagedTable({
            caption: h("span", { class: "sr-only" }, "Licensed users"),
            columns: [
              { name: "user", label: "User", render: (u) => h("div", { class: "user-cell" }, h("span", {}, u.username), h("span", { class: "handle" }, u.email)), value: (u) => u.userId },
              { name: "created", label: "Created", render: (u) => dateTime(u.created_at) },
              { name: "ui", label: "UI calls", numeric: true, render: (u) => count(u.uiUsageCount), value: (u) => u.uiUsageCount },
              { name: "sdk", label: "SDK calls", numeric: true, render: (u) => count(u.sdkUsageCount), value: (u) => u.sdkUsageCount },
              { name: "suspended", label: "Suspended", render: (u) => (u.suspended ? "Yes" : "No") },
              { name: "cost", label: "LLM cost", numeric: true, render: (u) => dollars(u.llmCostMicros), value: (u) => u.llmCostMicros },
              { name: "builds", label: "Agent builds", numeric: true, render: (u) => count(u.agentBuilds), value: (u) => u.agentBuilds },
            ],
            rows: users,
            rowKey: (u) => u.userId,
            emptyText: "No licensed users.",
            pagerLabel: "licensed users",
          }, 25),
        );
      },
    );
  }

  picker.addEventListener("change", () => {
    if (/^\d{4}-\d{2}$/.test(picker.value)) { month = picker.value; refresh(); }
  });
  replace(
    main,
    h("h1", {}, "Chargeback"),
    h("p", { class: "page-lede" }, "A month's usage per team for internal billing, in Comet's report format."),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "chargeback-month" }, "Month"), picker),
      h("div", { class: "spacer" }),
      h("div", { class: "field" }, h("span", { class: "label" }, "Download"), downloads),
    ),
    body,
  );
  refresh();
}
