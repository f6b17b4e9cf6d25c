// What the service's pages share (loaded before each page's own script): the API key (kept for the tab's session),
// the request headers that carry it, one line from a problem answer, and the key form.
"use strict";

const $ = (selector) => document.querySelector(selector);
let apiKey = sessionStorage.getItem("cellsdk-api-key") || "";

function headers(extra) {
  return Object.assign(apiKey ? { "X-API-Key": apiKey } : {}, extra || {});
}

async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || response.statusText;
  } catch (err) {
    return response.status + " " + response.statusText;
  }
}

// the key form: its key is kept and used for every later request (never sent in a form submission), then `then()`
function onKeySubmit(then) {
  $("#key-section").addEventListener("submit", (event) => {
    event.preventDefault();
    apiKey = $("#api-key").value.trim();
    sessionStorage.setItem("cellsdk-api-key", apiKey);
    then();
  });
}
