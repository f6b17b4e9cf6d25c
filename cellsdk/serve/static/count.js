// cellsdk count page: each chosen field goes to POST /v1/count; the page shows it with its boxes and a gallery of
// its cells (flagged first), and the technician confirms (Enter) or corrects (1-9 or a click) each cell; the counts
// update as they go. With `cellsdk serve --collect DIR` every decision is also saved by POST /v1/review.
"use strict";

let labels = [];
let collecting = false;
const cells = [];        // {id, field, index, label, predicted, status, confidence, crop, reviewed, card, rect}
let selected = null;
const tally = { fields: 0, failed: 0, corrected: 0 };

async function start() {
  const response = await fetch("/v1/model", { headers: headers() });
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
  if (document.activeElement) document.activeElement.blur();
  $("#model").textContent = info.name + " · " + labels.length + " classes";
  const review = await fetch("/v1/review", { headers: headers() });
  collecting = review.ok;
  $("#collect-note").textContent = collecting ? "Decisions are saved by label to the service's collect folder."
                                              : "Start the service with --collect DIR to keep the decisions.";
  const group = $("#labels");
  group.replaceChildren();
  labels.forEach((label, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.label = label;
    const key = document.createElement("kbd");
    key.textContent = i < 9 ? String(i + 1) : "";
    button.append(key, document.createTextNode(" " + label));
    button.addEventListener("click", () => decide(label));
    group.append(button);
  });
  showCounts();
}

function showCounts() {
  const body = $("#counts tbody");
  body.replaceChildren();
  const total = cells.length;
  for (const label of labels) {
    const mine = cells.filter((c) => c.label === label);
    const row = document.createElement("tr");
    row.dataset.label = label;
    const share = total ? (100 * mine.length / total).toFixed(1) + " %" : "–";
    for (const text of [label, String(mine.length), share, String(mine.filter((c) => c.reviewed).length)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    body.append(row);
  }
  const reviewed = cells.filter((c) => c.reviewed).length;
  $("#total").textContent = total + " cells · " + reviewed + " reviewed";
  $("#summary").textContent = tally.fields + " fields: " + total + " white cells, " +
    cells.filter((c) => c.status !== "ok").length + " flagged, " + reviewed + " reviewed (" + tally.corrected +
    " corrected)" + (tally.failed ? ", " + tally.failed + " not read" : "");
}

function svgRect(box, flagged) {
  const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
  rect.setAttribute("x", box[0]);
  rect.setAttribute("y", box[1]);
  rect.setAttribute("width", box[2] - box[0]);
  rect.setAttribute("height", box[3] - box[1]);
  if (flagged) rect.classList.add("flag");
  return rect;
}

function cardFor(cell) {
  const card = document.createElement("button");
  card.type = "button";
  card.className = "cellcard";
  card.dataset.status = cell.status;
  card.dataset.label = cell.label;
  const image = document.createElement("img");
  image.src = cell.crop;
  image.alt = cell.label;
  const text = document.createElement("span");
  text.className = "celllabel";
  text.textContent = cell.label + " " + cell.confidence.toFixed(2) + (cell.status !== "ok" ? " · " + cell.status : "");
  card.append(image, text);
  card.addEventListener("click", () => select(cell));
  return card;
}

async function countField(file, number) {
  const section = document.createElement("section");
  section.className = "field";
  const title = document.createElement("h3");
  title.textContent = file.name;
  section.append(title);
  $("#field-list").append(section);
  const response = await fetch("/v1/count?name=" + encodeURIComponent(file.name),
                               { method: "POST", headers: headers(), body: file });
  if (!response.ok) {
    tally.failed += 1;
    const error = document.createElement("p");
    error.className = "error";
    error.textContent = await problemText(response);
    section.append(error);
    section.dataset.state = "error";
    return;
  }
  const answer = await response.json();
  tally.fields += 1;
  title.textContent = file.name + " · " + answer.cells.length + " white cell" + (answer.cells.length === 1 ? "" : "s");
  const stage = document.createElement("div");
  stage.className = "stage";
  const image = document.createElement("img");
  image.src = URL.createObjectURL(file);
  image.alt = file.name;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 " + answer.field.width + " " + answer.field.height);
  stage.append(image, svg);
  const gallery = document.createElement("div");
  gallery.className = "gallery";
  const mine = answer.cells.map((c) => ({
    id: number + ":" + c.cell, field: file.name, index: c.cell, label: c.label, predicted: c.label,
    status: c.status, confidence: c.confidence, crop: c.crop, reviewed: false,
  }));
  mine.sort((a, b) => (a.status === "ok") - (b.status === "ok"));   // flagged first
  for (const cell of mine) {
    const source = answer.cells[cell.index];
    cell.rect = svgRect(source.box, cell.status !== "ok");
    cell.rect.addEventListener("click", () => select(cell));
    svg.append(cell.rect);
    cell.card = cardFor(cell);
    gallery.append(cell.card);
    cells.push(cell);
  }
  section.append(stage, gallery);
  section.dataset.state = "done";
  showCounts();
  if (!selected) nextCell();
}

function select(cell) {
  if (selected) {
    selected.card.classList.remove("selected");
    selected.rect.classList.remove("selected");
  }
  selected = cell;
  cell.card.classList.add("selected");
  cell.rect.classList.add("selected");
  $("#review").hidden = false;
  $("#chosen-crop").src = cell.crop;
  $("#chosen-meta").textContent = cell.field + " · cell " + (cell.index + 1) + " · model: " + cell.predicted + " " +
    cell.confidence.toFixed(2) + (cell.status !== "ok" ? " · " + cell.status : "");
  for (const button of document.querySelectorAll("#labels button")) {
    button.classList.toggle("current", button.dataset.label === cell.label);
  }
}

function nextCell() {
  const waiting = cells.filter((c) => !c.reviewed);
  waiting.sort((a, b) => (a.status === "ok") - (b.status === "ok"));
  if (waiting.length) select(waiting[0]);
}

function dataUrlBlob(url) {   // the page's policy lets fetch() reach only the service, so decode it here
  const [head, data] = url.split(",");
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return new Blob([bytes], { type: head.slice(5).split(";")[0] });
}

let deciding = false;

async function decide(label) {
  if (!selected || deciding) return;
  deciding = true;
  try {
    await record(selected, label);
  } finally {
    deciding = false;
  }
}

async function record(cell, label) {
  if (collecting) {
    const blob = dataUrlBlob(cell.crop);
    const query = "label=" + encodeURIComponent(label) + "&predicted=" + encodeURIComponent(cell.predicted) +
      "&name=" + encodeURIComponent(cell.field + "#" + cell.index);
    const response = await fetch("/v1/review?" + query, { method: "POST", headers: headers(), body: blob });
    if (!response.ok) {
      $("#summary").textContent = "not saved: " + await problemText(response);
      return;
    }
  }
  if (label !== cell.predicted && cell.label === cell.predicted) tally.corrected += 1;
  if (label === cell.predicted && cell.label !== cell.predicted) tally.corrected -= 1;
  cell.label = label;
  cell.reviewed = true;
  cell.card.dataset.reviewed = "yes";
  cell.card.dataset.label = label;
  cell.card.querySelector(".celllabel").textContent = label + (label === cell.predicted ? " ✓" : " (was " +
    cell.predicted + ")");
  showCounts();
  nextCell();
}

document.addEventListener("keydown", (event) => {
  const typing = event.target instanceof HTMLInputElement && ["text", "password"].includes(event.target.type);
  if (typing || !selected) return;
  if (event.key === "Enter") {
    event.preventDefault();
    decide(selected.label);
  } else if (/^[1-9]$/.test(event.key) && Number(event.key) <= labels.length) {
    event.preventDefault();
    decide(labels[Number(event.key) - 1]);
  }
});

$("#fields").addEventListener("change", async (event) => {
  const files = Array.from(event.target.files);
  for (const [i, file] of files.entries()) await countField(file, tally.fields + tally.failed + i);
  event.target.value = "";
});

onKeySubmit(start);

start();
