// The console's entry point: who is signed in, the navigation, and the page for this address.
import { api, currentSession, loadSession } from "./api.js";
import { errorBox, h, replace } from "./ui.js";

const NAV = [
  ["Spend", [
    ["costs", "Cost tracking", "read"],
    ["activity", "Activity", "read"],
    ["chargeback", "Chargeback", "admin"],
  ]],
  ["Settings", [
    ["settings", "Spend limits", "admin"],
    ["pricing", "Model pricing", "admin"],
    ["billing", "Billing status", "admin"],
    ["notifications", "Notifications", "admin"],
  ]],
];

const PAGES = {
  costs: () => import("./costs.js"),
  users: () => import("./user.js"),
  activity: () => import("./activity.js"),
  chargeback: () => import("./chargeback.js"),
  settings: () => import("./settings.js"),
  pricing: () => import("./pricing.js"),
  billing: () => import("./billing.js"),
  notifications: () => import("./notifications.js"),
  me: () => import("./me.js"),
};

const ROLE_LABEL = { admin: "Admin", emitter: "Read-only", portal: "Your spend" };

function allowed(role, need) {
  if (role === "portal") return need === "portal";
  if (need === "admin") return role === "admin";
  return true;
}

function pageName() {
  const rest = window.location.pathname.replace(/^\/console\/?/, "");
  return rest.split("/")[0] || "costs";
}

function need(name) {
  for (const [, items] of NAV) for (const [key, , role] of items) if (key === name) return role;
  return name === "me" ? "portal-or-any" : "read";
}

function buildNav(session, current) {
  const nav = document.getElementById("nav");
  if (session.role === "portal") {
    replace(nav, h("ul", {}, h("li", {}, h("a", { href: "/console/me", "aria-current": "page" }, "My spend"))));
    return;
  }
  const sections = NAV.map(([title, items]) => {
    const visible = items.filter(([, , role]) => allowed(session.role, role));
    if (!visible.length) return null;
    const id = `nav-${title.toLowerCase()}`;
    return h(
      "div",
      {},
      h("h2", { id }, title),
      h("ul", { "aria-labelledby": id }, visible.map(([key, label]) =>
        h("li", {}, h("a", { href: `/console/${key}`, "aria-current": key === current || (key === "costs" && current === "users") ? "page" : null }, label)))),
    );
  });
  replace(nav, sections);
}

function buildAccount(session) {
  const form = h(
    "form",
    { method: "post", action: "/console/logout" },
    h("input", { type: "hidden", name: "csrf", value: session.csrf_token }),
    h("button", { type: "submit" }, "Sign out"),
  );
  replace(document.getElementById("account"), h("span", { class: "badge" }, ROLE_LABEL[session.role] || session.role), form);
}

async function start() {
  const main = document.getElementById("main");
  let session;
  try {
    session = await loadSession();
  } catch (error) {
    if (error.status !== 401) replace(main, errorBox(error.message, () => window.location.reload()));
    return;
  }
  const name = pageName();
  buildNav(session, name);
  buildAccount(session);
  const role = need(name);
  if (session.role === "portal" && name !== "me") {
    replace(main, h("h1", {}, "Not available"), h("p", { class: "notice" }, "Your sign-in shows only your own spend. ", h("a", { href: "/console/me" }, "Go to your page")));
    return;
  }
  if (role === "admin" && session.role !== "admin") {
    replace(main, h("h1", {}, "Admin only"), h("p", { class: "notice" }, "This page needs a sign-in with an admin token. Your session is read-only."));
    return;
  }
  const loader = PAGES[name];
  if (!loader) {
    replace(main, h("h1", {}, "Page not found"), h("p", {}, h("a", { href: "/console/costs" }, "Go to cost tracking")));
    return;
  }
  try {
    const module = await loader();
    await module.render(main, { session: currentSession(), api });
  } catch (error) {
    replace(main, errorBox(error.message || "The page failed to load.", () => window.location.reload()));
  }
}

start();
