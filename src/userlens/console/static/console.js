// userlens console: dialogs, the sign-in tabs, and status polling of running jobs. No libraries.
(function () {
  "use strict";
  document.addEventListener("click", function (ev) {
    var open = ev.target.closest("[data-open]");
    if (open) { document.getElementById(open.dataset.open).showModal(); return; }
    var close = ev.target.closest("[data-close]");
    if (close) { close.closest("dialog").close(); return; }
    var tab = ev.target.closest("[data-tab]");
    if (tab) {
      ev.preventDefault();
      document.querySelectorAll("[data-tab]").forEach(function (t) { t.classList.toggle("on", t === tab); });
      document.querySelectorAll(".tabpanel").forEach(function (p) { p.hidden = p.id !== "login-" + tab.dataset.tab; });
    }
  });
  document.addEventListener("change", function (ev) {
    var t = ev.target.closest("[data-toggle]");
    if (t) { document.getElementById(t.dataset.toggle).hidden = !t.checked; }
  });
  document.addEventListener("DOMContentLoaded", function () {
    var now = document.querySelector("dialog[data-open-now]");
    if (now) { now.showModal(); }
    if (location.hash === "#aep") { var a = document.querySelector('[data-tab="aep"]'); if (a) { a.click(); } }
    poll();
    var waiting = document.querySelector("[data-reload-while]");
    if (waiting) { setTimeout(function () { location.assign(location.pathname + location.search); }, 1500); }
  });

  var LABELS = { registered: "Registered", pending: "Pending", in_progress: "In progress", completed: "Available", failed: "Failed", cancelled: "Cancelled" };
  var FINAL = ["completed", "failed", "cancelled", "success", "aborted", "inactive", "deleted", "SUCCEEDED", "FAILED", "CANCELLED", "COMPLETED", "ERROR"];

  // Rows marked data-active are polled once a second; a row that reaches a final state reloads the
  // page so every column (counts, sizes, completion time) is the server's.
  function poll() {
    var table = document.querySelector("table[data-poll]");
    if (!table) { return; }
    var rows = table.querySelectorAll("tr[data-active]");
    if (!rows.length) { return; }
    var q = Array.prototype.map.call(rows, function (r) { return "id=" + encodeURIComponent(r.dataset.id); }).join("&");
    fetch(table.dataset.poll + "?" + q, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) { return; }
        var done = false;
        rows.forEach(function (row) {
          var s = data[row.dataset.id];
          if (!s) { return; }
          var badge = row.querySelector(".badge");
          if (badge) {
            badge.className = "badge badge-" + s.status;
            badge.dataset.status = s.status;
            badge.textContent = LABELS[s.status] || s.status;
            if (s.status === "in_progress" && s.progress !== null && s.progress !== undefined) {
              var p = document.createElement("span");
              p.className = "progress";
              p.textContent = " " + Math.round(s.progress * 100) + "%";
              badge.appendChild(p);
            }
          }
          if (FINAL.indexOf(s.status) >= 0) { done = true; }
        });
        // Reload with a GET of the list (never a re-post of the form that rendered this page).
        if (done) { location.assign(table.dataset.reload || location.pathname); } else { setTimeout(poll, 1000); }
      })
      .catch(function () { setTimeout(poll, 3000); });
  }
})();
