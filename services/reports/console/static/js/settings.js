// Spend limits: the switch, the period and default limit, group and user overrides, and the
// models without a price.
import { fieldErrors } from "./api.js";
import { count, dollars, microsToInput, toMicros } from "./format.js";
import { amountDialog, confirmDialog, debounce, errorBox, h, region, replace, setFieldError, table } from "./ui.js";

function validAmount(text) {
  const micros = toMicros(text);
  if (micros === null || Number.isNaN(micros)) return "Enter an amount in dollars, e.g. 25.00.";
  if (micros <= 0) return "The amount must be at least $0.01.";
  return null;
}

export async function render(main, { api }) {
  const body = h("div", { id: "settings" });
  replace(main, h("h1", {}, "Spend management"), h("p", { class: "page-lede" }, "Limit what each user may spend on AI chat in a period. A user override wins over their groups; the lowest group limit of the chat's organisation wins over the default."), body);
  const view = region(body);

  async function fetchAll() {
    const [config, groups] = await Promise.all([api("GET", "limits/config"), api("GET", "directory/groups")]);
    const ids = config.user_overrides.map((o) => o.user_id).slice(0, 200);
    const found = await Promise.all(ids.map((id) => api("GET", "directory/users", { params: { q: id, limit: 1 } }).then((r) => r.users.find((u) => u.user_id === id) || null).catch(() => null)));
    const people = Object.fromEntries(ids.map((id, i) => [id, found[i]]));
    return { config, groups: groups.groups, people };
  }
  const reload = () => view.load(fetchAll, draw);

  function draw({ config, groups, people }) {
    return h("div", {}, defaultsForm(config), unpricedBox(config), groupSection(config, groups), userSection(config, people));
  }

  function defaultsForm(config) {
    const enabled = h("input", { type: "checkbox", id: "limits-enabled", role: "switch", checked: config.enabled });
    const period = h("select", { id: "limits-period" }, ["day", "week", "month"].map((p) => h("option", { value: p, selected: p === config.period }, p[0].toUpperCase() + p.slice(1))));
    const amount = h("input", { id: "limits-default", type: "number", step: "0.01", min: "0.01", inputmode: "decimal", value: microsToInput(config.default_limit_micros), placeholder: "No default", "aria-describedby": "limits-default-help" });
    const warning = h("input", { id: "limits-warning", type: "number", step: "1", min: "1", max: "99", inputmode: "numeric", value: config.warning_threshold_percent ?? "", placeholder: "No warning", "aria-describedby": "limits-warning-help" });
    const status = h("span", { role: "status", "aria-live": "polite", id: "limits-status" });
    const formError = h("p", { class: "field-error", role: "alert", id: "limits-form-error", hidden: true });
    const form = h(
      "form",
      { class: "panel", id: "limits-form", "aria-labelledby": "defaults-title", novalidate: true },
      h("h2", { id: "defaults-title" }, "Default limit"),
      h("label", { class: "switch", for: "limits-enabled" }, enabled, h("span", {}, "Enforce spend limits")),
      h("p", { class: "help" }, "Off: nobody is limited, whatever is set below."),
      h(
        "div",
        { class: "form-row" },
        h("div", { class: "field" }, h("label", { for: "limits-period" }, "Period"), period),
        h("div", { class: "field" }, h("label", { for: "limits-default" }, "Default limit ($)"), amount, h("p", { class: "help", id: "limits-default-help" }, "Blank: no default limit.")),
        h("div", { class: "field" }, h("label", { for: "limits-warning" }, "Warn at (% of the limit)"), warning, h("p", { class: "help", id: "limits-warning-help" }, "1 to 99; blank: no warning. Users and admins are notified once per period.")),
        h("div", { class: "field actions" }, h("button", { type: "submit", class: "primary" }, "Save")),
        h("div", { class: "field actions" }, status),
      ),
      formError,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      status.textContent = "";
      formError.hidden = true;
      setFieldError(amount, "");
      setFieldError(period, "");
      setFieldError(warning, "");
      const percent = warning.value.trim() === "" ? null : Number(warning.value);
      if (percent !== null && !(Number.isInteger(percent) && percent >= 1 && percent <= 99)) {
        setFieldError(warning, "Enter a whole number from 1 to 99, or leave it blank.");
        warning.focus();
        return;
      }
      const micros = toMicros(amount.value);
      if (Number.isNaN(micros)) {
        setFieldError(amount, "Enter an amount in dollars, e.g. 25.00.");
        amount.focus();
        return;
      }
      try {
        await api("PUT", "limits/config", { body: { enabled: enabled.checked, period: period.value, default_limit_micros: micros, warning_threshold_percent: percent } });
        status.replaceChildren(h("span", { class: "saved" }, "Saved!"));
        config.enabled = enabled.checked;
        document.getElementById("unpriced-box")?.replaceWith(unpricedBox({ ...config, enabled: enabled.checked }));
      } catch (error) {
        const fields = fieldErrors(error);
        if (fields.default_limit_micros) { setFieldError(amount, fields.default_limit_micros); amount.focus(); }
        if (fields.period) setFieldError(period, fields.period);
        if (fields.warning_threshold_percent) setFieldError(warning, fields.warning_threshold_percent);
        if (!fields.default_limit_micros && !fields.period && !fields.warning_threshold_percent) { formError.textContent = error.message; formError.hidden = false; }
      }
    });
    return form;
  }

  function unpricedBox(config) {
    const models = config.unpriced_models || [];
    if (!config.enabled || models.length === 0) return h("div", { id: "unpriced-box", hidden: true });
    const one = models.length === 1;
    return h(
      "div",
      { class: "warning-box", id: "unpriced-box", role: "note" },
      h("strong", {}, `${models.length} model${one ? "" : "s"} without pricing. `),
      `Chat usage names ${one ? "this model, which has" : "these models, which have"} no input or output price: Tollgate cannot price ${one ? "its" : "their"} usage, which counts against limits only at the cost its emitter reports, if any. Set a price: `,
      models.map((m, i) => [i ? ", " : "", h("a", { href: `/console/pricing?model=${encodeURIComponent(m)}` }, m)]),
      ".",
    );
  }

  async function saveOverride(kind, id, text) {
    await api("PUT", `limits/overrides/${kind}s/${encodeURIComponent(id)}`, { body: { limit_micros: toMicros(text) } });
  }

  function overrideActions(kind, id, label, current) {
    return h(
      "span",
      {},
      h("button", { type: "button", class: "link", "aria-label": `Edit limit of ${label}`, onclick: async () => {
        const text = await amountDialog({ title: `Limit for ${label}`, label: "Spend limit ($)", value: microsToInput(current), validate: validAmount });
        if (text === null) return;
        try { await saveOverride(kind, id, text); reload(); } catch (error) { body.prepend(errorBox(error.message)); }
      } }, "Edit"),
      h("button", { type: "button", class: "link", "aria-label": `Remove limit of ${label}`, onclick: async () => {
        if (!(await confirmDialog({ title: "Remove override?", message: `${label} goes back to ${kind === "user" ? "their groups' or the default" : "the default"} limit.`, confirmLabel: "Remove", danger: true }))) return;
        try { await api("DELETE", `limits/overrides/${kind}s/${encodeURIComponent(id)}`); reload(); } catch (error) { body.prepend(errorBox(error.message)); }
      } }, "Remove"),
    );
  }

  function groupSection(config, groups) {
    const byId = Object.fromEntries(groups.map((g) => [g.group_id, g]));
    const orgOf = (o) => o.org_id ?? byId[o.group_id]?.org_id ?? null;
    const orgLabel = (org) => org ?? "No organisation";
    const rows = config.group_overrides
      .map((o) => ({ ...o, group: byId[o.group_id], org: orgOf(o) }))
      .sort((a, b) => orgLabel(a.org).localeCompare(orgLabel(b.org)) || (a.group?.name || a.group_id).localeCompare(b.group?.name || b.group_id));
    const taken = new Set(config.group_overrides.map((o) => o.group_id));
    const free = groups.filter((g) => !taken.has(g.group_id));
    const select = h("select", { id: "group-pick" }, h("option", { value: "" }, "Choose a group"), free.map((g) => h("option", { value: g.group_id }, `${g.name} (${orgLabel(g.org_id)}, ${count(g.member_count)} members)`)));
    const amount = h("input", { id: "group-amount", type: "number", step: "0.01", min: "0.01", inputmode: "decimal" });
    const add = h(
      "form",
      { class: "inline-form", id: "group-add", hidden: true, "aria-label": "Add a group limit" },
      h("div", { class: "field" }, h("label", { for: "group-pick" }, "Group"), select),
      h("div", { class: "field" }, h("label", { for: "group-amount" }, "Spend limit ($)"), amount),
      h("button", { type: "submit", class: "primary" }, "Add"),
      h("button", { type: "button", onclick: () => { add.hidden = true; } }, "Cancel"),
    );
    add.addEventListener("submit", async (event) => {
      event.preventDefault();
      setFieldError(select, select.value ? "" : "Choose a group.");
      const problem = validAmount(amount.value);
      setFieldError(amount, problem || "");
      if (!select.value || problem) return;
      try { await saveOverride("group", select.value, amount.value); reload(); } catch (error) {
        const fields = fieldErrors(error);
        setFieldError(amount, fields.limit_micros || error.message);
      }
    });
    return h(
      "section",
      { class: "panel", "aria-labelledby": "groups-title", id: "group-overrides" },
      h("h2", { id: "groups-title" }, "Group limits"),
      h(
        "p",
        { class: "help", id: "groups-help" },
        "A group's limit belongs to its organisation: for a chat in that organisation, a user gets the lowest limit among their groups there, against what they spent there. A chat checked without an organisation gets the lowest of all their groups, against everything they spent.",
      ),
      table({
        columns: [
          { name: "group", label: "Group", render: (r) => r.group?.name || r.group_id },
          { name: "org", label: "Organisation", render: (r) => (r.org === null ? h("span", { class: "muted" }, orgLabel(null)) : r.org), value: (r) => r.org ?? "" },
          { name: "members", label: "Members", numeric: true, render: (r) => (r.group ? count(r.group.member_count) : "—") },
          { name: "limit", label: "Spend limit", numeric: true, render: (r) => dollars(r.limit_micros), value: (r) => r.limit_micros },
          { name: "actions", label: "Actions", render: (r) => overrideActions("group", r.group_id, r.group?.name || r.group_id, r.limit_micros) },
        ],
        rows,
        rowKey: (r) => r.group_id,
        emptyText: "No group limits.",
      }),
      h("p", {}, h("button", { type: "button", disabled: free.length === 0, onclick: () => { add.hidden = false; select.focus(); } }, "Add group limit")),
      add,
    );
  }

  function userSection(config, people) {
    const rows = config.user_overrides
      .map((o) => ({ ...o, person: people[o.user_id] }))
      .sort((a, b) => (a.person?.username || a.user_id).localeCompare(b.person?.username || b.user_id));
    const taken = new Set(config.user_overrides.map((o) => o.user_id));
    let chosen = null;
    const search = h("input", { id: "user-search", type: "search", autocomplete: "off", placeholder: "Name or username" });
    const results = h("ul", { class: "picker-results", id: "user-results", "aria-label": "Matching users", hidden: true });
    const chosenText = h("p", { class: "help", id: "user-chosen", "aria-live": "polite" });
    const amount = h("input", { id: "user-amount", type: "number", step: "0.01", min: "0.01", inputmode: "decimal" });
    const submit = h("button", { type: "submit", class: "primary", disabled: true }, "Add");
    const add = h(
      "form",
      { class: "inline-form", id: "user-add", hidden: true, "aria-label": "Add a user limit" },
      h("div", { class: "field" }, h("label", { for: "user-search" }, "User"), search, results, chosenText),
      h("div", { class: "field" }, h("label", { for: "user-amount" }, "Spend limit ($)"), amount),
      submit,
      h("button", { type: "button", onclick: () => { add.hidden = true; } }, "Cancel"),
    );
    function choose(user) {
      chosen = user;
      const has = taken.has(user.user_id);
      chosenText.textContent = has ? `${user.name || user.username} already has a limit: edit it in the table.` : `Selected: ${user.name} (@${user.username})`;
      chosenText.className = has ? "field-error" : "help";
      submit.disabled = has;
      for (const button of results.querySelectorAll("button")) button.setAttribute("aria-pressed", String(button.dataset.id === user.user_id));
    }
    search.addEventListener("input", debounce(async () => {
      const q = search.value.trim();
      if (!q) { results.hidden = true; return; }
      try {
        const found = await api("GET", "directory/users", { params: { q, limit: 8 } });
        replace(results, found.users.length
          ? found.users.map((u) => h("li", {}, h("button", { type: "button", "aria-pressed": "false", dataset: { id: u.user_id }, onclick: () => choose(u) }, `${u.name} `, h("span", { class: "muted" }, `@${u.username}`))))
          : h("li", { class: "muted" }, "No users match."));
        results.hidden = false;
      } catch (error) {
        replace(results, h("li", { class: "error" }, error.message));
        results.hidden = false;
      }
    }, 250));
    add.addEventListener("submit", async (event) => {
      event.preventDefault();
      const problem = validAmount(amount.value);
      setFieldError(amount, problem || "");
      if (!chosen || problem) return;
      try { await saveOverride("user", chosen.user_id, amount.value); reload(); } catch (error) {
        const fields = fieldErrors(error);
        setFieldError(amount, fields.limit_micros || error.message);
      }
    });
    return h(
      "section",
      { class: "panel", "aria-labelledby": "users-title", id: "user-overrides" },
      h("h2", { id: "users-title" }, "User limits"),
      h("p", { class: "help" }, "A user's own limit wins over their groups and the default."),
      table({
        columns: [
          { name: "user", label: "User", render: (r) => h("div", { class: "user-cell" }, h("a", { href: `/console/users/${encodeURIComponent(r.user_id)}` }, r.person?.name || r.user_id), h("span", { class: "handle" }, r.person ? `@${r.person.username}` : "not in the directory")) },
          { name: "limit", label: "Spend limit", numeric: true, render: (r) => dollars(r.limit_micros), value: (r) => r.limit_micros },
          { name: "actions", label: "Actions", render: (r) => overrideActions("user", r.user_id, r.person?.name || r.user_id, r.limit_micros) },
        ],
        rows,
        rowKey: (r) => r.user_id,
        emptyText: "No user limits.",
      }),
      h("p", {}, h("button", { type: "button", onclick: () => { add.hidden = false; search.focus(); } }, "Add user limit")),
      add,
    );
  }

  reload();
}
