// framefleet dashboard: refreshes the page's main part every few seconds while the tab is
// visible, and asks before each write. No inline script anywhere (the CSP forbids it).
"use strict";

(function () {
  const main = document.getElementById("main");
  const every = Number(main && main.dataset.refresh) * 1000;
  let busy = false;

  function typing() {
    const el = document.activeElement;
    return el && (el.tagName === "INPUT" || el.tagName === "TEXTAREA" || el.tagName === "SELECT");
  }

  async function refresh() {
    if (busy || document.hidden || typing() || !main) return;
    busy = true;
    try {
      const answer = await fetch(location.href, {
        headers: { "X-Framefleet-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (answer.status === 401) { location.reload(); return; }
      if (answer.ok) {
        main.innerHTML = await answer.text();
        const stamp = answer.headers.get("X-Framefleet-Updated");
        const now = document.querySelector("footer time.now");
        // shown as the server writes it (a space for the "T"), the ISO form in datetime
        if (stamp && now) { now.textContent = stamp.replace("T", " "); now.dateTime = stamp; }
        document.body.classList.remove("stale");
      } else {
        document.body.classList.add("stale");
      }
    } catch (e) {
      document.body.classList.add("stale");
    } finally {
      busy = false;
    }
  }

  if (every > 0) {
    setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () { if (!document.hidden) refresh(); });
  }

  document.addEventListener("submit", function (event) {
    const question = event.target.dataset && event.target.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
})();
