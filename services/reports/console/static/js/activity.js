// Activity: active users per bucket as a bar chart, and each user's time below it.
import { count, day, duration } from "./format.js";
import { apiWindow, defaultRange, rangeControl } from "./range.js";
import { empty, h, region, replace, table, urlState } from "./ui.js";

const INTERVALS = ["1 day", "1 week", "1 month", "90 day", "1 year"];
const CATEGORIES = [
  ["any", "Any"],
  ["ide", "IDE"],
  ["login", "Login"],
  ["app", "Apps"],
  ["tunnel", "Tunnel (SSH)"],
  ["web_terminal", "Web terminal"],
];
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

function chart(buckets, category) {
  const width = 960;
  const height = 260;
  const pad = { left: 44, right: 12, top: 14, bottom: 36 };
  const values = buckets.map((b) => b.user_activity.length);
  const max = Math.max(1, ...values);
  const step = (width - pad.left - pad.right) / Math.max(1, buckets.length);
  const barWidth = Math.max(2, step * 0.7);
  const scale = (v) => ((height - pad.top - pad.bottom) * v) / max;
  const tip = h("p", { class: "chart-tip", id: "chart-tip", "aria-live": "polite" }, "Hover or focus a bar for its figures.");
  const title = `Active users per ${buckets.length ? "bucket" : ""} (${category})`;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": title });
  const ticks = 4;
  for (let i = 0; i <= ticks; i += 1) {
    const v = Math.round((max * i) / ticks);
    const y = height - pad.bottom - scale(v);
    root.append(svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y, y2: y }));
    root.append(svg("text", { x: pad.left - 8, y: y + 4, "text-anchor": "end" }, String(v)));
  }
  root.append(svg("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom }));
  const labelEvery = Math.max(1, Math.ceil(buckets.length / 10));
  buckets.forEach((bucket, i) => {
    const v = values[i];
    const x = pad.left + i * step + (step - barWidth) / 2;
    const time = bucket.user_activity.reduce((sum, u) => sum + u.duration, 0);
    const text = `${day(bucket.time)}: ${count(v)} active user${v === 1 ? "" : "s"}, ${duration(time)} in total`;
    const bar = svg("rect", { class: "bar", x, y: height - pad.bottom - scale(v), width: barWidth, height: Math.max(v ? 1 : 0, scale(v)), tabindex: "0", role: "img", "aria-label": text, "data-users": v });
    const show = () => { tip.textContent = text; };
    bar.addEventListener("mouseenter", show);
    bar.addEventListener("focus", show);
    root.append(bar);
    if (i % labelEvery === 0) {
      const d = new Date(bucket.time);
      root.append(svg("text", { x: x + barWidth / 2, y: height - pad.bottom + 16, "text-anchor": "middle" }, `${d.toLocaleString("en-US", { month: "short", timeZone: "UTC" })} ${d.getUTCDate()}`));
    }
  });
  return h("figure", { class: "panel", id: "activity-chart" }, h("figcaption", { class: "label" }, "Active users"), root, tip);
}

export async function render(main, { api }) {
  const { state, save } = urlState({ ...defaultRange(), interval: "1 day", category: "any", sort: "time" });
  const body = h("div", { id: "activity" });
  const view = region(body);
  const interval = h("select", { id: "activity-interval" }, INTERVALS.map((v) => h("option", { value: v, selected: v === state.interval }, v)));
  const category = h("select", { id: "activity-category" }, CATEGORIES.map(([v, label]) => h("option", { value: v, selected: v === state.category }, label)));
  interval.addEventListener("change", () => { state.interval = interval.value; refresh(); });
  category.addEventListener("change", () => { state.category = category.value; refresh(); });

  function usersTable(users) {
    const rows = Object.values(users);
    const key = state.sort === "sessions" ? "total_count" : "total_duration";
    rows.sort((a, b) => b[key] - a[key] || a.username.localeCompare(b.username));
    const sortable = (name, label) => ({
      state: state.sort === name ? "desc" : "none",
      onToggle: () => { state.sort = name; save(); replace(document.getElementById("activity-users"), usersTable(users)); document.querySelector(`#activity-users th[data-sort="${name}"] button`)?.focus(); },
      label,
    });
    const node = table({
      caption: "Time per user in the range",
      columns: [
        { name: "user", label: "User", render: (u) => h("div", { class: "user-cell" }, h("span", {}, u.name || u.username || u.id), h("span", { class: "handle" }, u.username ? `@${u.username}` : u.id)), value: (u) => u.id },
        { name: "roles", label: "Roles", render: (u) => (u.roles.length ? u.roles.join(", ") : "—") },
        { name: "sessions", label: "Sessions", numeric: true, render: (u) => count(u.total_count), value: (u) => u.total_count, sort: sortable("sessions", "Sessions") },
        { name: "time", label: "Active time", numeric: true, render: (u) => duration(u.total_duration), value: (u) => u.total_duration, sort: sortable("time", "Active time") },
      ],
      rows,
      rowKey: (u) => u.id,
      emptyText: "Nobody was active in this range.",
    });
    for (const [name, index] of [["sessions", 2], ["time", 3]]) node.querySelectorAll("th")[index]?.setAttribute("data-sort", name);
    return h("div", { id: "activity-users" }, node);
  }

  function refresh() {
    save();
    const window_ = apiWindow(state);
    view.load(
      () => api("GET", "metrics/activity", { params: { start: window_.start_date, end: window_.end_date, interval: state.interval, category: state.category } }),
      (data) => h(
        "div",
        {},
        data.activity.every((b) => b.user_activity.length === 0) ? empty("No activity in this range.") : chart(data.activity, CATEGORIES.find(([v]) => v === state.category)?.[1] || state.category),
        usersTable(data.users),
      ),
    );
  }

  replace(
    main,
    h("h1", {}, "Activity"),
    h("p", { class: "page-lede" }, "Who used the platform, and for how long: IDE, SSH, apps and terminals."),
    rangeControl(state, refresh, "activity-range"),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "activity-interval" }, "Interval"), interval),
      h("div", { class: "field" }, h("label", { for: "activity-category" }, "Category"), category),
    ),
    body,
  );
  refresh();
}
