// tether ui: live updates over SSE (the projector's change notifications), the views' lag,
// the CSRF header on actions, and the charts. No build step; htmx and uPlot are vendored.
(function () {
  "use strict";
  var VIEWS = ["traces", "cost", "errors", "metrics", "memory"];
  var csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  document.addEventListener("htmx:configRequest", function (ev) {
    ev.detail.headers["X-CSRF-Token"] = csrf;
  });

  // -- live: one EventSource, a refresh of the parts showing a view when it changes ------------------
  var timers = {};
  var pending = {};
  function refresh(view) {
    // at most one refresh per view every 250 ms; a change inside that window gets a trailing one
    if (timers[view]) { pending[view] = true; return; }
    fire(view);
    timers[view] = setTimeout(function again() {
      if (pending[view]) { pending[view] = false; fire(view); timers[view] = setTimeout(again, 250); }
      else { timers[view] = null; }
    }, 250);
  }
  function fire(view) {
    document.querySelectorAll('[data-live~="' + view + '"]').forEach(function (el) {
      if (window.htmx) { window.htmx.trigger(el, "tether:" + view); }
    });
  }

  function words(n, one) { return n.toLocaleString() + " " + one + (n === 1 ? "" : "s"); }
  function ago(s) {
    if (s < 90) return Math.round(s) + " s";
    if (s < 5400) return Math.round(s / 60) + " min";
    if (s < 129600) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " days";
  }
  function showLag(lag) {
    var box = document.getElementById("lag");
    if (!box) return;
    var wanted = (box.dataset.views || "").split(/\s+/).filter(Boolean);
    var parts = wanted.map(function (view) {
      var l = lag[view];
      if (!l) return "";
      if (l.missing) return '<span class="tag warn">' + view + " view: none yet (is the projector running?)</span>";
      var age = l.age_s == null ? "" : ", newest event " + ago(l.age_s) + " old";
      if (l.behind == null) return '<span class="tag dim">' + view + " view at seq " + l.seq + " (log head unknown)</span>";
      if (l.behind === 0) return '<span class="tag ok" data-behind="0">' + view + " view up to date with the log (seq " + l.seq + ")</span>";
      return '<span class="tag warn" data-behind="' + l.behind + '">' + view + " view " + words(l.behind, "event") + " behind the log (seq " + l.seq + " of " + l.head + age + ")</span>";
    });
    box.innerHTML = parts.join(" ");
  }

  function connect() {
    var status = document.getElementById("live");
    var source = new EventSource("/live");
    source.onopen = function () { if (status) { status.textContent = "live"; status.className = "tag ok"; } };
    source.onerror = function () { if (status) { status.textContent = "reconnecting…"; status.className = "tag warn"; } };
    VIEWS.forEach(function (view) { source.addEventListener(view, function () { refresh(view); }); });
    source.addEventListener("lag", function (ev) { showLag(JSON.parse(ev.data)); });
    window.addEventListener("beforeunload", function () { source.close(); });
  }

  // -- the Memory page's as-of slider: its label follows the thumb; at its right end it means "now" ----
  document.addEventListener("input", function (ev) {
    var range = ev.target;
    if (!range || range.id !== "asof-range") return;
    var label = document.getElementById("asof-label");
    var now = range.form && range.form.querySelector("input[name=now]");
    var atEnd = range.value === range.max;
    if (now) now.value = atEnd ? "1" : "";
    if (label) label.textContent = atEnd ? "now" : "as of seq " + Number(range.value).toLocaleString() + "…";
  });

  // -- charts -----------------------------------------------------------------------------------------
  var COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c"];
  function charts(root) {
    if (!window.uPlot) return;
    root.querySelectorAll(".chart").forEach(function (box) {
      if (box.dataset.drawn) return;
      var spec = JSON.parse(box.querySelector("script").textContent);
      var names = Object.keys(spec.series);
      var series = [{}].concat(names.map(function (n, i) {
        return { label: n, stroke: COLOURS[i % COLOURS.length], width: 2, points: { show: spec.x.length < 50 } };
      }));
      var data = [spec.x].concat(names.map(function (n) { return spec.series[n]; }));
      box.dataset.drawn = "1";
      var scales = { x: { time: true, range: function (u, min, max) {
        return min === max ? [min - 1800, max + 1800] : [min, max];  // one point: half an hour each side
      } } };
      scales.y = { range: function (u, min, max) {  // a flat series still gets a visible range from 0
        return min === max ? [Math.min(0, min), max > 0 ? max * 2 : 1] : [Math.min(0, min), max];
      } };
      var yAxis = { label: spec.unit, size: 64, values: function (u, splits) {
        return splits.map(function (v) {  // small amounts (a fraction of a cent) keep their digits
          if (v == null) return "";
          return Math.abs(v) >= 1 || v === 0 ? v.toLocaleString() : String(Number(v.toPrecision(2)));
        });
      } };
      new window.uPlot({ title: spec.title, width: Math.max(320, box.clientWidth || 800), height: 220,
                         series: series, scales: scales, axes: [{}, yAxis] }, data, box);
    });
  }
  document.addEventListener("htmx:afterSettle", function (ev) { charts(ev.target); });

  document.addEventListener("DOMContentLoaded", function () {
    connect();
    charts(document);
  });
})();
