// Text read in an image, shown on its card: the lines that hold the query's words boxed on the
// thumbnail, and the text under it with those words marked.
import { t } from "./i18n.js";

const SVG = "http://www.w3.org/2000/svg";

// The boxes of the lines that hold the query's words, drawn over the thumbnail. The SVG's viewBox is
// the image's own size and "slice" crops it as object-fit: cover crops the image, so they line up.
export function matchBoxes(img, matches) {
  const svg = document.createElementNS(SVG, "svg");
  svg.classList.add("ocr-boxes");
  svg.setAttribute("preserveAspectRatio", "xMidYMid slice");
  svg.setAttribute("aria-hidden", "true");
  for (const match of matches) {
    const box = document.createElementNS(SVG, "polygon");
    box.setAttribute("points", match.box.map(([x, y]) => `${x},${y}`).join(" "));
    svg.append(box);
  }
  const fit = () => svg.setAttribute("viewBox", `0 0 ${img.naturalWidth} ${img.naturalHeight}`);
  if (img.complete && img.naturalWidth) fit(); else img.addEventListener("load", fit, { once: true });
  return svg;
}

// The text read from an image, its matched words marked (built from text nodes: never as HTML).
export function readText(text, matches) {
  const shown = text.length > 300 ? `${text.slice(0, 300)}…` : text;
  const block = document.createElement("span");
  block.className = "ocr";
  block.title = t("card.ocr");
  const words = [...new Set(matches.flatMap((match) => match.words))].filter(Boolean);
  if (!words.length) { block.textContent = shown; return block; }
  const escaped = words.sort((a, b) => b.length - a.length).map((word) => word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
  const pattern = new RegExp(`(${escaped.join("|")})`, "giu");
  for (const [number, part] of shown.split(pattern).entries()) {
    if (!part) continue;
    if (number % 2) {  // split() with one capturing group: the odd parts are the matches
      const mark = document.createElement("mark");
      mark.textContent = part;
      block.append(mark);
    } else {
      block.append(document.createTextNode(part));
    }
  }
  return block;
}
