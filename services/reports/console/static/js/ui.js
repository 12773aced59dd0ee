// Small DOM helpers: elements, loading/error/empty states, tables, pagers, dialogs.

/** h("td", {class: "num"}, "text", child) */
export function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(node.style, value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function loading(label = "Loading…") {
  return h("div", { class: "state", role: "status", "aria-live": "polite" }, h("span", { class: "spinner", "aria-hidden": "true" }), label);
}

export function errorBox(message, retry) {
  return h(
    "div",
    { class: "error-box", role: "alert" },
    h("span", {}, message),
    retry ? h("button", { type: "button", onclick: retry }, "Retry") : null,
  );
}

export function empty(message) {
  return h("div", { class: "empty" }, message);
}

/**
 * Load into a region: a spinner the first time, the old content under a translucent
 * "refreshing" layer after that, the server's message with Retry on failure.
 */
export function region(container) {
  let shown = false;
  let generation = 0;
  async function load(fetcher, render) {
    const mine = ++generation;
    if (!shown) replace(container, loading());
    else {
      container.setAttribute("aria-busy", "true");
      container.style.position = "relative";
      container.append(h("div", { class: "refreshing", role: "status" }, h("span", { class: "spinner", "aria-hidden": "true" }), h("span", { class: "sr-only" }, "Refreshing")));
    }
    try {
      const data = await fetcher();
      if (mine !== generation) return;
      container.removeAttribute("aria-busy");
      replace(container, render(data));
      shown = true;
    } catch (error) {
      if (mine !== generation) return;
      container.removeAttribute("aria-busy");
      replace(container, errorBox(error.message || "Something went wrong.", () => load(fetcher, render)));
      shown = false;
    }
  }
  return { load };
}

/**
 * A table. columns: [{label, numeric, render(row) -> node|text, value(row) -> raw, sort: {state, onToggle}}]
 */
export function table({ caption, label, columns, rows, rowKey, emptyText }) {
  if (!rows.length) return h("div", { class: "table-wrap" }, empty(emptyText || "Nothing to show."));
  const head = h(
    "tr",
    {},
    columns.map((col) => {
      const attrs = { scope: "col", class: col.numeric ? "num" : null };
      if (col.sort) {
        attrs["aria-sort"] = col.sort.state === "asc" ? "ascending" : col.sort.state === "desc" ? "descending" : "none";
        const arrow = col.sort.state === "asc" ? "▲" : col.sort.state === "desc" ? "▼" : "↕";
        return h(
          "th",
          attrs,
          h("button", { type: "button", class: "sort", onclick: col.sort.onToggle, "aria-label": `${col.label}, sort ${col.sort.state === "desc" ? "ascending" : "descending"}` },
            col.label, " ", h("span", { class: "arrow", "aria-hidden": "true" }, arrow)),
        );
      }
      return h("th", attrs, col.label);
    }),
  );
  const body = rows.map((row) =>
    h(
      "tr",
      { dataset: rowKey ? { key: rowKey(row) } : {} },
      columns.map((col, index) => {
        const content = col.render ? col.render(row) : "";
        const attrs = { class: col.numeric ? "num" : null };
        if (col.value) attrs["data-value"] = String(col.value(row));
        if (col.name) attrs["data-col"] = col.name;
        return index === 0 ? h("th", { ...attrs, scope: "row" }, content) : h("td", attrs, content);
      }),
    ),
  );
  // A region that may scroll sideways is reachable from the keyboard and named.
  const name = label || (typeof caption === "string" ? caption : caption?.textContent) || "Table";
  return h(
    "div",
    { class: "table-wrap", role: "region", tabindex: "0", "aria-label": name },
    h("table", {}, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body)),
  );
}

/** "Showing 1–25 of 143" with Previous and Next. */
export function pager({ offset, pageSize, total, onPage, label }) {
  if (total <= pageSize && offset === 0) return h("div", { class: "pager" }, h("span", {}, `${total} ${label || "rows"}`));
  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + pageSize, total);
  const page = Math.floor(offset / pageSize) + 1;
  const pages = Math.max(1, Math.ceil(total / pageSize));
  return h(
    "nav",
    { class: "pager", "aria-label": `${label || "Rows"} pages` },
    h("span", { "aria-live": "polite" }, `Showing ${first}–${last} of ${total} · page ${page} of ${pages}`),
    h(
      "span",
      { class: "buttons" },
      h("button", { type: "button", disabled: offset === 0, onclick: () => onPage(Math.max(0, offset - pageSize)) }, "Previous"),
      h("button", { type: "button", disabled: last >= total, onclick: () => onPage(offset + pageSize) }, "Next"),
    ),
  );
}

/** A client-side paged table (10 rows a page by default). */
export function pagedTable(options, pageSize = 10) {
  const holder = h("div", {});
  let offset = 0;
  function draw() {
    const rows = options.rows.slice(offset, offset + pageSize);
    replace(
      holder,
      table({ ...options, rows }),
      options.rows.length > pageSize
        ? pager({ offset, pageSize, total: options.rows.length, label: options.pagerLabel, onPage: (o) => { offset = o; draw(); } })
        : null,
    );
  }
  draw();
  return holder;
}

/** A modal dialog with a message and OK/Cancel; resolves true on OK. */
export function confirmDialog({ title, message, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { "aria-labelledby": "dialog-title" },
      h("h2", { id: "dialog-title" }, title),
      h("p", {}, message),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "button", class: danger ? "danger" : "primary", onclick: () => dialog.close("ok") }, confirmLabel),
      ),
    );
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "ok");
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A form dialog with one amount field; resolves the text entered, or null on Cancel. */
export function amountDialog({ title, label, value, validate }) {
  return new Promise((resolve) => {
    const input = h("input", { id: "dialog-amount", type: "number", step: "0.01", min: "0.01", inputmode: "decimal", value: value ?? "", required: true, "aria-describedby": "dialog-amount-error" });
    const error = h("p", { class: "field-error", id: "dialog-amount-error", role: "alert" });
    let result = null;
    const form = h(
      "form",
      { method: "dialog" },
      h("h2", { id: "dialog-title" }, title),
      h("div", { class: "field" }, h("label", { for: "dialog-amount" }, label), input, error),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: () => dialog.close() }, "Cancel"),
        h("button", { type: "submit", class: "primary" }, "Save"),
      ),
    );
    form.addEventListener("submit", (event) => {
      const problem = validate ? validate(input.value) : null;
      if (problem) {
        event.preventDefault();
        error.textContent = problem;
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      result = input.value;
    });
    const dialog = h("dialog", { "aria-labelledby": "dialog-title" }, form);
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    document.body.append(dialog);
    dialog.showModal();
    input.focus();
  });
}

/** Put a field's error under it (or clear it). */
export function setFieldError(input, message) {
  const id = `${input.id}-error`;
  let node = document.getElementById(id);
  if (!node) {
    node = h("p", { class: "field-error", id, role: "alert" });
    input.insertAdjacentElement("afterend", node);
  }
  node.textContent = message || "";
  node.hidden = !message;
  if (message) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-describedby", id);
  } else {
    input.removeAttribute("aria-invalid");
  }
}

/** Read and write the page's state in the address's query string. */
export function urlState(defaults) {
  const params = new URLSearchParams(window.location.search);
  const state = {};
  for (const [key, value] of Object.entries(defaults)) state[key] = params.get(key) ?? value;
  return {
    state,
    save() {
      const next = new URLSearchParams();
      for (const [key, value] of Object.entries(state)) if (value !== "" && value !== null && value !== defaults[key]) next.set(key, value);
      const text = next.toString();
      window.history.replaceState(null, "", `${window.location.pathname}${text ? `?${text}` : ""}`);
    },
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function initials(name) {
  const parts = String(name || "?").trim().split(/\s+/);
  return (parts[0][0] + (parts.length > 1 ? parts[parts.length - 1][0] : "")).toUpperCase();
}
