// Billing status: the publisher's queue and its last attempts, in plain words.
import { age, ago, count, dateTime } from "./format.js";
import { h, region, replace } from "./ui.js";

const CAUSES = {
  connect: "the billing server refused the connection",
  timeout: "the billing server did not answer in time",
  transport: "the connection broke",
  http_5xx: "the billing server answered with a server error",
  http_4xx: "the billing server refused the request",
  bad_response: "the billing server's answer could not be read",
};

function headline(s) {
  if (!s.configured) return ["idle", "Not reporting: usage is queued here until a billing server and licence key are set."];
  if (s.consecutive_failures > 0) return ["bad", `Reporting is failing: the last ${s.consecutive_failures === 1 ? "attempt" : `${s.consecutive_failures} attempts`} did not get through.`];
  if (!s.last_success_at) return ["idle", "Reporting is set up and has not sent anything yet."];
  return ["ok", "Reporting is working."];
}

export async function render(main, { api }) {
  const body = h("div", { id: "billing" });
  replace(main, h("h1", {}, "Billing status"), h("p", { class: "page-lede" }, "How usage reporting to the billing server is going."), body);
  region(body).load(
    () => api("GET", "publisher/status"),
    (s) => {
      const [tone, line] = headline(s);
      const facts = [
        ["Billing server", s.billing_url || "not set"],
        ["Waiting to be sent", s.pending === 0 ? "nothing" : `${count(s.pending)} event${s.pending === 1 ? "" : "s"}${s.oldest_pending_age_seconds != null ? `, the oldest for ${age(s.oldest_pending_age_seconds)}` : ""}`],
        ["Last successful send", s.last_success_at ? `${ago(s.last_success_at)} (${dateTime(s.last_success_at)})` : "never"],
        ["Last attempt", s.last_attempt_at ? `${ago(s.last_attempt_at)} (${dateTime(s.last_attempt_at)})` : "never"],
        ["Failures in a row", s.consecutive_failures === 0 ? "none" : `${count(s.consecutive_failures)}${s.failing_since ? `, since ${dateTime(s.failing_since)}` : ""}`],
        ["Last error", s.last_error ? `${CAUSES[s.last_error_cause] || "error"}: ${s.last_error}${s.last_error_at ? ` (${ago(s.last_error_at)})` : ""}` : "none"],
        ["Sent so far", `${count(s.published)} accepted, ${count(s.rejected)} refused for good, ${count(s.expired)} expired unsent`],
        ["Send interval", s.interval],
      ];
      return h(
        "section",
        { class: "panel", "aria-labelledby": "billing-title" },
        h("h2", { id: "billing-title", class: "status-line" }, h("span", { class: `dot ${tone}`, "aria-hidden": "true" }), line),
        h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        h("p", { class: "help" }, s.message || ""),
      );
    },
  );
}
