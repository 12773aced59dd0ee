// Notifications: webhook endpoints (add with a secret shown once, test, delete), email settings
// and the recent deliveries of budget warnings and limit notices.
import { fieldErrors } from "./api.js";
import { age, count, dateTime } from "./format.js";
import { confirmDialog, errorBox, h, region, replace, setFieldError, table } from "./ui.js";

const TYPES = {
  "budget.warning": "Budget warning",
  "budget.limit_reached": "Limit reached",
  "webhook.test": "Test event",
};
const STATUS = { pending: ["badge warn", "Pending"], delivered: ["badge", "Delivered"], failed: ["badge danger", "Failed"] };
const FILTERS = [["", "All"], ["pending", "Pending"], ["delivered", "Delivered"], ["failed", "Failed"]];

function statusPanel(s) {
  const email = s.email_configured
    ? `sent from ${s.email_from} to each user, their owners and user admins${s.admin_emails ? ` and ${count(s.admin_emails)} more address${s.admin_emails === 1 ? "" : "es"}` : ""}`
    : "off (no SMTP server is configured)";
  const waiting = (c) => (c.pending === 0 ? "nothing waiting" : `${count(c.pending)} waiting, the oldest for ${age(c.oldest_pending_age_seconds || 0)}`);
  const facts = [
    ["Webhook endpoints", s.webhooks === 0 ? "none yet" : count(s.webhooks)],
    ["Email", email],
    ["Webhook deliveries", waiting(s.channels.webhook)],
    ["Email deliveries", waiting(s.channels.email)],
    ["Retried for", age(s.retry_for_seconds)],
    ["Kept for", age(s.retention_seconds)],
  ];
  return h(
    "section",
    { class: "panel", "aria-labelledby": "notify-status-title" },
    h("h2", { id: "notify-status-title", class: "status-line" },
      h("span", { class: `dot ${s.delivering ? "ok" : "idle"}`, "aria-hidden": "true" }),
      s.delivering ? "Notifications are delivered." : "This service does not deliver notifications (TOLLGATE_NOTIFY_DELIVER is off)."),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
  );
}

function secretPanel(created, onDone, note) {
  const field = h("input", { id: "new-secret", readonly: true, value: created.secret, class: "secret", "aria-describedby": "new-secret-help", size: "60" });
  const copied = h("span", { role: "status", "aria-live": "polite" });
  const copy = h("button", { type: "button", onclick: async () => {
    field.select();
    try {
      await navigator.clipboard.writeText(created.secret);
      copied.textContent = "Copied.";
    } catch (error) {
      copied.textContent = "Selected: press Ctrl+C to copy.";
    }
  } }, "Copy secret");
  return h(
    "section",
    { class: "panel notice-panel", id: "secret-panel", "aria-labelledby": "secret-title" },
    h("h2", { id: "secret-title" }, `Signing secret of ${created.url}`),
    h("p", { id: "new-secret-help", class: "help" }, `Shown only now: put it in the receiver's configuration to verify each delivery's webhook-signature. It cannot be shown again.${note ? ` ${note}` : ""}`),
    h("div", { class: "toolbar" }, h("div", { class: "field" }, h("label", { for: "new-secret" }, "Secret"), field), copy, copied,
      h("button", { type: "button", onclick: onDone }, "Done")),
  );
}

export async function render(main, { api }) {
  const statusBox = h("div", { id: "notify-status" });
  const status = region(statusBox);
  const secretBox = h("div", { id: "secret-box" });
  const hookBox = h("div", { id: "webhook-list" });
  const hooks = region(hookBox);
  const deliveryBox = h("div", { id: "delivery-list" });
  const deliveries = region(deliveryBox);
  let endpoints = [];

  const url = h("input", { id: "webhook-url", type: "url", required: true, maxlength: "2048", placeholder: "https://hooks.example.com/tollgate", autocomplete: "off", size: "40" });
  const description = h("input", { id: "webhook-description", type: "text", maxlength: "256", placeholder: "Optional", autocomplete: "off" });
  const formStatus = h("span", { role: "status", "aria-live": "polite", id: "webhook-status" });
  const form = h(
    "form",
    { class: "panel", id: "webhook-form", "aria-labelledby": "webhook-form-title", novalidate: true },
    h("h2", { id: "webhook-form-title" }, "Add a webhook endpoint"),
    h("p", { class: "help" }, "Each budget warning and limit notice is POSTed as JSON, signed as the Standard Webhooks specification says (webhook-id, webhook-timestamp, webhook-signature), and retried until it gets a 2xx answer."),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "webhook-url" }, "URL"), url),
      h("div", { class: "field" }, h("label", { for: "webhook-description" }, "Description"), description),
      h("div", { class: "field" }, h("button", { type: "submit", class: "primary" }, "Add endpoint")),
      formStatus,
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formStatus.textContent = "";
    setFieldError(url, url.value.trim() ? "" : "Enter the endpoint's URL.");
    setFieldError(description, "");
    if (!url.value.trim()) { url.focus(); return; }
    try {
      const created = await api("POST", "notifications/webhooks", { body: { url: url.value.trim(), description: description.value } });
      url.value = "";
      description.value = "";
      replace(secretBox, secretPanel(created, () => replace(secretBox)));
      document.getElementById("new-secret").focus();
      loadHooks();
      loadStatus();
    } catch (error) {
      const fields = fieldErrors(error);
      const message = error.message || "";
      if (fields.url || message.startsWith("url:")) setFieldError(url, fields.url || message.replace(/^url:\s*/, ""));
      else if (fields.description || message.startsWith("description:")) setFieldError(description, fields.description || message.replace(/^description:\s*/, ""));
      else formStatus.replaceChildren(h("span", { class: "error" }, message));
    }
  });

  const filter = h("select", { id: "delivery-filter" }, FILTERS.map(([value, label]) => h("option", { value }, label)));
  filter.addEventListener("change", () => loadDeliveries());
  const refresh = h("button", { type: "button", onclick: () => { loadDeliveries(); loadStatus(); } }, "Refresh");
  const deliveryStatus = h("span", { role: "status", "aria-live": "polite", id: "delivery-status" });

  function loadStatus() {
    status.load(() => api("GET", "notifications/status"), statusPanel);
  }

  function urlOf(id) {
    const found = endpoints.find((e) => e.id === id);
    return found ? found.url : id;
  }

  function loadHooks() {
    return hooks.load(
      () => api("GET", "notifications/webhooks"),
      (data) => {
        endpoints = data.webhooks;
        return table({
          caption: h("span", { class: "sr-only" }, "Webhook endpoints"),
          columns: [
            { name: "url", label: "URL", render: (r) => r.url, value: (r) => r.url },
            { name: "description", label: "Description", render: (r) => r.description || "—", value: (r) => r.description },
            { name: "created_at", label: "Added", render: (r) => dateTime(r.created_at), value: (r) => r.created_at },
            { name: "state", label: "State", render: (r) => (r.disabled_at ? h("span", { class: "badge danger", title: r.disabled_reason || "" }, "Disabled") : h("span", { class: "badge" }, "Active")), value: (r) => (r.disabled_at ? "disabled" : "active") },
            { name: "actions", label: "Actions", render: (r) => h("span", {},
              h("button", { type: "button", class: "link", disabled: Boolean(r.disabled_at), "aria-label": `Send test event to ${r.url}`, onclick: async () => {
                try {
                  await api("POST", `notifications/webhooks/${encodeURIComponent(r.id)}/test`);
                  formStatus.replaceChildren(h("span", { class: "saved" }, `Test event queued for ${r.url}.`));
                  loadDeliveries();
                } catch (error) {
                  formStatus.replaceChildren(h("span", { class: "error" }, error.message));
                }
              } }, "Send test event"),
              r.disabled_at ? h("button", { type: "button", class: "link", "aria-label": `Enable ${r.url}`, onclick: async () => {
                try {
                  await api("POST", `notifications/webhooks/${encodeURIComponent(r.id)}/enable`);
                  formStatus.replaceChildren(h("span", { class: "saved" }, `${r.url} is sent to again. Failed deliveries stay failed: send them again below.`));
                  loadHooks();
                } catch (error) {
                  formStatus.replaceChildren(h("span", { class: "error" }, error.message));
                }
              } }, "Enable") : null,
              h("button", { type: "button", class: "link", "aria-label": `Rotate secret of ${r.url}`, onclick: async () => {
                if (!(await confirmDialog({ title: "Rotate the signing secret?", message: `${r.url} gets a new secret, shown once. The current one keeps signing beside it for 24 hours, so the receiver can switch without refusing a delivery.`, confirmLabel: "Rotate" }))) return;
                try {
                  const rotated = await api("POST", `notifications/webhooks/${encodeURIComponent(r.id)}/rotate-secret`);
                  replace(secretBox, secretPanel({ url: r.url, secret: rotated.secret }, () => replace(secretBox), `The previous secret signs too until ${dateTime(rotated.previous_secret_expires_at)}.`));
                  document.getElementById("new-secret").focus();
                } catch (error) {
                  formStatus.replaceChildren(h("span", { class: "error" }, error.message));
                }
              } }, "Rotate secret"),
              h("button", { type: "button", class: "link", "aria-label": `Delete ${r.url}`, onclick: async () => {
                if (!(await confirmDialog({ title: "Delete this endpoint?", message: `${r.url} gets nothing more; what waits for it fails.`, confirmLabel: "Delete", danger: true }))) return;
                try { await api("DELETE", `notifications/webhooks/${encodeURIComponent(r.id)}`); loadHooks(); loadStatus(); loadDeliveries(); } catch (error) { hookBox.prepend(errorBox(error.message)); }
              } }, "Delete")) },
          ],
          rows: endpoints,
          rowKey: (r) => r.id,
          emptyText: "No webhook endpoint yet: add one above.",
        });
      },
    );
  }

  function loadDeliveries() {
    return deliveries.load(
      () => api("GET", "notifications/deliveries", { params: { status: filter.value, limit: 50 } }),
      (data) => table({
        caption: h("span", { class: "sr-only" }, "Recent deliveries"),
        columns: [
          { name: "created_at", label: "Created", render: (r) => dateTime(r.created_at), value: (r) => r.created_at },
          { name: "type", label: "Notification", render: (r) => TYPES[r.type] || r.type, value: (r) => r.type },
          { name: "user_id", label: "User", render: (r) => r.user_id || "—", value: (r) => r.user_id || "" },
          { name: "to", label: "To", render: (r) => (r.channel === "email" ? `${r.recipient} (${r.audience === "admin" ? "admin" : "user"})` : urlOf(r.webhook_id)), value: (r) => r.recipient || r.webhook_id },
          { name: "status", label: "Status", render: (r) => { const [cls, text] = STATUS[r.status] || ["badge muted", r.status]; return h("span", { class: cls }, text); }, value: (r) => r.status },
          { name: "attempts", label: "Attempts", numeric: true, render: (r) => count(r.attempts), value: (r) => r.attempts },
          { name: "last_error", label: "Last error", render: (r) => r.last_error || "—", value: (r) => r.last_error || "" },
          { name: "actions", label: "Actions", render: (r) => (r.status === "failed"
            ? h("button", { type: "button", class: "link", "aria-label": `Send again: ${r.id}`, onclick: async () => {
              try {
                await api("POST", `notifications/deliveries/${encodeURIComponent(r.id)}/retry`);
                deliveryStatus.replaceChildren(h("span", { class: "saved" }, `${TYPES[r.type] || r.type} to ${r.channel === "email" ? r.recipient : urlOf(r.webhook_id)} is sent again.`));
                loadDeliveries();
                loadStatus();
              } catch (error) {
                deliveryStatus.replaceChildren(h("span", { class: "error" }, error.message));
              }
            } }, "Send again")
            : "") },
        ],
        rows: data.deliveries,
        rowKey: (r) => r.id,
        emptyText: filter.value ? "No delivery with this status." : "Nothing delivered yet.",
      }),
    );
  }

  replace(
    main,
    h("h1", {}, "Notifications"),
    h("p", { class: "page-lede" }, "Who hears when someone's AI spend passes the warning share of their limit, and when it reaches the limit."),
    statusBox,
    secretBox,
    form,
    h("section", { class: "panel", "aria-labelledby": "webhooks-title" }, h("h2", { id: "webhooks-title" }, "Webhook endpoints"), hookBox),
    h(
      "section",
      { class: "panel", "aria-labelledby": "deliveries-title" },
      h("h2", { id: "deliveries-title" }, "Recent deliveries"),
      h("div", { class: "toolbar" }, h("div", { class: "field" }, h("label", { for: "delivery-filter" }, "Status"), filter), refresh, deliveryStatus),
      deliveryBox,
    ),
  );
  loadStatus();
  // The endpoints first, so that deliveries can name their URLs.
  await loadHooks();
  await loadDeliveries();
}
