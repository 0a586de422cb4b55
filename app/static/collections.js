// Which collection the page searches: the server's default, or one picked from the list the server
// (and the key) allows. The choice is kept in the address (?collection=NAME), so a link to it works.

const DEFAULT = "default";
let current = new URLSearchParams(location.search).get("collection") || DEFAULT;

// A path of the collection searched: today's paths are the default's, others under /collections/NAME.
export function inCollection(path) {
  return current === DEFAULT ? path : `/collections/${encodeURIComponent(current)}${path}`;
}

function remember(name) {
  current = name;
  const address = new URL(location.href);
  if (name === DEFAULT) address.searchParams.delete("collection"); else address.searchParams.set("collection", name);
  history.replaceState(null, "", address);
}

// Fill the picker from GET /collections and show it when there is a choice to make; `picked(name)`
// runs when another collection is chosen. Collections that are not served (loading, over the memory
// budget) are listed but cannot be chosen, their reason as the option's title.
export async function offerCollections(picker, label, fetchList, picked) {
  let listed;
  try { listed = await fetchList(); } catch { return; }
  if (!Array.isArray(listed) || !listed.length) return;
  const names = listed.map((entry) => entry.name);
  const missing = !names.includes(current);
  if (missing) remember(names.includes(DEFAULT) ? DEFAULT : names[0]);
  picker.replaceChildren(...listed.map((entry) => {
    const option = new Option(entry.name, entry.name, false, entry.name === current);
    option.disabled = !entry.ready;
    if (entry.problem) option.title = entry.problem;
    return option;
  }));
  const choice = listed.length > 1;
  picker.hidden = !choice;
  label.hidden = !choice;
  picker.onchange = () => { remember(picker.value); picked(picker.value); };
  if (missing) picked(current);  // the address named one that is gone: the page now shows another
}
