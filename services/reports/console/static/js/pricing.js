// Model pricing: dollars per million tokens for input, output, cache read and cache write.
import { fieldErrors } from "./api.js";
import { confirmDialog, errorBox, h, region, replace, setFieldError, table } from "./ui.js";

const PRICES = [
  ["input_price_per_million", "Input"],
  ["output_price_per_million", "Output"],
  ["cache_read_price_per_million", "Cache read"],
  ["cache_write_price_per_million", "Cache write"],
];

export async function render(main, { api }) {
  const list = h("div", { id: "price-list" });
  const view = region(list);
  const wanted = new URLSearchParams(window.location.search).get("model") || "";
  const model = h("input", { id: "price-model", required: true, maxlength: "128", value: wanted, autocomplete: "off" });
  const inputs = Object.fromEntries(PRICES.map(([key]) => [key, h("input", { id: `price-${key}`, type: "text", inputmode: "decimal", placeholder: "not set", value: "", "aria-describedby": "price-help" })]));
  const status = h("span", { role: "status", "aria-live": "polite", id: "price-status" });
  const title = h("h2", { id: "price-form-title" }, wanted ? `Add a price for ${wanted}` : "Add or change a price");
  const form = h(
    "form",
    { class: "panel", id: "price-form", "aria-labelledby": "price-form-title", novalidate: true },
    title,
    h("p", { class: "help", id: "price-help" }, "Dollars per million tokens, up to 6 decimal places. Leave a kind blank to leave it unset: its tokens are free beside priced ones, and a message with tokens of unset kinds only is unpriced. Set at least one. A change applies to usage from now on; costs already recorded keep their price."),
    h(
      "div",
      { class: "toolbar" },
      h("div", { class: "field" }, h("label", { for: "price-model" }, "Model"), model),
      PRICES.map(([key, label]) => h("div", { class: "field" }, h("label", { for: `price-${key}` }, `${label} ($ / 1M)`), inputs[key])),
      h("div", { class: "field" }, h("button", { type: "submit", class: "primary" }, "Save price")),
      status,
    ),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "";
    setFieldError(model, model.value.trim() ? "" : "Enter the model's name.");
    for (const input of Object.values(inputs)) setFieldError(input, "");
    if (!model.value.trim()) { model.focus(); return; }
    const body = Object.fromEntries(PRICES.map(([key]) => [key, inputs[key].value.trim() || null]));
    try {
      await api("PUT", `pricing/models/${encodeURIComponent(model.value.trim())}`, { body });
      status.replaceChildren(h("span", { class: "saved" }, "Saved!"));
      load();
    } catch (error) {
      const fields = fieldErrors(error);
      let shown = false;
      for (const [key] of PRICES) if (fields[key]) { setFieldError(inputs[key], fields[key]); shown = true; }
      if (!shown) status.replaceChildren(h("span", { class: "error", id: "price-form-error" }, error.message));
    }
  });

  function edit(row) {
    model.value = row.model;
    for (const [key] of PRICES) inputs[key].value = row[key] ?? "";
    title.textContent = `Change the price of ${row.model}`;
    inputs.input_price_per_million.focus();
  }

  function load() {
    view.load(
      () => api("GET", "pricing/models"),
      (data) => table({
        caption: "Priced models",
        columns: [
          { name: "model", label: "Model", render: (r) => r.model, value: (r) => r.model },
          ...PRICES.map(([key, label]) => ({ name: key, label: `${label} ($ / 1M)`, numeric: true, render: (r) => (r[key] === null ? h("span", { class: "muted", title: "Not set" }, "—") : `$${r[key]}`), value: (r) => r[key] ?? "" })),
          { name: "actions", label: "Actions", render: (r) => h("span", {},
            h("button", { type: "button", class: "link", "aria-label": `Edit ${r.model}`, onclick: () => edit(r) }, "Edit"),
            h("button", { type: "button", class: "link", "aria-label": `Delete ${r.model}`, onclick: async () => {
              if (!(await confirmDialog({ title: `Delete the price of ${r.model}?`, message: "Usage of this model will be unpriced until it has a price again.", confirmLabel: "Delete", danger: true }))) return;
              try { await api("DELETE", `pricing/models/${encodeURIComponent(r.model)}`); load(); } catch (error) { list.prepend(errorBox(error.message)); }
            } }, "Delete")) },
        ],
        rows: data.models,
        rowKey: (r) => r.model,
        emptyText: "No model has a price yet.",
      }),
    );
  }

  replace(main, h("h1", {}, "Model pricing"), h("p", { class: "page-lede" }, "What each model's tokens cost. Usage of a model without a price (or of kinds its price leaves unset) is counted but costs nothing."), form, list);
  if (wanted) inputs.input_price_per_million.focus();
  load();
}
