// The integrity page: while a verification runs, its progress bar follows
// /integrity/status, and the page reloads with the result when it ends.
"use strict";
(function () {
  const box = document.getElementById("verification");
  if (!box || box.dataset.running !== "true") return;
  const bar = document.getElementById("verify-progress");
  const count = document.getElementById("verify-count");
  function poll() {
    fetch("/integrity/status", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (s) {
        bar.max = s.total;
        bar.value = s.done;
        count.textContent = s.done + " of " + s.total + " records";
        if (s.running) setTimeout(poll, 300);
        else window.location.reload();
      })
      .catch(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
