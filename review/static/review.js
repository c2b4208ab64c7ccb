// winnow review: one prompt at a time; every decision is POSTed and the prompt re-read from the
// server, so the page always shows what is stored. Text goes in with textContent only: prompt
// text is never parsed as HTML. Actions run one after another (a queue), so fast keys never race.
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
const state = { prompts: [], index: 0, current: null, cursor: 0, undo: [] };
let queue = Promise.resolve();
let pending = 0;
const $ = (id) => document.getElementById(id);

function run(action) {
  pending += 1;
  document.body.dataset.busy = "1";
  queue = queue.then(action).catch(showError).finally(() => {
    pending -= 1;
    if (pending === 0) document.body.dataset.busy = "0";
  });
  return queue;
}

function showError(err) {
  $("error").hidden = false;
  $("error").textContent = String(err && err.message ? err.message : err);
}

async function api(path, options = {}) {
  const headers = { "X-Winnow-Token": token, ...(options.body ? { "Content-Type": "application/json" } : {}) };
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${response.status}: ${body.detail || response.statusText}`);
  }
  return response.json();
}

function filterQuery() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const [key, value] of form.entries()) {
    if (value === "on") params.set(key, "true");
    else if (value !== "") params.set(key, value);
  }
  return params.toString();
}

async function loadPrompts(keepKey) {
  const data = await api(`/api/prompts?${filterQuery()}`);
  fillSelect($("filters").elements.score, data.scores, false);
  fillSelect($("filters").elements.run, data.runs, true);
  state.prompts = data.prompts;
  const at = keepKey ? state.prompts.findIndex((p) => p.run_id === keepKey.run_id && p.prompt_id === keepKey.prompt_id) : -1;
  state.index = at >= 0 ? at : 0;
  showProgress(data);
  await loadPrompt();
}

function fillSelect(select, values, withAll) {
  if (select.dataset.filled) return;
  select.dataset.filled = "1";
  for (const value of values) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = value;
    select.appendChild(option);
  }
  if (!withAll) select.value = values[0];
}

function showProgress(data) {
  $("progress").textContent = `${data.reviewed} / ${data.total} reviewed`;
  $("progress").dataset.reviewed = data.reviewed;
}

async function refreshProgress() {
  showProgress(await api(`/api/prompts?${filterQuery()}`));
}

async function loadPrompt() {
  const entry = state.prompts[state.index];
  $("empty").hidden = Boolean(entry);
  $("position").textContent = entry ? `prompt ${state.index + 1} of ${state.prompts.length}` : "";
  if (!entry) {
    state.current = null;
    $("prompt").textContent = "";
    $("meta").textContent = "";
    $("candidates").replaceChildren();
    return;
  }
  const params = new URLSearchParams({ run_id: entry.run_id, prompt_id: entry.prompt_id });
  state.current = await api(`/api/prompt?${params}`);
  state.cursor = Math.min(state.cursor, state.current.candidates.length - 1);
  render();
}

function render() {
  const data = state.current;
  if (!data) return;
  $("prompt").textContent = data.prompt;
  $("meta").textContent = `run ${data.run_id} · prompt ${data.prompt_id}`;
  const cards = data.candidates.map((c, i) => {
    const card = document.createElement("figure");
    card.className = "card";
    card.classList.add(c.kept_final ? "kept" : "rejected");
    if (c.kept) card.classList.add("policy");
    if (c.human_decision) card.classList.add("decided");
    if (i === state.cursor) card.classList.add("current");
    card.dataset.candidate = c.candidate_id;
    card.addEventListener("click", () => { state.cursor = i; run(() => toggle(i)); });
    if (c.image) {
      const img = document.createElement("img");
      img.src = `/${c.image.split("/").map(encodeURIComponent).join("/")}?token=${encodeURIComponent(token)}`;
      img.alt = c.candidate_id;
      card.appendChild(img);
    } else {
      const none = document.createElement("div");
      none.className = "placeholder";
      none.textContent = "no image saved";
      card.appendChild(none);
    }
    const caption = document.createElement("figcaption");
    const lines = [`${i + 1}. #${c.rank} ${c.kept_final ? "kept" : "rejected"}${c.human_decision ? " (you)" : ""}`];
    if (!c.kept && c.reason) lines.push(`policy: ${c.reason}`);
    for (const [name, value] of Object.entries(c.scores)) {
      if (value !== null) lines.push(`${name} ${value.toFixed(4)}`);
    }
    for (const line of lines) {
      const div = document.createElement("div");
      div.textContent = line;
      caption.appendChild(div);
    }
    card.appendChild(caption);
    return card;
  });
  $("candidates").replaceChildren(...cards);
}

async function decide(changes) {
  // changes: [{candidate, decision}]; the undo entry restores each one's previous decision
  const data = state.current;
  if (!data || changes.length === 0) return;
  const item = (c, decision) => ({ run_id: data.run_id, prompt_id: data.prompt_id, candidate_id: c.candidate_id, decision });
  state.undo.push({ run_id: data.run_id, prompt_id: data.prompt_id,
    decisions: changes.map(({ candidate }) => item(candidate, candidate.human_decision || "clear")) });
  await api("/api/decisions", { method: "POST", body: JSON.stringify({ decisions: changes.map(({ candidate, decision }) => item(candidate, decision)) }) });
}

async function toggle(i) {
  const c = state.current && state.current.candidates[i];
  if (!c) return;
  await decide([{ candidate: c, decision: c.kept_final ? "reject" : "keep" }]);
  await loadPrompt();
  await refreshProgress();
}

async function setAll(pick) {
  if (!state.current) return;
  await decide(state.current.candidates.map((c) => ({ candidate: c, decision: pick(c) ? "keep" : "reject" })));
  await loadPrompt();
  await refreshProgress();
}

async function move(step) {
  const next = state.index + step;
  if (next < 0 || next >= state.prompts.length) return;
  state.index = next;
  state.cursor = 0;
  await loadPrompt();
}

async function undo() {
  const last = state.undo.pop();
  if (!last) return;
  await api("/api/decisions", { method: "POST", body: JSON.stringify({ decisions: last.decisions }) });
  const at = state.prompts.findIndex((p) => p.run_id === last.run_id && p.prompt_id === last.prompt_id);
  if (at >= 0) state.index = at;
  await loadPrompt();
  await refreshProgress();
}

function toggleHelp(show) {
  $("help").hidden = show === undefined ? !$("help").hidden : !show;
}

document.addEventListener("keydown", (event) => {
  if (event.target.closest && event.target.closest("form")) return;  // typing in a filter
  const key = event.key;
  const count = state.current ? state.current.candidates.length : 0;
  let handled = true;
  if (key === "?") toggleHelp();
  else if (key === "Escape") toggleHelp(false);
  else if (key === "j" || key === "PageDown") run(() => move(1));
  else if (key === "k" || key === "PageUp") run(() => move(-1));
  else if (key === "ArrowRight") { state.cursor = Math.min(state.cursor + 1, count - 1); render(); }
  else if (key === "ArrowLeft") { state.cursor = Math.max(state.cursor - 1, 0); render(); }
  else if (key === " " || key === "x") run(() => toggle(state.cursor));
  else if (/^[1-9]$/.test(key)) run(() => toggle(Number(key) - 1));
  else if (key === "a" || key === "Enter") run(async () => { await setAll((c) => c.kept); await move(1); });
  else if (key === "r") run(() => setAll(() => false));
  else if (key === "u" || (key === "z" && (event.ctrlKey || event.metaKey))) run(undo);
  else handled = false;
  if (handled) event.preventDefault();
});

$("filters").addEventListener("change", () => run(() => loadPrompts(null)));
$("help-button").addEventListener("click", () => toggleHelp());
$("help").addEventListener("click", () => toggleHelp(false));
run(() => loadPrompts(null));
