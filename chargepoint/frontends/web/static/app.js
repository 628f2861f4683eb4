// Live updates and form submission for the charge point's web UI. No framework, no build step.
// The server renders everything; this only swaps in the live blocks it pushes (server-sent events)
// and sends the control forms with fetch so that the answer shows without leaving the page.
(function () {
  "use strict";
  var csrfMeta = document.querySelector('meta[name="csrf"]');
  var flash = document.getElementById("flash");

  function show(ok, text) {
    if (!flash) return;
    flash.className = ok ? "ok" : "error";
    flash.textContent = text;
  }

  var grid = document.querySelector("[data-events]");
  if (grid && window.EventSource) {
    var dot = document.getElementById("live-dot");
    var source = new EventSource(grid.getAttribute("data-events"));
    source.addEventListener("snapshot", function (ev) {
      var blocks = JSON.parse(ev.data);
      Object.keys(blocks).forEach(function (key) {
        var el = document.querySelector('[data-live="' + key + '"]');
        if (el) {
          var open = el.querySelector("details[open]") !== null;
          el.innerHTML = blocks[key];
          if (open) { var d = el.querySelector("details"); if (d) d.open = true; }
        }
      });
      if (dot) dot.className = "dot on";
      document.body.setAttribute("data-live-updates", String(Number(document.body.getAttribute("data-live-updates") || 0) + 1));
    });
    source.onerror = function () { if (dot) dot.className = "dot off"; };
  }

  document.querySelectorAll("form.ctl").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var headers = { "Accept": "application/json" };
      if (csrfMeta) headers["X-CSRF-Token"] = csrfMeta.getAttribute("content");
      fetch(form.action, { method: "POST", body: new FormData(form), headers: headers, credentials: "same-origin" })
        .then(function (r) { return r.json().catch(function () { return { ok: false, message: "HTTP " + r.status }; }); })
        .then(function (a) { show(a.ok, a.message); })
        .catch(function (e) { show(false, "no answer: " + e); });
    });
  });
})();
