// cellsdk review page: classify each chosen cell with /v1/predict, then the technician confirms (Enter), picks
// another label (1-9 or a click) or skips (S); confirmed and corrected cells are posted to /v1/review, which saves
// them by label. One cell at a time, keyboard first. No dependencies.
// With `cellsdk serve --collect DIR --keep-asked`, the cells the service was asked about wait in DIR/unlabelled/:
// the page offers them first, in the order whose labels help adaptation most (GET /v1/review/queue).
"use strict";

let labels = [];
let queue = [];
let current = null;   // {file, url, prediction}
let busy = false;
const tally = { reviewed: 0, confirmed: 0, corrected: 0, skipped: 0, failed: 0 };

async function start() {
  const response = await fetch("/v1/review", { headers: headers() });
  if (response.status === 401) {
    $("#key-section").hidden = false;
    $("#model").textContent = "This service needs its API key.";
    $("#api-key").focus();
    return;
  }
  if (!response.ok) {
    $("#model").textContent = await problemText(response);
    return;
  }
  const info = await response.json();
  labels = info.labels;
  $("#key-section").hidden = true;
  $("#model").textContent = labels.length + " labels · saving to " + info.folder + "/<label>/";
  showCounts(info.counts);
  showPool(info.pool || 0);
  const group = $("#labels");
  group.replaceChildren();
  labels.forEach((label, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.label = label;
    const key = document.createElement("kbd");
    key.textContent = i < 9 ? String(i + 1) : "";
    button.append(key, document.createTextNode(label));
    button.addEventListener("click", () => decide(label));
    group.append(button);
  });
}

function showPool(size) {
  $("#pool-line").hidden = !size;
  $("#pool-text").textContent = size + " unlabelled cell" + (size === 1 ? "" : "s") +
    " kept by the service; the most useful to label come first.";
  if (size && !current && !queue.length) loadPool();
}

async function loadPool() {
  const response = await fetch("/v1/review/queue?n=200", { headers: headers() });
  if (!response.ok) {
    $("#pool-text").textContent = await problemText(response);
    return;
  }
  const listed = await response.json();
  const known = new Set(queue.filter((item) => item.pool).map((item) => item.pool));
  listed.cells.forEach((cell) => { if (!known.has(cell.file)) queue.push({ pool: cell.file }); });
  $("#pool-text").textContent = listed.waiting + " of " + listed.pool + " pool cells wait for a label.";
  if (!current) next();
  else showSummary();
}

async function resolve(item) {
  if (!item || !item.pool) return item;
  const response = await fetch("/v1/review/pool/" + encodeURIComponent(item.pool), { headers: headers() });
  if (!response.ok) return null;
  const blob = await response.blob();
  return new File([blob], item.pool, { type: blob.type });
}

function showCounts(counts) {
  $("#counts").textContent = "Collected: " + labels.map((l) => l + " " + (counts[l] || 0)).join(", ");
}

function showSummary() {
  const left = queue.length + (current ? 1 : 0);
  $("#summary").textContent = tally.reviewed + " reviewed: " + tally.confirmed + " confirmed, " + tally.corrected +
    " corrected, " + tally.skipped + " skipped" + (tally.failed ? ", " + tally.failed + " failed" : "") +
    (left ? " · " + left + " to go" : "");
}

async function next() {
  if (current) URL.revokeObjectURL(current.url);
  current = null;
  let file = null;
  while (queue.length && !file) file = await resolve(queue.shift());
  if (!file) {
    $("#current").hidden = true;
    showSummary();
    return;
  }
  current = { file: file, url: URL.createObjectURL(file), prediction: null };
  $("#current").hidden = false;
  $("#current").dataset.state = "classifying";
  $("#cell").src = current.url;
  $("#cell").alt = file.name;
  $("#file-name").textContent = file.name;
  $("#position").textContent = "cell " + (tally.reviewed + 1);
  $("#predicted").textContent = "classifying…";
  $("#confidence").textContent = "";
  $("#status").textContent = "";
  $("#status").className = "badge";
  $("#reasons").textContent = "";
  document.querySelectorAll("#labels button").forEach((b) => b.classList.remove("predicted"));
  showSummary();
  const body = new FormData();
  body.append("files", file, file.name);
  const response = await fetch("/v1/predict?top_k=1", { method: "POST", body: body, headers: headers() });
  if (!response.ok) {
    $("#predicted").textContent = "not classified";
    $("#reasons").textContent = await problemText(response);
    $("#current").dataset.state = "error";
    return;
  }
  const prediction = (await response.json()).predictions[0];
  current.prediction = prediction;
  $("#predicted").textContent = prediction.label;
  $("#confidence").textContent = (prediction.confidence * 100).toFixed(1) + "%";
  $("#status").textContent = prediction.status;
  $("#status").classList.add(prediction.status);
  $("#reasons").textContent = (prediction.reasons || []).join("; ");
  const button = document.querySelector('#labels button[data-label="' + CSS.escape(prediction.label) + '"]');
  if (button) button.classList.add("predicted");
  $("#current").dataset.state = "ready";
  $("#confirm").focus();
}

async function decide(label) {
  if (!current || busy) return;
  busy = true;
  const predicted = current.prediction ? current.prediction.label : "";
  const query = new URLSearchParams({ label: label, name: current.file.name });
  if (predicted) {
    query.set("predicted", predicted);
    query.set("confidence", String(current.prediction.confidence));
  }
  try {
    const response = await fetch("/v1/review?" + query, {
      method: "POST", body: current.file, headers: headers({ "Content-Type": "application/octet-stream" }),
    });
    if (!response.ok) {
      tally.failed += 1;
      $("#reasons").textContent = await problemText(response);
      return;
    }
    const saved = await response.json();
    tally.reviewed += 1;
    if (saved.decision === "confirmed") tally.confirmed += 1; else tally.corrected += 1;
    showCounts(saved.counts);
    await next();
  } finally {
    busy = false;
  }
}

async function skip() {
  if (!current || busy) return;
  tally.reviewed += 1;
  tally.skipped += 1;
  await next();
}

document.addEventListener("keydown", (event) => {
  if (!current || event.target.matches("input")) return;
  if (event.key === "Enter" && current.prediction) {
    event.preventDefault();
    decide(current.prediction.label);
  } else if (/^[1-9]$/.test(event.key) && Number(event.key) <= labels.length) {
    event.preventDefault();
    decide(labels[Number(event.key) - 1]);
  } else if (event.key === "s" || event.key === "S") {
    event.preventDefault();
    skip();
  }
});

$("#confirm").addEventListener("click", () => current && current.prediction && decide(current.prediction.label));
$("#skip").addEventListener("click", skip);
$("#pool-load").addEventListener("click", loadPool);
$("#files").addEventListener("change", (event) => {
  const wasIdle = !current;
  queue.push(...Array.from(event.target.files));
  event.target.value = "";
  if (wasIdle) next();
  else showSummary();
});
onKeySubmit(start);
start();
