// ssjobs dashboard: refresh the live parts of the page without reloading it, and ask before
// destructive actions. No framework; nothing is built from JSON: the server renders (and
// escapes) every fragment, this only swaps elements marked data-live by their id.
(function () {
  "use strict";
  var body = document.body;
  var every = parseInt(body.getAttribute("data-poll") || "0", 10);
  var offline = document.getElementById("offline");
  var timer = null;
  var busy = false;

  // After an action's redirect (?done=...), drop the query so a reload does not repeat the
  // message; the line stays on screen.
  if (/[?&]done=/.test(location.search)) {
    var kept = location.search.replace(/^\?/, "").split("&").filter(function (p) {
      return !/^(done|n|gone|skipped|found)=/.test(p);
    }).join("&");
    history.replaceState(null, "", location.pathname + (kept ? "?" + kept : "") + location.hash);
  }

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(location.href, {credentials: "same-origin", cache: "no-store",
                          headers: {"X-Requested-With": "ssjobs-live"}})
      .then(function (res) {
        if (res.status === 401 || (res.redirected && /\/login(\?|$)/.test(res.url))) {
          location.reload();            // logged out: the server sends us to the login form
          return null;
        }
        if (!res.ok) { throw new Error("HTTP " + res.status); }
        return res.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        var fresh = new DOMParser().parseFromString(html, "text/html");
        document.querySelectorAll("[data-live][id]").forEach(function (old) {
          var next = fresh.getElementById(old.id);
          if (next) { old.replaceWith(document.importNode(next, true)); }
        });
        offline.hidden = true;
        body.classList.remove("stale");
      })
      .catch(function () {
        offline.hidden = false;
        body.classList.add("stale");
      })
      .then(function () { busy = false; });
  }

  if (every > 0) {
    timer = setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) { refresh(); }
    });
  }

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    // against double submits; after the form data is built, so the button's value counts
    setTimeout(function () {
      form.querySelectorAll("button").forEach(function (b) { b.disabled = true; });
    }, 0);
  });

  window.ssjobsRefresh = refresh;    // for tests and the curious: refresh now
  void timer;
})();
