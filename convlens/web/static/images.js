// convlens explorer: the upload form of /images. Posts the file to api/images and opens the new image's
// page; without JavaScript the form posts to images/upload, which redirects there.
"use strict";
(function () {
  const form = document.getElementById("upload-form");
  if (!form || !window.fetch || !window.FormData) return;
  const status = form.querySelector(".upload-status");
  const input = form.querySelector('input[type="file"]');
  const button = form.querySelector('button[type="submit"]');
  function say(text, bad) {
    if (!status) return;
    status.textContent = text;
    status.classList.toggle("error", !!bad);
  }
  form.addEventListener("submit", function (e) {
    if (!input || !input.files || !input.files.length) return;  // the browser's own "required" message
    e.preventDefault();
    const data = new FormData();
    data.append("file", input.files[0]);
    if (button) button.disabled = true;
    say("uploading…");
    fetch(form.dataset.api, {method: "POST", body: data, headers: {"Accept": "application/json"}})
      .then(r => r.json().then(body => ({ok: r.ok, status: r.status, body: body})))
      .then(res => {
        if (res.ok && res.body.id) {
          say("uploaded: opening " + res.body.id);
          window.location.href = form.dataset.pages + encodeURIComponent(res.body.id);
          return;
        }
        const err = res.body && res.body.error ? res.body.error.message : "upload failed (" + res.status + ")";
        say(err, true);
        if (button) button.disabled = false;
      })
      .catch(err => { say("upload failed: " + err, true); if (button) button.disabled = false; });
  });
})();
