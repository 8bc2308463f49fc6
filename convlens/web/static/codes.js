// convlens explorer: the code-space map (/codes) on a canvas. Pan by dragging, zoom with the wheel or the
// buttons, thumbnails from one sprite once they are big enough, filters by class and right/wrong, a click
// opens the image's page. Keyboard: with the canvas focused, arrows pan, + and - zoom, 0 shows the whole
// map, Enter opens the point nearest the centre. No framework, no build step.
"use strict";
(function () {
  const holder = document.getElementById("codes-data");
  const canvas = document.getElementById("codes-canvas");
  if (!holder || !canvas || !canvas.getContext) return;
  const data = JSON.parse(holder.textContent);
  const rel = document.body.dataset.rel || "./";
  const ctx = canvas.getContext("2d");
  const tip = document.querySelector(".codes-tip");
  const points = data.points;
  const colors = {}, names = {};
  data.classes.forEach(c => { colors[c.index] = c.color; names[c.index] = c.name; });
  const PAD = 16, MIN_THUMB = 24;  // thumbnails once they are this big on screen (px), dots before
  let size = 720, dpr = window.devicePixelRatio || 1;
  let view = {s: 1, tx: 0, ty: 0};
  let layout = "map", thumbs = true, clsFilter = "", okFilter = "";
  const n = Math.max(points.length, 1);
  const sprite = new Image();
  let spriteReady = false;
  sprite.onload = () => { spriteReady = true; schedule(); };
  sprite.src = rel + data.sprite.url;

  function fit() {
    const avail = canvas.parentElement.parentElement.clientWidth || 720;
    size = Math.max(280, Math.min(820, avail - 24, window.innerHeight - 90));
    dpr = window.devicePixelRatio || 1;
    canvas.style.width = size + "px";
    canvas.style.height = size + "px";
    canvas.width = Math.round(size * dpr);
    canvas.height = Math.round(size * dpr);
    schedule();
  }

  function world(p) { return layout === "grid" && p.gx !== undefined ? [p.gx, p.gy] : [p.x, p.y]; }
  function cell() {  // a thumbnail's side in map units (the map is [0, 1] square)
    return layout === "grid" && data.grid ? 1 / Math.max(data.grid.cols, data.grid.rows) : Math.min(0.1, 0.9 / Math.sqrt(n));
  }
  function margin() { return PAD + cell() * (size - 2 * PAD) / 2; }  // so that edge thumbnails fit at zoom 1
  function screen(p) {
    const w = world(p), m = margin(), base = size - 2 * m;
    return [m + w[0] * base * view.s + view.tx, m + w[1] * base * view.s + view.ty];
  }
  function thumbSize() { return cell() * (size - 2 * margin()) * view.s; }  // on screen, px
  function shown(p) {
    if (clsFilter !== "" && String(p.label) !== clsFilter) return false;
    if (okFilter === "right" && p.correct !== true) return false;
    if (okFilter === "wrong" && p.correct !== false) return false;
    return true;
  }

  let pending = false;
  function schedule() { if (!pending) { pending = true; requestAnimationFrame(draw); } }
  function draw() {
    pending = false;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, size, size);
    const t = thumbSize();
    const useThumbs = thumbs && spriteReady && t >= MIN_THUMB;
    const cols = data.sprite.cols, tw = data.sprite.w, th = data.sprite.h;
    for (const p of points) {
      if (!shown(p)) continue;
      const [x, y] = screen(p);
      if (x < -t || y < -t || x > size + t || y > size + t) continue;
      const color = colors[p.label] || "#555";
      if (useThumbs) {
        const sx = (p.i % cols) * tw, sy = Math.floor(p.i / cols) * th;
        const h = t, w = t * tw / th;
        ctx.fillStyle = color;
        ctx.fillRect(x - w / 2 - 2, y - h / 2 - 2, w + 4, h + 4);
        ctx.drawImage(sprite, sx, sy, tw, th, x - w / 2, y - h / 2, w, h);
      } else {
        ctx.beginPath();
        ctx.arc(x, y, 3.2, 0, 2 * Math.PI);
        ctx.fillStyle = color;
        ctx.fill();
        if (p.correct === false) { ctx.lineWidth = 1.5; ctx.strokeStyle = "#000"; ctx.stroke(); }
      }
    }
  }

  function nearest(mx, my, within) {
    const t = thumbSize();
    const reach = Math.max(within, thumbs && spriteReady && t >= MIN_THUMB ? t / 2 + 2 : 0);
    let best = null, bestD = reach * reach;
    for (const p of points) {
      if (!shown(p)) continue;
      const [x, y] = screen(p);
      const d = (x - mx) * (x - mx) + (y - my) * (y - my);
      if (d <= bestD) { best = p; bestD = d; }
    }
    return best;
  }
  function open(p) { if (p) window.location.href = rel + "images/" + encodeURIComponent(p.id); }
  function describe(p) {
    let text = p.id + " · " + (names[p.label] !== undefined ? names[p.label] : p.label);
    if (p.pred !== undefined) text += " → " + (data.predicted[String(p.pred)] || p.pred) + (p.correct === false ? " (wrong)" : "");
    return text;
  }

  function zoom(f, cx, cy) {
    const s = Math.min(200, Math.max(0.5, view.s * f));
    f = s / view.s;
    const m = margin();
    view.tx = cx - m - (cx - m - view.tx) * f;
    view.ty = cy - m - (cy - m - view.ty) * f;
    view.s = s;
    schedule();
  }
  function reset() { view = {s: 1, tx: 0, ty: 0}; schedule(); }

  let drag = null;
  canvas.addEventListener("pointerdown", e => {
    drag = {x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false};
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", e => {
    const r = canvas.getBoundingClientRect();
    if (drag) {
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      view.tx = drag.tx + dx; view.ty = drag.ty + dy;
      schedule();
    }
    if (tip) {
      const p = drag && drag.moved ? null : nearest(e.clientX - r.left, e.clientY - r.top, 8);
      if (p) {
        tip.textContent = describe(p);
        tip.style.left = (e.clientX - r.left + 12) + "px";
        tip.style.top = (e.clientY - r.top + 12) + "px";
        tip.style.display = "block";
        canvas.style.cursor = "pointer";
      } else { tip.style.display = "none"; canvas.style.cursor = ""; }
    }
  });
  canvas.addEventListener("pointerup", e => {
    const r = canvas.getBoundingClientRect();
    if (drag && !drag.moved) open(nearest(e.clientX - r.left, e.clientY - r.top, 8));
    drag = null;
  });
  canvas.addEventListener("pointerleave", () => { if (tip) tip.style.display = "none"; });
  canvas.addEventListener("wheel", e => {
    e.preventDefault();
    const r = canvas.getBoundingClientRect();
    zoom(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, {passive: false});
  canvas.addEventListener("keydown", e => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const step = 40;
    let done = true;
    if (e.key === "+" || e.key === "=") zoom(1.4, size / 2, size / 2);
    else if (e.key === "-" || e.key === "_") zoom(1 / 1.4, size / 2, size / 2);
    else if (e.key === "0") reset();
    else if (e.key === "ArrowLeft") { view.tx += step; schedule(); }
    else if (e.key === "ArrowRight") { view.tx -= step; schedule(); }
    else if (e.key === "ArrowUp") { view.ty += step; schedule(); }
    else if (e.key === "ArrowDown") { view.ty -= step; schedule(); }
    else if (e.key === "Enter") open(nearest(size / 2, size / 2, size));
    else done = false;
    if (done) { e.preventDefault(); e.stopPropagation(); }  // not the page's own arrow keys
  });
  document.querySelectorAll("[data-zoom]").forEach(b => b.addEventListener("click", () => {
    const what = b.dataset.zoom;
    if (what === "in") zoom(1.4, size / 2, size / 2);
    else if (what === "out") zoom(1 / 1.4, size / 2, size / 2);
    else reset();
  }));

  const rows = document.querySelectorAll(".codes-points li");
  const count = document.getElementById("codes-shown");
  function refilter() {
    let k = 0;
    points.forEach((p, i) => {
      const on = shown(p);
      if (on) k += 1;
      if (rows[i]) rows[i].hidden = !on;
    });
    if (count) count.textContent = k + " of " + points.length + " points shown";
    schedule();
  }
  const byId = id => document.getElementById(id);
  if (byId("codes-class")) byId("codes-class").addEventListener("change", e => { clsFilter = e.target.value; refilter(); });
  if (byId("codes-correct")) byId("codes-correct").addEventListener("change", e => { okFilter = e.target.value; refilter(); });
  if (byId("codes-thumbs")) byId("codes-thumbs").addEventListener("change", e => { thumbs = e.target.checked; schedule(); });
  if (byId("codes-layout")) byId("codes-layout").addEventListener("change", e => { layout = e.target.value; schedule(); });
  // The predictions of the data (for right/wrong) may still be computing: poll their job, then read them
  // from api/codes and update the points in place (no reload: the view stays where it is).
  const predJob = document.querySelector("[data-codes-job]");
  function pollPredictions() {
    fetch(rel + "api/jobs/" + encodeURIComponent(predJob.dataset.codesJob), {headers: {"Accept": "application/json"}})
      .then(r => r.json())
      .then(job => {
        const bar = predJob.querySelector("progress"), msg = predJob.querySelector(".job-message");
        if (bar) bar.value = job.fraction;
        if (msg) msg.textContent = job.message || job.state;
        if (job.state === "failed") { if (msg) msg.textContent = "failed: " + job.error; return; }
        if (job.state !== "done") { setTimeout(pollPredictions, 500); return; }
        return fetch(rel + "api/codes", {headers: {"Accept": "application/json"}}).then(r => r.json()).then(page => {
          const byId = {};
          page.points.forEach(p => { byId[p.id] = p; });
          points.forEach(p => { const q = byId[p.id]; if (q) { p.pred = q.pred; p.correct = q.correct; } });
          Object.assign(data.predicted, page.predicted_names || {});
          const select = document.getElementById("codes-correct");
          if (select) select.disabled = false;
          predJob.remove();
          refilter();
        });
      })
      .catch(() => setTimeout(pollPredictions, 1500));
  }
  if (predJob) pollPredictions();
  window.addEventListener("resize", fit);
  fit();
})();
