// The search page: plain JavaScript, no build step, no network beyond this server.
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
    $("image-query-preview").src = query.preview;
    $("image-query-label").textContent = query.kind === "item"
      ? `More like item ${query.id}` : `Searching with ${query.name}`;
  }
}

function useFile(file) {
  if (!file) return;
  const objectUrl = URL.createObjectURL(file);
  setImageQuery({ kind: "upload", file, name: file.name || "pasted image", preview: objectUrl, objectUrl });
  search();
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error("could not read the file"));
    reader.readAsDataURL(file);
  });
}

async function request(path, options) {
  const response = await fetch(path, withKey(options));
  if (response.status === 401) $("key-form").hidden = false;
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (!response.ok) {
    throw new Error((body && body.detail) || `the server answered ${response.status} ${response.statusText}`);
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

async function runQuery() {
  const text = textInput.value.trim();
  if (!imageQuery) return postJson("/search/text", { text, target: target(), k: k() });
  if (!text && imageQuery.kind === "upload") {
    const data = new FormData();
    data.append("file", imageQuery.file);
    data.append("target", target());
    data.append("k", String(k()));
    return request("/search/image", { method: "POST", body: data });
  }
  const { queries, names } = await queryTerms();
  const body = await postJson("/search", { queries, target: target(), k: k(), explain: queries.length > 1 });
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
    line.textContent = `labels: ${error.message}`;
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
    img.alt = `Where item ${hit.id} matches the query: red is the best match within the image`;
    const caption = document.createElement("figcaption");
    caption.textContent = "Red: where the image matches your query best.";
    figure.append(img, caption);
    card.append(figure);
    button.setAttribute("aria-expanded", "true");
  } catch (error) {
    setStatus(`Explaining failed: ${error.message}`, true);
  } finally {
    button.disabled = false;
  }
}

async function search() {
  if (!imageQuery && !textInput.value.trim()) {
    setStatus("Type something to search for, or add an image.");
    return;
  }
  setStatus("Searching…");
  results.setAttribute("aria-busy", "true");
  try {
    const body = await runQuery();
    render(body.results, body.termNames);
    const truncated = body.truncated && body.truncated.length ? " (your text was too long and was shortened)" : "";
    setStatus(body.results.length
      ? `${body.results.length} results in ${body.took_ms.toFixed(1)} ms${truncated}`
      : "No results.");
  } catch (error) {
    results.replaceChildren();
    setStatus(`Search failed: ${error.message}`, true);
  } finally {
    results.removeAttribute("aria-busy");
  }
}

// An <img> cannot send headers: with an API key, the image is fetched and shown from a blob.
function showImage(img, path) {
  if (!apiKey) { img.src = path; return; }
  fetch(path, withKey()).then((response) => (response.ok ? response.blob() : null))
    .then((blob) => { if (blob) img.src = URL.createObjectURL(blob); });
}

function render(hits, termNames) {
  results.replaceChildren(...hits.map((hit) => {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.id = String(hit.id);
    if (hit.modality === "image") {
      const thumb = document.createElement("button");
      thumb.type = "button";
      thumb.className = "thumb";
      thumb.title = "More like this";
      thumb.setAttribute("aria-label", `More like item ${hit.id}`);
      const img = document.createElement("img");
      img.loading = "lazy";
      showImage(img, `/items/${hit.id}/image`);
      img.alt = hit.caption || `Image ${hit.id}`;
      thumb.append(img);
      thumb.addEventListener("click", () => {
        setImageQuery({ kind: "item", id: hit.id, preview: img.currentSrc || img.src });
        textInput.value = "";
        search();
      });
      card.append(thumb);
    }
    const body = document.createElement("div");
    body.className = "body";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${hit.score.toFixed(3)}`;
    body.append(score);
    if (hit.shares && termNames) {
      const shares = document.createElement("span");
      shares.className = "shares";
      shares.textContent = hit.shares.map((share, number) => `${termNames[number]} ${share.toFixed(3)}`).join(" + ");
      shares.title = "Each part of the query's share of the score";
      body.append(shares);
    }
    if (hit.modality === "image") {
      const why = document.createElement("button");
      why.type = "button";
      why.className = "why";
      why.textContent = "why?";
      why.setAttribute("aria-expanded", "false");
      why.setAttribute("aria-label", `Why item ${hit.id} matched`);
      why.addEventListener("click", () => explain(hit, card, why));
      body.append(why);
      showLabels(hit, body);
    }
    const words = hit.modality === "image" ? hit.caption : hit.text;
    if (words) {
      const snippet = document.createElement("span");
      snippet.className = hit.modality === "image" ? "caption" : "snippet";
      snippet.textContent = words.length > 300 ? `${words.slice(0, 300)}…` : words;
      body.append(snippet);
    }
    const source = document.createElement("span");
    source.className = "source";
    source.textContent = hit.uri.split("/").slice(-2).join("/");
    source.title = hit.uri;
    body.append(source);
    card.append(body);
    return card;
  }));
}

form.addEventListener("submit", (event) => { event.preventDefault(); search(); });
fileInput.addEventListener("change", () => { useFile(fileInput.files[0]); fileInput.value = ""; });
$("clear-image").addEventListener("click", () => { setImageQuery(null); if (textInput.value.trim()) search(); });
weightInput.addEventListener("input", () => { $("text-weight-value").textContent = weightInput.value; });
for (const radio of form.querySelectorAll("input[name=target]")) radio.addEventListener("change", search);
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
});

const loadInfo = () => request("/info").then((info) => {
  const counts = Object.entries(info.counts).map(([modality, count]) => `${count} ${modality}s`).join(", ");
  $("info").textContent = `${counts} · ${info.model}${info.pretrained ? ` (${info.pretrained})` : ""} on ${info.device}`;
  setStatus("");
}).catch((error) => setStatus(`The server is not ready: ${error.message}`, true));
loadInfo();
