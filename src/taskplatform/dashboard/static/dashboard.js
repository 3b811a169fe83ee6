// taskplatform dashboard: confirmations for actions, and a live region that refreshes itself.
// No dependencies; served by the server itself (the Content-Security-Policy allows only 'self').
(function () {
  "use strict";

  var confirming = false; // no refresh replaces the page while a confirmation is open
  var submitting = false; // nor once an action is on its way

  // Every form with data-confirm asks first; a confirmed form disables its button, so a
  // double click sends one request.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question) {
      confirming = true;
      var accepted;
      try {
        accepted = window.confirm(question);
      } finally {
        confirming = false;
      }
      if (!accepted) {
        event.preventDefault();
        return;
      }
    }
    var buttons = form.querySelectorAll("button[type=submit]");
    window.setTimeout(function () {
      for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    }, 0);
    submitting = true;
  });

  var live = document.getElementById("live");
  if (!live || !window.fetch || !window.DOMParser) return;
  var seconds = Number(live.getAttribute("data-refresh")) || 5;

  function schedule() {
    window.setTimeout(refresh, seconds * 1000);
  }

  function refresh() {
    if (confirming || submitting || document.hidden) {
      schedule();
      return;
    }
    window
      .fetch(window.location.href, {
        headers: { "X-Dashboard-Refresh": "1" },
        credentials: "same-origin",
        cache: "no-store",
      })
      .then(function (response) {
        // Logged out (the session ended): let the server send the login form.
        if (response.redirected && response.url.indexOf("/dashboard/login") !== -1) {
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html === null || confirming || submitting) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) current.innerHTML = fresh.innerHTML;
      })
      .catch(function () {
        /* the server is away for a moment: try again on the next round */
      })
      .then(schedule);
  }

  schedule();
})();
