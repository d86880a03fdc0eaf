// The live decisions page: records arrive over server-sent events and are
// added at the top of the table, newest first. Text is set with
// textContent only, so nothing a record holds is ever read as HTML.
"use strict";
(function () {
  const table = document.getElementById("decisions");
  if (!table) return;
  const body = table.tBodies[0];
  const status = document.getElementById("status");
  const max = 500;
  const columns = ["time", "agent", "session", "tool", "event", "outcome", "reason", "tokens", "config"];
  function row(r) {
    const tr = document.createElement("tr");
    tr.dataset.seq = r.seq;
    if (r.outcome === "deny") tr.className = "deny";
    for (const c of columns) {
      const td = document.createElement("td");
      let v = r[c];
      if (v === undefined || v === null) v = "";
      if (c === "time") v = String(v).replace("T", " ").replace(/\.\d+Z$/, "Z");
      td.textContent = String(v);
      if (c === "outcome") td.className = "outcome-" + v;
      tr.appendChild(td);
    }
    return tr;
  }
  // The stream starts where the rendered rows end, so none is missed.
  const query = new URLSearchParams(window.location.search);
  if (table.dataset.from) query.set("from", table.dataset.from);
  const source = new EventSource("/live/stream?" + query.toString());
  source.addEventListener("open", function () { status.textContent = "live"; });
  source.addEventListener("error", function () {
    if (source.readyState !== EventSource.CLOSED) status.textContent = "reconnecting…";
  });
  source.addEventListener("gap", function () {
    source.close(); // a reconnection would skip what was missed
    status.textContent = "stopped: more decisions came than this page could follow; reload it for the rest";
  });
  source.addEventListener("record", function (e) {
    const r = JSON.parse(e.data);
    if (body.querySelector('tr[data-seq="' + r.seq + '"]')) return;
    body.insertBefore(row(r), body.firstChild);
    while (body.rows.length > max) body.deleteRow(body.rows.length - 1);
  });
})();
