// cellsdk web page: pick or drop images, each is posted to /v1/predict and shown with its label, top-k bars,
// status badge and (when the service sends one) a heat-map overlay. No dependencies, nothing from a CDN.
"use strict";

const PARALLEL = 4;          // requests in flight at once from this page
const MAX_RETRIES = 5;       // on 503 busy, retry after the server's Retry-After
let queue = [];
let running = 0;
let counts = { total: 0, done: 0, failed: 0 };
const objectUrls = [];


function percent(p) {
  return (p * 100).toFixed(1) + "%";
}

// the model offers heat maps (capabilities.explanations): ask for them with each prediction
let explains = false;

async function loadModel() {
  let response;
  try {
    response = await fetch("/v1/model", { headers: headers() });
  } catch (err) {
    $("#model").textContent = "The service does not answer: " + err.message;
    return;
  }
  if (response.status === 401) {
    $("#key-section").hidden = false;
    $("#model").textContent = "This service needs an API key.";
    $("#api-key").focus();
    return;
  }
  if (!response.ok) {
    $("#model").textContent = await problemText(response);
    return;
  }
  const info = await response.json();
  $("#key-section").hidden = true;
  const parts = [
    info.name,
    info.labels.length + " classes (" + info.labels.join(", ") + ")",
    info.verification.summary,
  ];
  if (info.cpu && info.cpu.check && !["verified", "not applicable"].includes(info.cpu.check)) {
    parts.push("int8 " + info.cpu.check + " on this server's CPU class " + info.cpu.cpu_class);
  }
  $("#model").textContent = parts.join(" · ");
  explains = Boolean(info.capabilities && info.capabilities.explanations);
  $("#heat-toggle-label").hidden = !explains;
}

function addFiles(files) {
  for (const file of Array.from(files)) {  // empty or odd files too: the service says what is wrong with each
    const card = $("#card").content.firstElementChild.cloneNode(true);
    const url = URL.createObjectURL(file);
    objectUrls.push(url);
    const thumb = card.querySelector(".thumb");
    thumb.src = url;
    thumb.alt = file.name;
    card.querySelector(".name").textContent = file.name;
    card.querySelector(".badge").textContent = "classifying…";
    card.dataset.name = file.name;
    card.dataset.state = "pending";
    card.setAttribute("aria-busy", "true");
    $("#results").append(card);
    queue.push({ file, card, tries: 0 });
    counts.total += 1;
  }
  showSummary();
  pump();
}

function pump() {
  while (running < PARALLEL && queue.length) {
    const job = queue.shift();
    running += 1;
    classify(job).finally(() => {
      running -= 1;
      pump();
    });
  }
}

async function classify(job) {
  const body = new FormData();
  body.append("files", job.file, job.file.name);
  const topK = $("#top-k").value;
  let response;
  try {
    const explain = explains ? "&explain=true" : "";
    response = await fetch("/v1/predict?top_k=" + encodeURIComponent(topK) + explain, {
      method: "POST", body, headers: headers(),
    });
  } catch (err) {
    return fail(job.card, "the service does not answer (" + err.message + ")");
  }
  if (response.status === 503 && job.tries < MAX_RETRIES) {
    job.tries += 1;
    const wait = Math.min(30, Number(response.headers.get("Retry-After")) || 1);
    job.card.querySelector(".badge").textContent = "busy, retrying in " + wait + " s";
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    return classify(job);
  }
  if (response.status === 401) {
    $("#key-section").hidden = false;
  }
  if (!response.ok) {
    return fail(job.card, await problemText(response));
  }
  const result = await response.json();
  show(job.card, result.predictions[0]);
}

function show(card, prediction) {
  const label = prediction.label;
  card.dataset.state = "done";
  card.dataset.label = label === null ? "" : label;
  card.dataset.status = prediction.status;
  card.removeAttribute("aria-busy");
  card.querySelector(".label").textContent = label === null ? "no answer (rejected)" : label;
  const badge = card.querySelector(".badge");
  badge.textContent = prediction.status.replace(/_/g, " ");
  badge.className = "badge " + prediction.status;
  const bars = card.querySelector(".bars");
  bars.replaceChildren();
  const rows = prediction.top_k.length ? prediction.top_k
    : Object.entries(prediction.probabilities).map(([l, p]) => ({ label: l, probability: p }))
        .sort((a, b) => b.probability - a.probability).slice(0, Number($("#top-k").value));
  for (const { label: name, probability } of rows) {
    const item = document.createElement("li");
    const text = document.createElement("span");
    text.className = "name";
    text.textContent = name;
    text.title = name;
    const track = document.createElement("span");
    track.className = "track";
    track.setAttribute("role", "img");
    track.setAttribute("aria-label", name + " " + percent(probability));
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = Math.max(0, Math.min(100, probability * 100)).toFixed(1) + "%";
    track.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = percent(probability);
    item.append(text, track, pct);
    bars.append(item);
  }
  const reasons = card.querySelector(".reasons");
  reasons.replaceChildren(...prediction.reasons.map((reason) => {
    const li = document.createElement("li");
    li.textContent = reason;
    return li;
  }));
  if (prediction.heatmap) {
    const heat = card.querySelector(".heat");
    heat.src = prediction.heatmap;
    heat.alt = "where the model looked for " + (label || "its answer");
    heat.hidden = !$("#heat-toggle").checked;
    $("#heat-toggle-label").hidden = false;
  }
  card.setAttribute("aria-label", card.dataset.name + ": " + (label || "no answer") + ", " + badge.textContent);
  counts.done += 1;
  showSummary();
}

function fail(card, message) {
  card.dataset.state = "error";
  card.dataset.error = message;
  card.classList.add("error");
  card.removeAttribute("aria-busy");
  card.querySelector(".label").textContent = "error";
  const badge = card.querySelector(".badge");
  badge.textContent = "error";
  badge.className = "badge error";
  const reasons = card.querySelector(".reasons");
  const li = document.createElement("li");
  li.textContent = message;
  reasons.replaceChildren(li);
  counts.failed += 1;
  showSummary();
}

function showSummary() {
  const pending = counts.total - counts.done - counts.failed;
  $("#summary").textContent = counts.total === 0 ? "" : counts.total + " image" + (counts.total === 1 ? "" : "s")
    + ": " + counts.done + " classified" + (counts.failed ? ", " + counts.failed + " failed" : "")
    + (pending ? ", " + pending + " waiting" : "");
}

function clearAll() {
  queue = [];
  $("#results").replaceChildren();
  while (objectUrls.length) URL.revokeObjectURL(objectUrls.pop());
  counts = { total: 0, done: 0, failed: 0 };
  showSummary();
  $("#files").value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  const drop = $("#drop");
  $("#files").addEventListener("change", (event) => addFiles(event.target.files));
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles(event.dataTransfer.files);
  });
  $("#clear").addEventListener("click", clearAll);
  $("#heat-toggle").addEventListener("change", (event) => {
    for (const heat of document.querySelectorAll(".heat")) {
      if (heat.getAttribute("src")) heat.hidden = !event.target.checked;
    }
  });
  onKeySubmit(loadModel);
  loadModel();
});
