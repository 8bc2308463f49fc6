// convlens explorer: keyboard navigation and job progress. No framework, no build step.
"use strict";
(function () {
  const body = document.body;
  const rel = body.dataset.rel || "./";

  function go(attr) {
    const href = body.dataset[attr];
    if (href) { window.location.href = href; return true; }
    return false;
  }

  function typing(target) {
    const tag = (target && target.tagName) || "";
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (target && target.isContentEditable);
  }

  const help = document.getElementById("help");
  function toggleHelp() {
    if (!help) return;
    if (help.open) help.close(); else help.showModal();
  }
  document.querySelectorAll('[data-action="help"]').forEach(b => b.addEventListener("click", toggleHelp));

  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    let done = false;
    if (e.key === "?") { toggleHelp(); done = true; }
    else if (e.key === "ArrowLeft") done = go("prev");
    else if (e.key === "ArrowRight") done = go("next");
    else if (e.key === "[") done = go("prevLayer");
    else if (e.key === "]") done = go("nextLayer");
    else if (e.key === "u") done = go("up");
    if (done) e.preventDefault();
  });

  // Sections computed by a background job: poll its status, show the progress, reload when done.
  function poll(el) {
    const id = el.dataset.job;
    const bar = el.querySelector("progress");
    const msg = el.querySelector(".job-message");
    fetch(rel + "api/jobs/" + encodeURIComponent(id), {headers: {"Accept": "application/json"}})
      .then(r => r.json())
      .then(job => {
        if (bar) bar.value = job.fraction;
        if (msg) msg.textContent = job.message || job.state;
        if (job.state === "done") window.location.reload();
        else if (job.state === "failed") {
          el.classList.add("failed");
          if (msg) msg.textContent = "failed: " + job.error;
        } else setTimeout(() => poll(el), 400);
      })
      .catch(() => setTimeout(() => poll(el), 1500));
  }
  document.querySelectorAll(".job[data-job]").forEach(poll);
})();
