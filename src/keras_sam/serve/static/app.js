// The page of `keras-sam serve`: upload, click, see the mask.
// Masks come from the server as uncompressed COCO RLE (column-major runs
// starting with zeros); everything is drawn on canvases at the picture's
// own size and scaled by CSS, so prompt coordinates are picture pixels.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK_COLOUR = [255, 40, 160];
const COLOURS = [[30, 144, 255], [255, 99, 71], [50, 205, 50],
  [255, 215, 0], [186, 85, 211], [0, 206, 209], [255, 140, 0],
  [220, 20, 60], [124, 252, 0], [70, 130, 180]];

const state = {
  imageId: null, fileName: null, width: 0, height: 0,
  actions: [],        // {type: "point", x, y, label} or {type: "box", box}
  candidates: [],     // [{rle, score}] of the last prediction
  chosen: 0,
  everything: [],     // COCO annotations of "segment everything"
  seq: 0,             // latest prediction request; older answers are dropped
  answered: 0,        // the request whose answer is shown
  hoverBusy: false, hoverNext: null,
  clickStart: null,
};
const timings = [];   // click-to-mask milliseconds, for benchmarks

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

async function errorText(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return `HTTP ${response.status}`;
}

async function api(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw new Error(await errorText(response));
  return response.json();
}

// -- pictures ----------------------------------------------------------------

function upload(file) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("file", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/images");
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        showProgress(e.loaded, e.total);
        setStatus(`Uploading ${Math.round(100 * e.loaded / e.total)}%`);
      }
    };
    xhr.upload.onload = () => {
      showProgress(null);
      setStatus("Encoding the picture…");
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (e) { /* below */ }
      if (xhr.status === 200 && body) resolve(body);
      else reject(new Error((body && body.error) || `HTTP ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("the server cannot be reached"));
    xhr.send(form);
  });
}

function showProgress(done, total) {
  const bar = $("progress");
  bar.hidden = false;
  if (done === null) bar.removeAttribute("value");
  else { bar.max = total || 1; bar.value = done; }
}

function hideProgress() { $("progress").hidden = true; }

async function openPicture(file) {
  if (state.imageId) {
    api("DELETE", `/api/images/${state.imageId}`).catch(() => {});
    state.imageId = null;
  }
  setButtons(false);
  showProgress(null);
  setStatus("Uploading…");
  const started = performance.now();
  let bitmap, info;
  try {
    [bitmap, info] = await Promise.all([createImageBitmap(file),
      upload(file)]);
  } catch (e) {
    hideProgress();
    setStatus(`Cannot open ${file.name}: ${e.message}`, true);
    return;
  }
  hideProgress();
  Object.assign(state, {
    imageId: info.image_id, fileName: file.name, width: info.width,
    height: info.height, actions: [], candidates: [], chosen: 0,
    everything: [],
  });
  for (const canvas of document.querySelectorAll("#stage canvas")) {
    canvas.width = info.width;
    canvas.height = info.height;
  }
  $("picture").getContext("2d").drawImage(bitmap, 0, 0, info.width,
    info.height);
  $("stage").hidden = false;
  renderAll();
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  setStatus(`Ready (${info.width}x${info.height}, encoded in ${seconds} s):` +
    " click on an object.");
  $("everything").disabled = false;
}

async function openExample(example) {
  setStatus(`Loading ${example.name}…`);
  const response = await fetch(example.url);
  if (!response.ok) {
    setStatus(await errorText(response), true);
    return;
  }
  const blob = await response.blob();
  await openPicture(new File([blob], `${example.name}.png`,
    { type: "image/png" }));
}

// -- prompts -----------------------------------------------------------------

function prompts(extraPoint) {
  const points = [], labels = [];
  let box = null;
  for (const a of state.actions) {
    if (a.type === "point") { points.push([a.x, a.y]); labels.push(a.label); }
    else box = a.box;
  }
  if (extraPoint) { points.push(extraPoint); labels.push(1); }
  return { points, labels, box,
    multimask: points.length === 1 && box === null };
}

async function predict() {
  const seq = ++state.seq;
  clearLayer("hover-layer");
  if (!state.actions.length) {
    state.candidates = [];
    state.answered = seq;
    renderAll();
    return;
  }
  const body = prompts(null);
  let result;
  try {
    result = await api("POST", `/api/images/${state.imageId}/predict`, body);
  } catch (e) {
    if (seq === state.seq) {
      state.answered = seq;
      setStatus(e.message, true);
    }
    return;
  }
  if (seq !== state.seq) return;
  state.answered = seq;
  state.candidates = result.masks;
  state.chosen = bestIndex(result.masks);
  renderAll();
  if (state.clickStart !== null) {
    timings.push(performance.now() - state.clickStart);
    state.clickStart = null;
  }
  setStatus(`${state.actions.length} prompt(s); mask score ` +
    `${state.candidates[state.chosen].score.toFixed(3)}`);
}

function bestIndex(masks) {
  let best = 0;
  masks.forEach((m, i) => { if (m.score > masks[best].score) best = i; });
  return best;
}

async function hover(point) {
  if (state.hoverBusy) { state.hoverNext = point; return; }
  state.hoverBusy = true;
  const seq = state.seq;
  try {
    const body = { ...prompts(point), remember: false };
    const result = await api("POST",
      `/api/images/${state.imageId}/predict`, body);
    if (seq === state.seq && state.hoverNext === null) {
      const m = result.masks[bestIndex(result.masks)];
      drawMasks("hover-layer", [m.rle], [[255, 255, 255]], 90);
    }
  } catch (e) { /* a hover outside the picture: nothing to show */ }
  state.hoverBusy = false;
  const next = state.hoverNext;
  state.hoverNext = null;
  if (next && $("hover").checked && state.imageId) hover(next);
}

// -- drawing -----------------------------------------------------------------

function clearLayer(id) {
  const c = $(id);
  c.getContext("2d").clearRect(0, 0, c.width, c.height);
}

function rleToAlpha(rle, width, height) {
  // column-major runs, zeros first (COCO's uncompressed RLE)
  const out = new Uint8Array(width * height);
  let pos = 0;
  rle.counts.forEach((count, i) => {
    if (i % 2 === 1) {
      for (let k = pos; k < pos + count; k++) {
        const x = Math.floor(k / height), y = k - x * height;
        out[y * width + x] = 1;
      }
    }
    pos += count;
  });
  return out;
}

function drawMasks(id, rles, colours, alpha) {
  const c = $(id), ctx = c.getContext("2d");
  const image = ctx.createImageData(c.width, c.height);
  rles.forEach((rle, i) => {
    const on = rleToAlpha(rle, c.width, c.height);
    const [r, g, b] = colours[i % colours.length];
    for (let p = 0; p < on.length; p++) {
      if (on[p]) {
        image.data.set([r, g, b, alpha], 4 * p);
      }
    }
  });
  ctx.putImageData(image, 0, 0);
}

function drawPrompts(dragBox) {
  const c = $("prompt-layer"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  const scale = c.width / c.getBoundingClientRect().width || 1;
  ctx.lineWidth = 2 * scale;
  const boxes = state.actions.filter((a) => a.type === "box");
  const shown = dragBox ? [dragBox] : boxes.slice(-1).map((a) => a.box);
  for (const [x1, y1, x2, y2] of shown) {
    ctx.strokeStyle = "#ffd400";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
  }
  for (const a of state.actions) {
    if (a.type !== "point") continue;
    ctx.beginPath();
    ctx.arc(a.x, a.y, 5 * scale, 0, 2 * Math.PI);
    ctx.fillStyle = a.label === 1 ? "#10b010" : "#e02020";
    ctx.fill();
    ctx.strokeStyle = "white";
    ctx.stroke();
  }
}

function renderAll() {
  if (state.candidates.length) {
    drawMasks("mask-layer", [state.candidates[state.chosen].rle],
      [MASK_COLOUR], 170);
  } else {
    clearLayer("mask-layer");
  }
  if (state.everything.length) {
    drawMasks("everything-layer",
      state.everything.map((a) => a.segmentation), COLOURS, 110);
  } else {
    clearLayer("everything-layer");
  }
  drawPrompts(null);
  const box = $("candidates");
  box.replaceChildren();
  if (state.candidates.length > 1) {
    state.candidates.forEach((m, i) => {
      const b = document.createElement("button");
      b.textContent = `Mask ${i + 1}: ${m.score.toFixed(3)}`;
      b.className = i === state.chosen ? "chosen" : "";
      b.addEventListener("click", () => { state.chosen = i; renderAll(); });
      box.append(b);
    });
  }
  $("counts").textContent = state.everything.length
    ? `Segment everything: ${state.everything.length} masks` : "";
  setButtons(true);
}

function setButtons(on) {
  const has = on && state.imageId !== null;
  $("undo").disabled = !has || !state.actions.length;
  $("clear").disabled = !has || !(state.actions.length ||
    state.everything.length);
  $("download-png").disabled = !has || !state.candidates.length;
  $("download-coco").disabled = !has || !(state.candidates.length ||
    state.everything.length);
  $("everything").disabled = !has;
}

// -- mouse -------------------------------------------------------------------

function picturePoint(event) {
  const rect = $("prompt-layer").getBoundingClientRect();
  const x = (event.clientX - rect.left) / rect.width * state.width;
  const y = (event.clientY - rect.top) / rect.height * state.height;
  return [Math.min(Math.max(x, 0), state.width - 1),
    Math.min(Math.max(y, 0), state.height - 1)];
}

let press = null;  // {start, client, background, dragging}

function onDown(event) {
  if (!state.imageId) return;
  event.preventDefault();
  press = { start: picturePoint(event), client: [event.clientX, event.clientY],
    background: event.button === 2 || event.shiftKey, dragging: false };
}

function onMove(event) {
  if (!state.imageId) return;
  if (press) {
    const moved = Math.hypot(event.clientX - press.client[0],
      event.clientY - press.client[1]);
    if (moved > 5) press.dragging = true;
    if (press.dragging) drawPrompts(boxOf(press.start, picturePoint(event)));
    return;
  }
  if ($("hover").checked) hover(picturePoint(event));
}

function boxOf(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]),
    Math.max(a[0], b[0]), Math.max(a[1], b[1])];
}

function onUp(event) {
  if (!press || !state.imageId) return;
  const p = press;
  press = null;
  state.clickStart = performance.now();
  if (p.dragging) {
    state.actions.push({ type: "box", box: boxOf(p.start,
      picturePoint(event)) });
  } else {
    const [x, y] = p.start;
    state.actions.push({ type: "point", x, y, label: p.background ? 0 : 1 });
  }
  drawPrompts(null);
  predict();
}

// -- segment everything and downloads ----------------------------------------

async function everything() {
  const id = state.imageId;
  $("everything").disabled = true;
  showProgress(0, 1);
  setStatus("Segment everything: starting…");
  const poll = setInterval(async () => {
    try {
      const p = await api("GET", `/api/images/${id}/progress`);
      if (p.running && p.total) {
        showProgress(p.done, p.total);
        setStatus(`Segment everything: point batch ${p.done}/${p.total}`);
      }
    } catch (e) { /* the answer below says what went wrong */ }
  }, 250);
  try {
    const doc = await api("POST", `/api/images/${id}/everything`, {});
    if (id === state.imageId) {
      state.everything = doc.annotations;
      setStatus(`Segment everything: ${doc.annotations.length} masks.`);
    }
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    clearInterval(poll);
    hideProgress();
    renderAll();
  }
}

function save(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 1000);
}

function stem() {
  return (state.fileName || "image").replace(/\.[^.]*$/, "");
}

function downloadPng() {
  const m = state.candidates[state.chosen];
  const c = document.createElement("canvas");
  c.width = state.width;
  c.height = state.height;
  const ctx = c.getContext("2d");
  const image = ctx.createImageData(c.width, c.height);
  const on = rleToAlpha(m.rle, c.width, c.height);
  for (let p = 0; p < on.length; p++) {
    const v = on[p] ? 255 : 0;
    image.data.set([v, v, v, 255], 4 * p);
  }
  ctx.putImageData(image, 0, 0);
  c.toBlob((blob) => save(blob, `${stem()}.mask.png`), "image/png");
}

function annotationOf(m) {
  const on = rleToAlpha(m.rle, state.width, state.height);
  let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1, area = 0;
  for (let p = 0; p < on.length; p++) {
    if (!on[p]) continue;
    const y = Math.floor(p / state.width), x = p - y * state.width;
    area++;
    x0 = Math.min(x0, x); x1 = Math.max(x1, x);
    y0 = Math.min(y0, y); y1 = Math.max(y1, y);
  }
  const bbox = area ? [x0, y0, x1 - x0, y1 - y0] : [0, 0, 0, 0];
  const { points, labels, box } = prompts(null);
  return { segmentation: m.rle, area, bbox, predicted_iou: m.score,
    point_coords: points, point_labels: labels, box };
}

function downloadCoco() {
  const annotations = state.everything.map((a) => ({ ...a }));
  if (state.candidates.length) {
    annotations.push(annotationOf(state.candidates[state.chosen]));
  }
  annotations.forEach((a, i) => {
    Object.assign(a, { id: i, image_id: 0, category_id: 1 });
  });
  const doc = {
    images: [{ id: 0, file_name: state.fileName, width: state.width,
      height: state.height }],
    categories: [{ id: 1, name: "object" }],
    annotations,
  };
  save(new Blob([JSON.stringify(doc)], { type: "application/json" }),
    `${stem()}.coco.json`);
}

// -- wiring ------------------------------------------------------------------

async function init() {
  const stage = $("prompt-layer");
  stage.addEventListener("mousedown", onDown);
  stage.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  stage.addEventListener("mouseleave", () => {
    state.hoverNext = null;
    clearLayer("hover-layer");
  });
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  $("file").addEventListener("change", (e) => {
    if (e.target.files.length) openPicture(e.target.files[0]);
    e.target.value = "";
  });
  $("undo").addEventListener("click", () => {
    state.actions.pop();
    drawPrompts(null);
    predict();
  });
  $("clear").addEventListener("click", () => {
    state.actions = [];
    state.everything = [];
    state.answered = ++state.seq;
    state.candidates = [];
    clearLayer("hover-layer");
    renderAll();
  });
  $("hover").addEventListener("change", () => clearLayer("hover-layer"));
  $("everything").addEventListener("click", everything);
  $("download-png").addEventListener("click", downloadPng);
  $("download-coco").addEventListener("click", downloadCoco);
  try {
    const { examples } = await api("GET", "/api/examples");
    for (const example of examples) {
      const b = document.createElement("button");
      b.textContent = example.name;
      b.addEventListener("click", () => openExample(example));
      $("examples").append(b);
    }
  } catch (e) {
    setStatus(e.message, true);
  }
}

window.kerasSam = {
  state, timings,
  // the displayed mask, for tests: a PNG data URL of the mask layer
  maskDataURL: () => $("mask-layer").toDataURL("image/png"),
  everythingDataURL: () => $("everything-layer").toDataURL("image/png"),
};
init();
