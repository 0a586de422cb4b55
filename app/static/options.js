// What a search asks besides its query: the filter chips as the server's filter JSON, and the
// fusion weights of a fused collection.

// A chip's text ("album=Paris", "year>=2020", "place!=home") as a condition of the server's filter.
const FILTER_PATTERN = /^\s*([^=<>!\s][^=<>!]*?)\s*(>=|<=|!=|=|>|<)\s*(.+?)\s*$/;
const RANGES = { ">": "gt", ">=": "gte", "<": "lt", "<=": "lte" };

// A typed value matches only the same type on the server, so "2020" is tried as a number and a string.
function matchValues(text) {
  if (/^(true|false)$/i.test(text)) return [text.toLowerCase() === "true", text];
  if (text.trim() !== "" && !Number.isNaN(Number(text))) return [Number(text), text];
  return [text];
}

export function parseFilter(text) {
  const parts = FILTER_PATTERN.exec(text);
  if (!parts) return null;
  const [, key, operator, value] = parts;
  if (RANGES[operator]) {
    const bound = Number.isNaN(Number(value)) ? value : Number(value);
    return { text: `${key} ${operator} ${value}`, condition: { key, range: { [RANGES[operator]]: bound } } };
  }
  const condition = { key, match: { any: matchValues(value) } };
  return operator === "!="
    ? { text: `${key} ≠ ${value}`, negated: true, condition }
    : { text: `${key} = ${value}`, condition };
}

export function filterJson(chips) {
  if (!chips.length) return null;
  const must = chips.filter((chip) => !chip.negated).map((chip) => chip.condition);
  const mustNot = chips.filter((chip) => chip.negated).map((chip) => chip.condition);
  return { ...(must.length ? { must } : {}), ...(mustNot.length ? { must_not: mustNot } : {}) };
}

// The texts a fused collection may weigh beside each picture, each with its slider.
export const FUSED_TEXTS = ["caption", "ocr"];

// The fusion weights of the texts offered (part → slider value), with the picture's beside them.
export function fusionWeights(weights) {
  if (!Object.keys(weights).length) return null;
  const rest = 1 - Object.values(weights).reduce((sum, weight) => sum + weight, 0);
  // The picture takes what the texts leave; the server normalises the sum to 1.
  return { image: Math.max(0, Math.round(rest * 10) / 10), ...weights };
}
