// The page's own words in English and Chinese: chosen from the browser's languages, or by the switch
// in the header (remembered in this browser). The HTML holds the English text, so the page reads
// right before this runs; elements name their message with data-i18n (text), data-i18n-placeholder,
// data-i18n-title, data-i18n-aria-label and data-i18n-alt.

export const LANGUAGES = { en: "English", zh: "中文" };
const STORAGE_KEY = "clipsearch-language";

const MESSAGES = {
  en: {
    "key.form": "API key",
    "key.label": "This server needs an API key",
    "key.use": "Use key",
    "language.label": "Language",
    "search.form": "Search",
    "search.label": "Search text",
    "search.placeholder": "Describe what you are looking for…",
    "search.button": "Search",
    "drop.before": "Drop an image here, paste one (Ctrl+V), or ",
    "drop.choose": "choose a file",
    "drop.after": " to search with it.",
    "image.preview": "The image you are searching with",
    "image.searching": "Searching with this image",
    "image.remove": "Remove image",
    "image.moreLike": "More like item {id}",
    "image.searchingWith": "Searching with {name}",
    "image.pasted": "pasted image",
    "find.legend": "Find",
    "find.images": "images",
    "find.texts": "texts",
    "match.legend": "Match",
    "match.title": "How a text query ranks: by meaning (vector), by its words (keyword), or both fused",
    "match.vector": "meaning",
    "match.keyword": "words",
    "match.hybrid": "both",
    "results.count": "Results",
    "labels.label": "Labels",
    "labels.placeholder": "beach, city, forest",
    "labels.title": "Comma-separated: each image result shows its best labels",
    "labels.failed": "labels: {error}",
    "dedup.label": "hide duplicates",
    "captionWeight.label": "Caption weight",
    "captionWeight.title": "How much an image's caption counts beside its picture (0: the picture alone)",
    "ocrWeight.label": "Read-text weight",
    "ocrWeight.title": "How much the text read in an image counts beside its picture (0: the picture alone)",
    "textWeight.label": "Text weight",
    "filter.label": "Filter",
    "filter.placeholder": "album=Paris, year>=2020",
    "filter.title": "key=value, key!=value, key>value, key<=value…; Enter adds it",
    "filter.add": "Add filter",
    "filter.chips": "Active filters",
    "filter.remove": "Remove filter {filter}",
    "filter.help": "A filter looks like key=value, key!=value, key>=value or key<value.",
    "results.section": "Results",
    "results.more": "More results",
    "status.empty": "Type something to search for, or add an image.",
    "status.searching": "Searching…",
    "status.loadingMore": "Loading more…",
    "status.found": "{count} results{matching} in {ms} ms{truncated}",
    "status.matching": " of {matched} matching items",
    "status.truncated": " (your text was too long and was shortened)",
    "status.noneFiltered": "No results: {matched} items match the filters.",
    "status.none": "No results.",
    "status.failed": "Search failed: {error}",
    "status.explainFailed": "Explaining failed: {error}",
    "status.notReady": "The server is not ready: {error}",
    "error.answered": "the server answered {status}",
    "error.unreadable": "could not read the file",
    "ask.form": "Ask about the results",
    "ask.label": "Ask about each image",
    "ask.placeholder": "is there a dog?",
    "ask.title": "A question in English; each image result shows the model's answer",
    "ask.keepLabel": "keep only answers",
    "ask.keepPlaceholder": "yes",
    "ask.button": "Ask",
    "ask.answer": "answer: {answer} ({percent}%)",
    "ask.answerTitle": "The question-answering model's answer about this image, and how sure it is",
    "ask.dropped": " ({dropped} dropped by their answer)",
    "card.moreLikeThis": "More like this",
    "card.image": "Image {id}",
    "card.score": "score {score}",
    "card.shares": "Each part of the query's share of the score",
    "card.fused": "What the picture and each of its texts (caption, read text) add to the score",
    "card.ocr": "Text read in the image; the query's words are marked, and boxed on the picture",
    "card.ranks": "Found by: its rank in each list (meaning: the embedding; words: BM25 over captions and texts)",
    "card.rank.vector": "meaning",
    "card.rank.keyword": "words",
    "card.why": "why?",
    "card.whyLabel": "Why item {id} matched",
    "card.duplicates": "+{count} near-duplicates hidden",
    "card.duplicate": "+1 near-duplicate hidden",
    "explain.alt": "Where item {id} matches the query: red is the best match within the image",
    "explain.caption": "Red: where the image matches your query best.",
    "info.image": "{count} images",
    "info.text": "{count} texts",
    "info.on": "on {device}",
  },
  zh: {
    "key.form": "API 密钥",
    "key.label": "这个服务器需要 API 密钥",
    "key.use": "使用密钥",
    "language.label": "语言",
    "search.form": "搜索",
    "search.label": "搜索文字",
    "search.placeholder": "描述你要找的内容…",
    "search.button": "搜索",
    "drop.before": "把图片拖到这里、粘贴一张（Ctrl+V），或",
    "drop.choose": "选择文件",
    "drop.after": "，用它来搜索。",
    "image.preview": "你用来搜索的图片",
    "image.searching": "正在用这张图片搜索",
    "image.remove": "移除图片",
    "image.moreLike": "与第 {id} 项相似的",
    "image.searchingWith": "正在用 {name} 搜索",
    "image.pasted": "粘贴的图片",
    "find.legend": "查找",
    "find.images": "图片",
    "find.texts": "文本",
    "match.legend": "匹配",
    "match.title": "文字查询的排序方式：按含义（向量）、按字词（关键词），或两者融合",
    "match.vector": "含义",
    "match.keyword": "字词",
    "match.hybrid": "两者",
    "results.count": "结果数",
    "labels.label": "标签",
    "labels.placeholder": "海滩, 城市, 森林",
    "labels.title": "用逗号分隔：每个图片结果显示最匹配的标签",
    "labels.failed": "标签：{error}",
    "dedup.label": "隐藏重复项",
    "captionWeight.label": "说明文字权重",
    "captionWeight.title": "图片的说明文字相对画面本身的分量（0：只看画面）",
    "ocrWeight.label": "图中文字权重",
    "ocrWeight.title": "从图片中识别出的文字相对画面本身的分量（0：只看画面）",
    "textWeight.label": "文字权重",
    "filter.label": "筛选",
    "filter.placeholder": "album=巴黎, year>=2020",
    "filter.title": "key=value、key!=value、key>value、key<=value…；按回车添加",
    "filter.add": "添加筛选",
    "filter.chips": "当前筛选条件",
    "filter.remove": "移除筛选 {filter}",
    "filter.help": "筛选条件的格式：key=value、key!=value、key>=value 或 key<value。",
    "results.section": "结果",
    "results.more": "更多结果",
    "status.empty": "输入要搜索的内容，或添加一张图片。",
    "status.searching": "正在搜索…",
    "status.loadingMore": "正在加载更多…",
    "status.found": "{count} 个结果{matching}，用时 {ms} 毫秒{truncated}",
    "status.matching": "（共 {matched} 项符合条件）",
    "status.truncated": "（你的文字太长，已被截短）",
    "status.noneFiltered": "没有结果：有 {matched} 项符合筛选条件。",
    "status.none": "没有结果。",
    "status.failed": "搜索失败：{error}",
    "status.explainFailed": "解释失败：{error}",
    "status.notReady": "服务器还没有准备好：{error}",
    "error.answered": "服务器返回 {status}",
    "error.unreadable": "无法读取文件",
    "ask.form": "就结果提问",
    "ask.label": "就每张图片提问",
    "ask.placeholder": "is there a dog?",
    "ask.title": "用英文提问（模型只懂英文）；每张图片结果下会显示模型的回答",
    "ask.keepLabel": "只保留回答为",
    "ask.keepPlaceholder": "yes",
    "ask.button": "提问",
    "ask.answer": "回答：{answer}（{percent}%）",
    "ask.answerTitle": "问答模型对这张图片的回答，以及它有多确定",
    "ask.dropped": "（{dropped} 个因回答不符被去掉）",
    "card.moreLikeThis": "查找相似的",
    "card.image": "图片 {id}",
    "card.score": "得分 {score}",
    "card.shares": "查询的每个部分在得分中的份额",
    "card.fused": "画面和它的各段文字（说明文字、图中文字）各自贡献的得分",
    "card.ocr": "从图片中识别出的文字；查询中的词已标出，并在图片上框出",
    "card.ranks": "由以下方式找到：在每个列表中的名次（含义：向量；字词：对说明文字和文本的 BM25）",
    "card.rank.vector": "含义",
    "card.rank.keyword": "字词",
    "card.why": "为什么？",
    "card.whyLabel": "第 {id} 项为什么匹配",
    "card.duplicates": "已隐藏 {count} 个近似重复项",
    "card.duplicate": "已隐藏 1 个近似重复项",
    "explain.alt": "第 {id} 项与查询匹配的位置：红色是图中最匹配的地方",
    "explain.caption": "红色：图中与你的查询最匹配的地方。",
    "info.image": "{count} 张图片",
    "info.text": "{count} 条文本",
    "info.on": "运行于 {device}",
  },
};

// The browser's first preferred language that the page speaks, else English.
function browserLanguage() {
  for (const tag of navigator.languages || [navigator.language || "en"]) {
    const primary = tag.toLowerCase().split("-")[0];
    if (primary in MESSAGES) return primary;
  }
  return "en";
}

let current = localStorage.getItem(STORAGE_KEY) in MESSAGES ? localStorage.getItem(STORAGE_KEY) : browserLanguage();

export function language() { return current; }

// The message `key` in the page's language, with {name} replaced by params.name.
export function t(key, params = {}) {
  const template = MESSAGES[current][key] ?? MESSAGES.en[key] ?? key;
  return template.replace(/\{(\w+)\}/g, (whole, name) => (name in params ? String(params[name]) : whole));
}

const ATTRIBUTES = { i18nPlaceholder: "placeholder", i18nTitle: "title", i18nAriaLabel: "aria-label", i18nAlt: "alt" };

// Put the page's static words in `chosen` (remembered when `remember`).
export function setLanguage(chosen, remember = false) {
  current = chosen in MESSAGES ? chosen : "en";
  if (remember) localStorage.setItem(STORAGE_KEY, current);
  document.documentElement.lang = current === "zh" ? "zh-Hans" : "en";
  for (const element of document.querySelectorAll("[data-i18n]")) element.textContent = t(element.dataset.i18n);
  for (const [data, attribute] of Object.entries(ATTRIBUTES)) {
    for (const element of document.querySelectorAll(`[data-${data.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}]`)) {
      element.setAttribute(attribute, t(element.dataset[data]));
    }
  }
}
