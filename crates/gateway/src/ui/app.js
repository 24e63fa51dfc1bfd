// Ghost Runner dashboard: live update of the #live region by polling the same page.
// No build step; served by the gateway under a strict Content-Security-Policy.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live) { return; }
  function interval() { return parseInt(live.getAttribute("data-refresh-ms") || "0", 10); }
  var busy = false;
  function busyTyping() {
    var active = document.activeElement;
    return active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }
  function refresh() {
    if (busy || document.hidden || busyTyping() || interval() <= 0) { return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Ghost-Poll": "1" } })
      .then(function (response) {
        if (response.redirected && response.url.indexOf("/ui/login") !== -1) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (text) {
        if (!text) { return; }
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("live");
        if (fresh) {
          live.innerHTML = fresh.innerHTML;
          live.setAttribute("data-refresh-ms", fresh.getAttribute("data-refresh-ms") || "0");
          live.setAttribute("data-updated", String(Date.now()));
        }
      })
      .catch(function () { /* keep the last good page; try again next tick */ })
      .then(function () { busy = false; schedule(); });
  }
  function schedule() {
    var every = interval();
    if (every > 0) { window.setTimeout(refresh, every); }
  }
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var button = form.querySelector("button.danger");
    if (button && !window.confirm(button.textContent + "?")) { event.preventDefault(); }
  });
  schedule();
})();
