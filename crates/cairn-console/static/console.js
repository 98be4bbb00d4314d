// Cairn console: live refresh, the $all tail, the time-travel slider. Every page works
// without this file; it only makes some of them live.
"use strict";
(function () {
  var main = document.getElementById("main");

  // Pages marked data-live re-render their <main> from the server every few seconds
  // (server-rendered fragments: the charts stay SVG drawn on the server).
  function live() {
    var every = main && parseInt(main.getAttribute("data-live") || "0", 10);
    if (!every) { return; }
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) { return; }
      var focused = document.activeElement;
      if (focused && main.contains(focused) && focused !== main) { return; }
      busy = true;
      var url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      url.searchParams.delete("notice");
      fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          // A session that ended leads to the login page: show it whole, not in <main>.
          if (r.redirected) { window.location.reload(); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null) { main.innerHTML = html; } })
        .catch(function () {})
        .then(function () { busy = false; });
    }, every);
  }

  // The $all tail: the API's subscription through /ui/tail/events, newest first.
  function tail() {
    var table = document.getElementById("tail");
    var button = document.getElementById("tail-pause");
    var status = document.getElementById("tail-status");
    if (!table || !button || !window.EventSource) { return; }
    var body = table.tBodies[0];
    var last = table.getAttribute("data-from") || "0";
    var source = null;
    var keep = 500;
    function cell(row, text, cls) {
      var td = document.createElement("td");
      td.textContent = text;
      if (cls) { td.className = cls; }
      row.appendChild(td);
      return td;
    }
    function add(event) {
      var e;
      try { e = JSON.parse(event.data); } catch (err) { return; }
      if (typeof e.position !== "number") { return; }
      last = String(e.position);
      var row = document.createElement("tr");
      row.className = "tail-row live";
      cell(row, String(e.position));
      var stream = cell(row, "");
      var a = document.createElement("a");
      a.className = "stream-link";
      a.href = "/ui/streams/" + encodeURIComponent(e.aggregate_id);
      a.textContent = e.aggregate_id;
      stream.appendChild(a);
      cell(row, String(e.version));
      cell(row, e.event_type, "event-type");
      cell(row, e.timestamp);
      var data = cell(row, "");
      var code = document.createElement("code");
      code.className = "clip";
      code.textContent = JSON.stringify(e.data);
      data.appendChild(code);
      body.insertBefore(row, body.firstChild);
      while (body.rows.length > keep) { body.deleteRow(body.rows.length - 1); }
    }
    function open() {
      var q = new URLSearchParams();
      q.set("from", last);
      var et = table.getAttribute("data-event-type");
      var at = table.getAttribute("data-aggregate-type");
      if (et) { q.set("event_type", et); }
      if (at) { q.set("aggregate_type", at); }
      // The console's stream sends every event unnamed, so one handler sees them all.
      source = new EventSource("/ui/tail/events?" + q.toString());
      source.onmessage = add;
      source.onopen = function () { status.textContent = "live"; };
      source.onerror = function () { status.textContent = "reconnecting…"; };
      source.addEventListener("$error", function (ev) {
        var why = "";
        try { why = JSON.parse(ev.data).message || ""; } catch (err) { why = ""; }
        status.textContent = "the stream failed: " + why + " (reconnecting)";
      });
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var paused = button.getAttribute("aria-pressed") === "true";
      if (paused) {
        button.setAttribute("aria-pressed", "false");
        button.textContent = "Pause";
        open();
      } else {
        button.setAttribute("aria-pressed", "true");
        button.textContent = "Resume";
        if (source) { source.close(); source = null; }
        status.textContent = "paused";
      }
    });
    open();
  }

  // The time-travel slider: the label follows, a release shows that version.
  function slider() {
    var range = document.getElementById("version");
    var label = document.getElementById("version-label");
    var form = document.getElementById("travel");
    if (!range || !form) { return; }
    range.addEventListener("input", function () { if (label) { label.textContent = range.value; } });
    range.addEventListener("change", function () {
      var at = document.getElementById("at");
      if (at) { at.value = ""; }
      form.submit();
    });
  }

  live();
  tail();
  slider();
})();
