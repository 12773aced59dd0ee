// Summary cards and the per-model and per-chat tables of one user's spend.
import { count, dollars, tokens } from "./format.js";
import { h, pagedTable } from "./ui.js";

function card(label, value, name) {
  return h("div", { class: "card", dataset: { card: name } }, h("div", { class: "label" }, label), h("div", { class: "value" }, value));
}

export function summaryCards(data) {
  return h(
    "div",
    { class: "cards", role: "list", "aria-label": "Totals" },
    [
      card("Total cost", dollars(data.total_cost_micros), "cost"),
      card("Input tokens", tokens(data.total_input_tokens), "input"),
      card("Output tokens", tokens(data.total_output_tokens), "output"),
      card("Cache read tokens", tokens(data.total_cache_read_tokens), "cache_read"),
      card("Cache write tokens", tokens(data.total_cache_creation_tokens), "cache_write"),
      card("Messages", count(data.message_count), "messages"),
    ].map((node) => { node.setAttribute("role", "listitem"); return node; }),
  );
}

export const FIGURES = [
  { name: "cost", label: "Cost", numeric: true, render: (r) => dollars(r.total_cost_micros), value: (r) => r.total_cost_micros },
  { name: "messages", label: "Messages", numeric: true, render: (r) => count(r.message_count), value: (r) => r.message_count },
  { name: "input", label: "Input", numeric: true, render: (r) => tokens(r.total_input_tokens), value: (r) => r.total_input_tokens },
  { name: "output", label: "Output", numeric: true, render: (r) => tokens(r.total_output_tokens), value: (r) => r.total_output_tokens },
  { name: "cache_read", label: "Cache Read", numeric: true, render: (r) => tokens(r.total_cache_read_tokens), value: (r) => r.total_cache_read_tokens },
  { name: "cache_write", label: "Cache Write", numeric: true, render: (r) => tokens(r.total_cache_creation_tokens), value: (r) => r.total_cache_creation_tokens },
];

export function modelTable(rows) {
  return h(
    "section",
    { "aria-labelledby": "by-model-title", id: "by-model" },
    h("h2", { id: "by-model-title" }, "By model"),
    pagedTable({
      columns: [
        { name: "model", label: "Model", render: (r) => r.model, value: (r) => r.model },
        { name: "provider", label: "Provider", render: (r) => r.provider || "—" },
        ...FIGURES,
      ],
      rows,
      rowKey: (r) => `${r.model}/${r.provider}`,
      emptyText: "No usage data for this period.",
      pagerLabel: "models",
    }),
  );
}

export function chatTable(rows) {
  return h(
    "section",
    { "aria-labelledby": "by-chat-title", id: "by-chat" },
    h("h2", { id: "by-chat-title" }, "By chat"),
    pagedTable({
      columns: [
        { name: "chat", label: "Chat", render: (r) => h("span", {}, "Untitled ", h("span", { class: "muted" }, `(${r.root_chat_id})`)), value: (r) => r.root_chat_id },
        ...FIGURES,
      ],
      rows,
      rowKey: (r) => r.root_chat_id,
      emptyText: "No usage data for this period.",
      pagerLabel: "chats",
    }),
  );
}

export function notes(data) {
  return h(
    "div",
    {},
    data.unpriced_message_count > 0
      ? h("p", { class: "warning-box" }, `${count(data.unpriced_message_count)} message${data.unpriced_message_count === 1 ? "" : "s"} used a model without a price: ${data.unpriced_message_count === 1 ? "it is" : "they are"} counted but cost nothing here.`)
      : null,
    h("p", { class: "help" }, "Automatic title generation is not counted in these figures or against limits."),
  );
}
