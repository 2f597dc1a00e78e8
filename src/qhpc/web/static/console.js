// qhpc console: keeps a server-rendered page live. Every second it asks the page's
// JSON endpoint (data-poll on <body>) and swaps in each panel the server rendered
// again; a job page also follows the program's output from its byte offsets.
// The server escapes every panel; output text is only ever set as textContent.
(function () {
  "use strict";
  var PERIOD_MS = 1000;
  var live = document.getElementById("live");
  var shown = {};

  function stamp(text, lost) {
    if (!live) { return; }
    live.textContent = text;
    live.className = lost ? "live lost" : "live";
  }

  function fetchJson(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {  // the login ended: back to the sign-in page
          window.location.assign("/dashboard/login");
          throw new Error("signed out");
        }
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      });
  }

  function swapPanels(panels) {
    Object.keys(panels).forEach(function (name) {
      var box = document.querySelector('[data-panel="' + name + '"]');
      if (box && shown[name] !== panels[name]) {
        box.innerHTML = panels[name];
        shown[name] = panels[name];
      }
    });
  }

  var poll = document.body.getAttribute("data-poll");
  function pollPanels() {
    fetchJson(poll).then(function (data) {
      swapPanels(data.panels || {});
      stamp("live: updated " + new Date().toISOString().slice(0, 19).replace("T", " ") + " UTC",
        false);
    }).catch(function (error) {
      stamp("not live: " + error.message + " (retrying)", true);
    }).then(function () { window.setTimeout(pollPanels, PERIOD_MS); });
  }
  if (poll) { window.setTimeout(pollPanels, PERIOD_MS); }

  var out = document.querySelector("[data-logs]");
  var err = document.getElementById("stderr");
  var state = document.getElementById("logs-state");
  var offsets = { stdout: 0, stderr: 0 };
  function pollLogs() {
    var url = out.getAttribute("data-logs") + "?stdout_offset=" + offsets.stdout +
      "&stderr_offset=" + offsets.stderr;
    fetchJson(url).then(function (logs) {
      if (logs.stdout) { out.appendChild(document.createTextNode(logs.stdout)); }
      if (logs.stderr && err) { err.appendChild(document.createTextNode(logs.stderr)); }
      offsets.stdout = logs.stdout_offset;
      offsets.stderr = logs.stderr_offset;
      if (logs.final) {
        if (state) { state.textContent = "the program has ended; this is all of its output"; }
        return;
      }
      window.setTimeout(pollLogs, PERIOD_MS);
    }).catch(function () { window.setTimeout(pollLogs, PERIOD_MS); });
  }
  if (out) { pollLogs(); }
}());
