// Asking about the results: the question typed over them goes with the search (`ask`), and each image
// result shows the model's answer under it; "keep only" (`ask_filter`) drops the others.
import { t } from "./i18n.js";

const $ = (id) => document.getElementById(id);

// The search request's ask fields, or none when no question is typed.
export function askOptions() {
  const question = $("ask-question").value.trim();
  if (!question) return {};
  const keep = $("ask-keep").value.trim();
  return keep ? { ask: question, ask_filter: keep } : { ask: question };
}

// One image result's answer, as a line of its card (null when it has none).
export function answerLine(hit) {
  if (hit.answer === null || hit.answer === undefined) return null;
  const line = document.createElement("span");
  line.className = "answer";
  line.textContent = t("ask.answer", { answer: hit.answer || "…", percent: (100 * hit.answer_score).toFixed(0) });
  line.title = t("ask.answerTitle");
  return line;
}

// What the status line adds for a search that asked: how many results the filter dropped.
export function askedStatus(asked) {
  return asked && asked.dropped ? t("ask.dropped", { dropped: asked.dropped }) : "";
}
