// The search page: plain JavaScript, no build step, no network beyond this server.
import { answerLine, askOptions, askedStatus } from "./ask.js";
import { inCollection, offerCollections } from "./collections.js";
import { language, setLanguage, t } from "./i18n.js";
import { matchBoxes, readText } from "./marks.js";
import { FUSED_TEXTS, filterJson, fusionWeights, parseFilter } from "./options.js";

const $ = (id) => document.getElementById(id);
const form = $("search-form"), textInput = $("query-text"), fileInput = $("query-file");
const dropZone = $("drop-zone"), statusLine = $("status"), results = $("results");
const weightLabel = $("text-weight-label"), weightInput = $("text-weight");

// The API key, when the server asks for one (kept for this browser tab only).
let apiKey = sessionStorage.getItem("clipsearch-api-key") || "";

function withKey(options = {}) {
  return apiKey ? { ...options, headers: { ...(options.headers || {}), "X-API-Key": apiKey } } : options;
}

// The image part of the query: an uploaded file, or an item of the bundle ("more like this").
let imageQuery = null;

function target() { return form.querySelector("input[name=target]:checked").value; }
function k() { return Number($("k").value) || 10; }
function mode() { return form.querySelector("input[name=mode]:checked").value; }

// Metadata filters, one chip each ("album=Paris", "year>=2020"), all of which must hold.
let filters = [];
let nextOffset = 0;

function resultOptions(offset) {
  const options = { offset };
  const filter = filterJson(filters);
  if (filter) options.filter = filter;
  if ($("dedup").checked) options.dedup = true;
  if ($("min-score").value.trim() !== "") options.min_score = Number($("min-score").value);
  const orderKey = $("order-by").value.trim();
  if (orderKey) options.order_by = { key: orderKey, direction: $("order-direction").value };
  const offered = FUSED_TEXTS.filter((part) => !$(`${part}-weight-label`).hidden);
  const fusion = fusionWeights(Object.fromEntries(offered.map((part) => [part, Number($(`${part}-weight`).value)])));
  if (fusion && target() === "image") options.fusion = fusion;
  return { ...options, ...askOptions() };
}

function renderChips() {
  $("filter-chips").replaceChildren(...filters.map((chip, number) => {
    const item = document.createElement("li");
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "chip";
    remove.textContent = `${chip.text} ×`;
    remove.setAttribute("aria-label", t("filter.remove", { filter: chip.text }));
    remove.addEventListener("click", () => { filters.splice(number, 1); renderChips(); search(); });
    item.append(remove);
    return item;
  }));
}

function addFilter() {
  const input = $("filter-input");
  if (!input.value.trim()) return;
  const added = input.value.split(",").map(parseFilter);
  if (added.some((chip) => !chip)) {
    setStatus(t("filter.help"), true);
    return;
  }
  filters.push(...added);
  input.value = "";
  renderChips();
  search();
}

function setStatus(message, isError = false) {
  statusLine.textContent = message;
  statusLine.classList.toggle("error", isError);
}

function setImageQuery(query) {
  if (imageQuery && imageQuery.objectUrl) URL.revokeObjectURL(imageQuery.objectUrl);
  imageQuery = query;
  $("image-query").hidden = !query;
  weightLabel.hidden = !query;
  if (query) {
    // A sound clip has no picture to show: its name says what the query is.
    $("image-query-preview").hidden = isSound(query.file);
    if (!isSound(query.file)) $("image-query-preview").src = query.preview;
    labelImageQuery();
  }
}

function labelImageQuery() {
  if (!imageQuery) return;
  $("image-query-label").textContent = imageQuery.kind === "item" ? t("image.moreLike", { id: imageQuery.id })
    : t("image.searchingWith", { name: imageQuery.name || t("image.pasted") });
}

function useFile(file) {
  if (!file) return;
  const objectUrl = URL.createObjectURL(file);
  setImageQuery({ kind: "upload", file, name: file.name, preview: objectUrl, objectUrl });
  search();
}

function isSound(file) {
  return Boolean(file) && (file.type.startsWith("audio/") || /\.(wav|flac|mp3|ogg|opus|m4a|weba|mka)$/i.test(file.name || ""));
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(t("error.unreadable")));
    reader.readAsDataURL(file);
  });
}

async function request(path, options) {
  const response = await fetch(inCollection(path), withKey(options));
  if (response.status === 401) $("key-form").hidden = false;
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    throw new Error((body && body.detail) || t("error.answered", { status: `${response.status} ${response.statusText}` }));
  }
  return body;
}

function postJson(path, body) {
  return request(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
}

// The current query as composed-query terms (for /explain, and for /search with an image), with names
// for the page to show each term's share of a score.
async function queryTerms() {
  const text = textInput.value.trim();
  if (!imageQuery) return { queries: [{ text }], names: [`“${text}”`] };
  const imageTerm = imageQuery.kind === "item"
    ? { item_id: imageQuery.id, weight: 1 } : { image_b64: await base64Of(imageQuery.file), weight: 1 };
  if (!text) return { queries: [imageTerm], names: ["image"] };
  return { queries: [imageTerm, { text, weight: Number(weightInput.value) }], names: ["image", `“${text}”`] };
}

async function runQuery(offset) {
  const text = textInput.value.trim();
  const options = resultOptions(offset);
  if (!imageQuery) return postJson("/search/text", { text, target: target(), k: k(), mode: mode(), ...options });
  if (!text && imageQuery.kind === "upload") {
    // A sound clip searches sounds, in the audio model's space; a picture searches the image model's.
    const sound = isSound(imageQuery.file);
    const data = new FormData();
    data.append("file", imageQuery.file);
    data.append("target", sound ? "audio" : target());
    data.append("k", String(k()));
    // Form fields are text: the filter, fusion and order go as JSON.
    for (const [name, value] of Object.entries(options)) {
      data.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    return request(sound ? "/search/audio" : "/search/image", { method: "POST", body: data });
  }
  const { queries, names } = await queryTerms();
  const body = await postJson("/search", { queries, target: target(), k: k(), explain: queries.length > 1,
                                            ...options });
  body.termNames = names;
  return body;
}

function labels() {
  return $("labels").value.split(",").map((label) => label.trim()).filter((label) => label);
}

// Zero-shot labels for each image result, from the labels typed in the page.
async function showLabels(hit, body) {
  const wanted = labels();
  if (!wanted.length || hit.modality !== "image") return;
  const line = document.createElement("span");
  line.className = "labels";
  body.append(line);
  try {
    const answer = await postJson("/classify", { item_id: hit.id, labels: wanted });
    line.textContent = answer.labels.slice(0, 3)
      .map((label) => `${label.label} ${(100 * label.probability).toFixed(0)}%`).join(" · ");
  } catch (error) {
    line.textContent = t("labels.failed", { error: error.message });
    line.classList.add("error");
  }
}

// "Why?": where in the image the query lights up, as a heat map over the picture.
async function explain(hit, card, button) {
  const shown = card.querySelector(".explanation");
  if (shown) { shown.remove(); button.setAttribute("aria-expanded", "false"); return; }
  button.disabled = true;
  try {
    const { queries } = await queryTerms();
    const answer = await postJson("/explain", { queries, item_ids: [hit.id] });
    const figure = document.createElement("figure");
    figure.className = "explanation";
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${answer.results[0].overlay_png_b64}`;
    img.alt = t("explain.alt", { id: hit.id });
    const caption = document.createElement("figcaption");
    caption.textContent = t("explain.caption");
    figure.append(img, caption);
    card.append(figure);
    button.setAttribute("aria-expanded", "true");
  } catch (error) {
    setStatus(t("status.explainFailed", { error: error.message }), true);
  } finally {
    button.disabled = false;
  }
}

// A new search (more = false) replaces the results; "More results" (more = true) adds the next page.
// Searches overlap (a slider moved twice, Enter pressed again): only the latest one's answer is shown,
// whichever arrives last.
let latestSearch = 0;

async function search(more = false) {
  if (!imageQuery && !textInput.value.trim()) {
    setStatus(t("status.empty"));
    return;
  }
  const offset = more ? nextOffset : 0;
  const mine = ++latestSearch;
  setStatus(more ? t("status.loadingMore") : t("status.searching"));
  results.setAttribute("aria-busy", "true");
  try {
    const body = await runQuery(offset);
    if (mine !== latestSearch) return;  // a newer search was started meanwhile: its answer is the one shown
    render(body.results, body.termNames, more);
    // The next page starts after every result this one held, those the answer filter dropped too.
    nextOffset = offset + body.results.length + (body.asked ? body.asked.dropped : 0);
    $("more").hidden = !body.more;
    const truncated = body.truncated && body.truncated.length ? t("status.truncated") : "";
    const shown = results.children.length;
    // With filters or a min score, `matched` counts what passes them: worth saying.
    const counted = filters.length || $("min-score").value.trim() !== "";
    const matching = counted ? t("status.matching", { matched: body.matched }) : "";
    const found = shown ? t("status.found", { count: shown, matching, ms: body.took_ms.toFixed(1), truncated })
      : (counted ? t("status.noneFiltered", { matched: body.matched }) : t("status.none"));
    setStatus(found + askedStatus(body.asked));
  } catch (error) {
    if (mine !== latestSearch) return;
    if (!more) results.replaceChildren();
    $("more").hidden = true;
    setStatus(t("status.failed", { error: error.message }), true);
  } finally {
    if (mine === latestSearch) results.removeAttribute("aria-busy");
  }
}

// An <img> cannot send headers: with an API key, the image is fetched and shown from a blob.
function showImage(img, path) {
  path = inCollection(path);
  if (!apiKey) { img.src = path; return; }
  fetch(path, withKey()).then((response) => (response.ok ? response.blob() : null))
    .then((blob) => { if (blob) img.src = URL.createObjectURL(blob); });
}

// A video hit plays from the moment that matched (#t=start), with a strip of its best moments that
// seek to theirs. Without an API key the player streams the file with byte ranges; with one, an
// element cannot send the key, so the file is fetched whole and played from a blob.
// A sound hit does the same with an <audio> player and a strip of its best windows' times; a
// video's sound track (metadata.audio.of_video) with a <video> player: its file is the video.
function mediaPlayer(hit) {
  const isVideo = hit.modality === "video";
  const shown = isVideo || Boolean(hit.metadata && hit.metadata.audio && hit.metadata.audio.of_video);
  const box = document.createElement("div");
  box.className = shown ? "video" : "sound";
  const video = document.createElement(shown ? "video" : "audio");
  video.controls = true;
  video.preload = "metadata";
  video.setAttribute("aria-label", t(isVideo ? "card.video" : "card.sound", { id: hit.id }));
  const start = hit.segment ? hit.segment.start_s : 0;
  const path = inCollection(`/items/${hit.id}/${isVideo ? "video" : "audio"}`);
  if (!apiKey) video.src = `${path}#t=${start}`;
  else {
    fetch(path, withKey()).then((response) => (response.ok ? response.blob() : null))
      .then((blob) => { if (blob) video.src = `${URL.createObjectURL(blob)}#t=${start}`; });
  }
  box.append(video);
  if (hit.moments && hit.moments.length) {
    const strip = document.createElement("div");
    strip.className = "moments";
    for (const moment of hit.moments) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "moment";
      if (hit.segment && moment.position === hit.segment.position) button.classList.add("best");
      const label = t("card.moment", { start: moment.start_s.toFixed(1), score: moment.score.toFixed(3) });
      button.title = label;
      button.setAttribute("aria-label", label);
      if (moment.thumbnail) {  // a video's segment shows its frame; a sound's window only its time
        const img = document.createElement("img");
        img.loading = "lazy";
        img.alt = "";
        showImage(img, `/items/${hit.id}/frame?at=${moment.start_s}`);
        button.append(img);
      }
      const time = document.createElement("span");
      time.textContent = `${moment.start_s.toFixed(1)} s`;
      button.append(time);
      button.addEventListener("click", () => { video.currentTime = moment.start_s; video.play().catch(() => {}); });
      strip.append(button);
    }
    box.append(strip);
  }
  return box;
}

function render(hits, termNames, append = false) {
  const cards = hits.map((hit) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = String(hit.id);
    if (hit.modality === "image") {
      const thumb = document.createElement("button");
      thumb.type = "button";
      thumb.className = "thumb";
      thumb.title = t("card.moreLikeThis");
      thumb.setAttribute("aria-label", t("image.moreLike", { id: hit.id }));
      const img = document.createElement("img");
      img.loading = "lazy";
      showImage(img, `/items/${hit.id}/image`);
      img.alt = hit.caption || t("card.image", { id: hit.id });
      thumb.append(img);
      if (hit.ocr_matches) thumb.append(matchBoxes(img, hit.ocr_matches));
      thumb.addEventListener("click", () => {
        setImageQuery({ kind: "item", id: hit.id, preview: img.currentSrc || img.src });
        textInput.value = "";
        search();
      });
      card.append(thumb);
    }
    if (hit.modality === "video" || hit.modality === "audio") card.append(mediaPlayer(hit));
    const body = document.createElement("div");
    body.className = "body";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = t("card.score", { score: hit.score.toFixed(3) });
    body.append(score);
    if (hit.shares && termNames) {
      const shares = document.createElement("span");
      shares.className = "shares";
      shares.textContent = hit.shares.map((share, number) => `${termNames[number]} ${share.toFixed(3)}`).join(" + ");
      shares.title = t("card.shares");
      body.append(shares);
    }
    if (hit.fused) {
      // A fused collection: what the picture and each of its texts add to the score.
      const parts = document.createElement("span");
      parts.className = "fused";
      parts.textContent = Object.entries(hit.fused).map(([part, value]) => `${part} ${value.toFixed(3)}`).join(" + ");
      parts.title = t("card.fused");
      body.append(parts);
    }
    if (hit.ranks) {
      // Keyword and hybrid searches: which ranking found this result, and where in it.
      const ranks = document.createElement("span");
      ranks.className = "ranks";
      const names = { vector: t("card.rank.vector"), keyword: t("card.rank.keyword") };
      ranks.textContent = Object.entries(hit.ranks).map(([list, rank]) => `${names[list] || list} #${rank}`).join(" · ");
      ranks.title = t("card.ranks");
      body.append(ranks);
    }
    if (hit.modality === "image") {
      const why = document.createElement("button");
      why.type = "button";
      why.className = "why";
      why.textContent = t("card.why");
      why.setAttribute("aria-expanded", "false");
      why.setAttribute("aria-label", t("card.whyLabel", { id: hit.id }));
      why.addEventListener("click", () => explain(hit, card, why));
      body.append(why);
      showLabels(hit, body);
    }
    const answer = answerLine(hit);
    if (answer) body.append(answer);
    const words = hit.modality === "text" ? hit.text : hit.caption;
    if (words) {
      const snippet = document.createElement("span");
      snippet.className = hit.modality === "text" ? "snippet" : "caption";
      snippet.textContent = words.length > 300 ? `${words.slice(0, 300)}…` : words;
      body.append(snippet);
    }
    const read = hit.metadata && hit.metadata.ocr_text;
    if (hit.modality === "image" && typeof read === "string" && read) {
      body.append(readText(read, hit.ocr_matches || []));
    }
    if (hit.duplicates && hit.duplicates.length) {
      const copies = document.createElement("span");
      copies.className = "duplicates";
      copies.textContent = hit.duplicates.length > 1
        ? t("card.duplicates", { count: hit.duplicates.length }) : t("card.duplicate");
      body.append(copies);
    }
    const source = document.createElement("span");
    source.className = "source";
    source.textContent = hit.uri.split("/").slice(-2).join("/");
    source.title = hit.uri;
    body.append(source);
    card.append(body);
    return card;
  });
  if (append) results.append(...cards); else results.replaceChildren(...cards);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  // Enter in the filter box adds the filter rather than searching with the text alone.
  if (document.activeElement === $("filter-input") && $("filter-input").value.trim()) addFilter(); else search();
});
$("add-filter").addEventListener("click", addFilter);
$("ask-form").addEventListener("submit", (event) => { event.preventDefault(); search(); });
$("dedup").addEventListener("change", () => search());
for (const id of ["min-score", "order-by", "order-direction"]) $(id).addEventListener("change", () => search());
for (const part of FUSED_TEXTS) {
  $(`${part}-weight`).addEventListener("input", () => {
    $(`${part}-weight-value`).textContent = $(`${part}-weight`).value;
  });
  $(`${part}-weight`).addEventListener("change", () => search());
}
$("more").addEventListener("click", () => search(true));
fileInput.addEventListener("change", () => { useFile(fileInput.files[0]); fileInput.value = ""; });
$("clear-image").addEventListener("click", () => { setImageQuery(null); if (textInput.value.trim()) search(); });
weightInput.addEventListener("input", () => { $("text-weight-value").textContent = weightInput.value; });
for (const radio of form.querySelectorAll("input[name=target], input[name=mode]")) {
  radio.addEventListener("change", () => search());
}
dropZone.addEventListener("dragover", (event) => { event.preventDefault(); dropZone.classList.add("dragging"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
dropZone.addEventListener("drop", (event) => {
  event.preventDefault();
  dropZone.classList.remove("dragging");
  useFile(event.dataTransfer.files[0]);
});
dropZone.addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") { event.preventDefault(); fileInput.click(); }
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData?.items || [])].find((entry) => entry.type.startsWith("image/"));
  if (item) { event.preventDefault(); useFile(item.getAsFile()); }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("clipsearch-api-key", apiKey);
  $("key-form").hidden = true;
  loadInfo();
  loadCollections();
});

let info = null;

function showInfo() {
  if (!info) return;
  const counts = Object.entries(info.counts).map(([modality, count]) => t(`info.${modality}`, { count })).join(", ");
  const model = `${info.model}${info.pretrained ? ` (${info.pretrained})` : ""}`;
  $("info").textContent = `${counts} · ${model} ${t("info.on", { device: info.device })}`;
}

// The switch puts the page in another language at once: its own words, the status line and the results.
$("language").addEventListener("change", () => {
  setLanguage($("language").value, true);
  showInfo();
  labelImageQuery();
  if (results.children.length) search(); else setStatus("");
});
setLanguage(language());
$("language").value = language();

const loadInfo = () => request("/info").then((answer) => {
  info = answer;
  showInfo();
  for (const part of FUSED_TEXTS) {  // each text the collection fuses: offer its weight, starting at its own
    const fused = Boolean(info.fusion && part in info.fusion);
    if (fused) {
      $(`${part}-weight`).value = String(Math.round(info.fusion[part] * 10) / 10);
      $(`${part}-weight-value`).textContent = $(`${part}-weight`).value;
    }
    $(`${part}-weight-label`).hidden = !fused;
  }
  setStatus("");
}).catch((error) => setStatus(t("status.notReady", { error: error.message }), true));
loadInfo();

// Another collection: its own contents and weights, and the query's "more like item N" no longer applies.
const loadCollections = () => offerCollections($("collection"), $("collection-label"),
  () => fetch("/collections", withKey()).then((response) => response.json()), () => {
    if (imageQuery && imageQuery.kind === "item") setImageQuery(null);
    loadInfo();
    if (results.children.length) search();
  });
loadCollections();
