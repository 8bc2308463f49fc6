// convlens explorer: the CNN vs Human labeling game (/label/sessions/ID). Keyboard-first: type to filter the
// classes, Enter adds the highlighted one, Backspace removes the last, Ctrl+Enter submits, Enter goes on.
// The class list is built once from a JSON list; example images load only when their row scrolls into view.
"use strict";
(function () {
  const root = document.getElementById("label-game");
  if (!root) return;
  const rel = document.body.dataset.rel || "./";
  const sid = root.dataset.session;
  const classes = JSON.parse(root.dataset.classes);
  const lower = classes.map(c => c.toLowerCase());
  const MAX = parseInt(root.dataset.max, 10) || 5;
  const api = rel + "api/label/sessions/" + encodeURIComponent(sid);
  const $ = id => document.getElementById(id);
  const img = $("label-image"), timer = $("label-timer"), picksEl = $("label-picks"), filter = $("label-filter");
  const list = $("label-classes"), submitB = $("label-submit"), answerB = $("label-show-answer");
  const modelB = $("label-show-model"), nextB = $("label-next"), outcome = $("label-outcome"), done = $("label-done");
  const progress = $("label-progress"), phase = $("label-phase"), source = $("label-examples-source");

  let item = JSON.parse(root.dataset.item);
  let picks = [], submitted = false, sending = false, result = null, answerId = null;
  let t0 = null, tick = null, highlight = -1, answerShown = false, modelShown = false;

  // ---- the class list: one row per class, built once ----
  const rows = classes.map((name, i) => {
    const li = document.createElement("li");
    li.className = "label-class";
    li.id = "label-class-" + i;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "label-class-name";
    b.textContent = name;
    b.addEventListener("click", () => add(i));
    const ex = document.createElement("span");
    ex.className = "label-examples";
    li.append(b, ex);
    return li;
  });
  const frag = document.createDocumentFragment();
  rows.forEach(r => frag.appendChild(r));
  list.appendChild(frag);

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    let exact = -1, prefix = -1, word = -1, first = -1;
    for (let i = 0; i < rows.length; i++) {
      const s = lower[i];
      const ok = !q || s.includes(q);
      rows[i].hidden = !ok;
      if (!ok || !q) continue;
      if (first < 0) first = i;
      if (exact < 0 && s === q) exact = i;
      if (prefix < 0 && s.startsWith(q)) prefix = i;
      if (word < 0 && (s.includes(" " + q) || s.includes("-" + q) || s.includes("_" + q))) word = i;
    }
    setHighlight(q ? [exact, prefix, word, first].find(i => i >= 0) ?? -1 : -1);
  }

  function setHighlight(i) {
    if (highlight >= 0) { rows[highlight].classList.remove("highlight"); rows[highlight].removeAttribute("aria-current"); }
    highlight = i;
    if (i >= 0) {
      rows[i].classList.add("highlight");
      rows[i].setAttribute("aria-current", "true");
      rows[i].scrollIntoView({block: "nearest"});
      filter.setAttribute("aria-activedescendant", rows[i].id);
    } else filter.removeAttribute("aria-activedescendant");
  }

  function move(step) {
    const shown = [];
    for (let i = 0; i < rows.length; i++) if (!rows[i].hidden) shown.push(i);
    if (!shown.length) return;
    const at = shown.indexOf(highlight);
    setHighlight(shown[at < 0 ? (step > 0 ? 0 : shown.length - 1) : Math.min(shown.length - 1, Math.max(0, at + step))]);
  }

  // ---- picks ----
  function say(text, cls) {
    outcome.textContent = "";
    const p = document.createElement("p");
    if (cls) p.className = cls;
    p.textContent = text;
    outcome.appendChild(p);
  }

  function renderPicks() {
    picksEl.textContent = "";
    picks.forEach((i, k) => {
      const li = document.createElement("li");
      li.textContent = classes[i] + " ";
      if (!submitted) {
        const x = document.createElement("button");
        x.type = "button";
        x.className = "label-remove";
        x.textContent = "×";
        x.setAttribute("aria-label", "remove " + classes[i]);
        x.addEventListener("click", () => { picks.splice(k, 1); renderPicks(); filter.focus(); });
        li.appendChild(x);
      }
      picksEl.appendChild(li);
    });
    submitB.disabled = submitted || !picks.length;
  }

  function add(i) {
    if (submitted || item.done) return;
    if (picks.includes(i)) { say(classes[i] + " is already one of your labels."); return; }
    if (picks.length >= MAX) { say("Up to " + MAX + " labels: Backspace removes the last."); return; }
    picks.push(i);
    outcome.textContent = "";
    filter.value = "";
    applyFilter();
    renderPicks();
    filter.focus();
  }

  function removeLast() {
    if (submitted || !picks.length) return;
    picks.pop();
    renderPicks();
  }

  // ---- timer ----
  function elapsed() { return t0 === null ? 0 : (performance.now() - t0) / 1000; }
  function startTimer() {
    t0 = performance.now();
    clearInterval(tick);
    tick = setInterval(() => { timer.textContent = elapsed().toFixed(1) + " s"; }, 100);
  }
  function stopTimer() { clearInterval(tick); tick = null; timer.textContent = elapsed().toFixed(1) + " s"; }

  // ---- one image ----
  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
  }

  function show(it) {
    item = it;
    picks = []; submitted = false; result = null; answerId = null; answerShown = false; modelShown = false;
    outcome.textContent = "";
    [answerB, modelB, nextB].forEach(b => { b.hidden = true; });
    submitB.hidden = false;
    renderPicks();
    if (it.done) {
      img.hidden = true;
      filter.disabled = true;
      done.hidden = false;
      submitB.hidden = true;
      phase.textContent = "";
      progress.textContent = it.total + " / " + it.total;
      stopTimer();
      const link = $("label-review-link");
      if (link) link.focus();
      return;
    }
    progress.textContent = (it.total - it.remaining) + " / " + it.total;
    phase.textContent = it.practice ? "practice: not counted, the answer is shown" : "";
    filter.disabled = false;
    filter.value = "";
    applyFilter();
    t0 = null;
    timer.textContent = "0.0 s";
    img.hidden = false;
    img.onload = startTimer;
    img.src = rel + it.image_url;
    if (img.complete && img.naturalWidth) startTimer();
    filter.focus();
  }

  async function post(url, payload) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "Accept": "application/json"},
                                 body: JSON.stringify(payload)});
      } catch (err) {  // the network, not the server: the same answer_id again is stored once
        if (attempt >= 4) throw err;
        await new Promise(r => setTimeout(r, 400 * (attempt + 1)));
      }
    }
  }

  async function submit() {
    if (submitted || sending || item.done || !picks.length) return;
    sending = true;
    answerId = answerId || newId();
    const seconds = Math.round(elapsed() * 1000) / 1000;
    const payload = {image_id: item.image_id, labels: picks.map(i => classes[i]), seconds: seconds, answer_id: answerId};
    let r, body;
    try {
      r = await post(api + "/answers", payload);
      body = await r.json();
    } catch (err) {
      sending = false;
      say("Could not reach the server; Ctrl+Enter tries again (the answer is stored once).", "bad");
      return;
    }
    sending = false;
    if (r.status === 409 && body.error && body.error.stored) { answered(body.error.stored, true); return; }
    if (!r.ok) { say(body.error ? body.error.message : "error " + r.status, "bad"); return; }
    answered(body, false);
  }

  function answered(res, before) {
    result = res;
    submitted = true;
    stopTimer();
    picks = res.labels.map(name => classes.indexOf(name)).filter(i => i >= 0);
    renderPicks();
    filter.value = "";
    applyFilter();
    filter.disabled = true;
    submitB.hidden = true;
    [answerB, modelB, nextB].forEach(b => { b.hidden = false; });
    if (typeof res.remaining === "number") progress.textContent = (item.total - res.remaining) + " / " + item.total;
    say(before ? "This image was already answered in this session; the first answer stands." : "Stored.");
    if (item.practice) { showAnswer(); showModel(); }
    nextB.focus();
  }

  function line(text, cls) {
    const p = document.createElement("p");
    if (cls) p.className = cls;
    p.textContent = text;
    outcome.appendChild(p);
  }

  function showAnswer() {
    if (!result || answerShown) return;
    answerShown = true;
    const verdict = result.correct_top1 ? "right (top-1)" : result.correct_top5 ? "right at top-5, not top-1" : "wrong";
    line("Answer: " + result.truth + ". You were " + verdict + ".",
         result.correct_top5 ? "good label-answer" : "bad label-answer");
    answerB.disabled = true;
  }

  function showModel() {
    if (!result || modelShown) return;
    modelShown = true;
    const verdict = result.model_correct_top1 ? "right (top-1)" : result.model_correct_top5 ? "right at top-5" : "wrong";
    line("The model's guess: " + result.model_top5.join(", ") + (answerShown ? " (" + verdict + ")" : ""),
         "label-model");
    modelB.disabled = true;
  }

  async function next() {
    if (!submitted) return;
    answerB.disabled = false;
    modelB.disabled = false;
    try {
      const r = await fetch(api + "/next", {headers: {"Accept": "application/json"}});
      show(await r.json());
    } catch (err) {
      say("Could not reach the server; press Enter to try again.", "bad");
    }
  }

  // ---- keys ----
  filter.addEventListener("input", applyFilter);
  filter.addEventListener("keydown", e => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); }
    else if (e.key === "Enter") { e.preventDefault(); if (highlight >= 0) add(highlight); }
    else if (e.key === "Backspace" && filter.value === "") { e.preventDefault(); removeLast(); }
    else if (e.key === "ArrowDown") { e.preventDefault(); move(1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); move(-1); }
    else if (e.key === "Escape") { filter.value = ""; applyFilter(); }
  });
  document.addEventListener("keydown", e => {
    if (e.target === filter || e.altKey) return;
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") return;
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); return; }
    if (e.ctrlKey || e.metaKey) return;
    if (submitted) {
      if (e.key === "a") { e.preventDefault(); showAnswer(); }
      else if (e.key === "m") { e.preventDefault(); showModel(); }
      else if (e.key === "Enter" && tag !== "BUTTON" && tag !== "A") { e.preventDefault(); next(); }
    } else if (!item.done && e.key.length === 1 && e.key !== "?" && !filter.disabled) {
      filter.focus();  // typing anywhere filters the classes
    }
  });
  submitB.addEventListener("click", submit);
  answerB.addEventListener("click", showAnswer);
  modelB.addEventListener("click", showModel);
  nextB.addEventListener("click", next);

  // ---- example images: counts once, images when their row is on screen ----
  let counts = null;
  const filled = new Set();
  const observer = "IntersectionObserver" in window ? new IntersectionObserver(entries => {
    entries.forEach(en => { if (en.isIntersecting) fill(rows.indexOf(en.target)); });
  }, {root: list, rootMargin: "200px 0px"}) : null;

  function fill(i) {
    if (i < 0 || filled.has(i) || !counts) return;
    filled.add(i);
    if (observer) observer.unobserve(rows[i]);
    const box = rows[i].querySelector(".label-examples");
    for (let k = 0; k < (counts[i] || 0); k++) {
      const im = document.createElement("img");
      im.loading = "lazy";
      im.decoding = "async";
      im.className = "label-example pixel";
      im.alt = "example of " + classes[i];
      im.width = 36;
      im.height = 36;
      im.src = rel + "label/png/" + encodeURIComponent(sid) + "/" + i + "/" + k;
      box.appendChild(im);
    }
  }

  fetch(api + "/examples", {headers: {"Accept": "application/json"}})
    .then(r => r.json())
    .then(d => {
      if (!d.counts) return;
      counts = d.counts;
      source.textContent = "Examples: " + d.source + ", up to " + d.per_class + " per class.";
      if (observer) rows.forEach(r => observer.observe(r));
      else rows.forEach((_, i) => fill(i));
    })
    .catch(() => { source.textContent = "Examples could not be loaded."; });

  show(item);
})();
