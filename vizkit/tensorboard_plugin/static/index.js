// vizkit's tab in TensorBoard: draw a digit, pick a test image or drop a photo, and watch every layer of a
// run's own model respond. TensorBoard loads this module in an iframe whose <base> is this plugin's route,
// so './runs' is /data/plugin/vizkit/runs on the same server: nothing is fetched from anywhere else.

const STYLE = `
  body { font: 14px/1.4 Roboto, system-ui, sans-serif; margin: 0; color: #212121; background: #fafafa; }
  header { display: flex; gap: 12px; align-items: center; padding: 10px 16px; background: #fff;
           border-bottom: 1px solid #e0e0e0; position: sticky; top: 0; z-index: 1; flex-wrap: wrap; }
  header h1 { font-size: 16px; margin: 0 8px 0 0; }
  #status { color: #555; }
  #status.error { color: #b71c1c; font-weight: 500; }
  main { display: flex; gap: 16px; padding: 16px; flex-wrap: wrap; align-items: flex-start; }
  .panel { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: 12px; }
  .panel h2 { font-size: 14px; margin: 0 0 8px; }
  .tabs { display: flex; gap: 4px; margin-bottom: 8px; }
  .tabs button.active { background: #f57c00; color: #fff; border-color: #f57c00; }
  button, select, input { font: inherit; }
  button { padding: 4px 10px; border: 1px solid #bdbdbd; border-radius: 4px; background: #fff; cursor: pointer; }
  #pad { background: #000; touch-action: none; cursor: crosshair; border-radius: 4px; display: block; }
  .row { display: flex; gap: 8px; align-items: center; margin-top: 8px; flex-wrap: wrap; }
  #drop { width: 280px; height: 150px; border: 2px dashed #9e9e9e; border-radius: 6px; display: flex;
          align-items: center; justify-content: center; text-align: center; color: #616161; }
  #drop.over { border-color: #f57c00; background: #fff3e0; }
  canvas.pixels { image-rendering: pixelated; border: 1px solid #e0e0e0; }
  #prediction { font-size: 40px; font-weight: 500; line-height: 1; }
  #prediction small { font-size: 16px; color: #555; font-weight: 400; }
  .probs { display: grid; grid-template-columns: auto 160px auto; gap: 2px 8px; align-items: center; margin-top: 8px; }
  .probs .bar { height: 12px; background: #90caf9; }
  .probs .bar.best { background: #f57c00; }
  .probs .pct { font-variant-numeric: tabular-nums; color: #555; font-size: 12px; }
  #layers { padding: 0 16px 24px; }
  .layer { background: #fff; border: 1px solid #e0e0e0; border-radius: 6px; padding: 10px 12px; margin-bottom: 12px; }
  .layer h3 { font-size: 14px; margin: 0 0 6px; font-weight: 500; }
  .layer h3 .meta { color: #616161; font-weight: 400; }
  .scale { display: flex; align-items: center; gap: 6px; font-size: 12px; color: #555; margin-bottom: 6px; }
  .hint { color: #757575; font-size: 12px; }
  .layer > canvas { cursor: pointer; }
  /* the card stays in view beside whatever layer the person scrolled to */
  #card { position: fixed; right: 12px; top: 56px; width: 470px; max-height: calc(100vh - 72px); overflow: auto;
          z-index: 2; box-shadow: 0 2px 8px rgba(0, 0, 0, 0.2); box-sizing: border-box; }
  body.with-card main, body.with-card #layers { margin-right: 490px; }
  #card h2 { display: flex; justify-content: space-between; align-items: center; }
  #card h3 { font-size: 13px; margin: 10px 0 4px; font-weight: 500; }
  #card figure { margin: 0; font-size: 12px; color: #555; }
  #card .row figure { width: 196px; }
  #card-map { cursor: crosshair; touch-action: none; }
  #card-kernels { display: flex; flex-wrap: wrap; gap: 4px; font-size: 10px; color: #555; }
  #card-kernels figure { text-align: center; font-size: 10px; }
  #card-sums { font-size: 12px; font-variant-numeric: tabular-nums; }
  #card-sums table.grid { border-collapse: collapse; display: inline-table; vertical-align: middle; margin: 2px; }
  #card-sums table.grid td { border: 1px solid #e0e0e0; padding: 0 3px; text-align: right; font-size: 10px; }
  #card-sums .term { margin: 4px 0; white-space: nowrap; }
  #card-sums .then { margin: 4px 0; }
  #card-sums .total { font-weight: 500; }
  #card-sums .check { color: #2e7d32; }
  #card-sums .off { color: #b71c1c; }
  #card-examples { display: flex; flex-wrap: wrap; gap: 6px; }
  #card-examples figure { text-align: center; font-size: 10px; }
  #epoch-box input { vertical-align: middle; width: 180px; }
`;

const RUNS_EVERY_MS = 30000;  // TensorBoard's own reload period

const state = {run: null, model: null, lut: null, source: 'test', index: 0, photo: null, target: null,
               busy: false, again: false, strokes: [], penWidth: 18, listings: 0, unreachable: false,
               epoch: null,  // null: the run's best.pth; else an epoch whose weights the run keeps (the slider)
               card: null, cardBusy: false, cardAgain: false, examplesAsked: 0};  // a channel's card

export async function render() {
  const style = document.createElement('style');
  style.textContent = STYLE;
  document.head.appendChild(style);
  document.body.innerHTML = `
    <header>
      <h1>vizkit</h1>
      <label>Run <select id="run"></select></label>
      <label id="epoch-box" hidden>Epoch <input id="epoch" type="range" min="0" max="0" step="1">
        <span id="epoch-label"></span></label>
      <span id="status">Looking for runs…</span>
    </header>
    <main>
      <section class="panel" id="input-panel">
        <div class="tabs" role="tablist">
          <button data-source="draw">Draw</button>
          <button data-source="test">Test image</button>
          <button data-source="photo">Photo</button>
        </div>
        <div data-pane="draw">
          <canvas id="pad" width="280" height="280" aria-label="draw here"></canvas>
          <div class="row">
            <button id="clear">Clear</button><button id="undo">Undo</button>
            <label>Pen <input id="pen" type="range" min="6" max="40" value="18"></label>
          </div>
          <div class="hint">Draw with the mouse or a finger; the model answers as you draw.</div>
        </div>
        <div data-pane="test" hidden>
          <div class="row">
            <label>Test image <input id="index" type="number" min="0" value="0" style="width: 7em"></label>
            <button id="show">Show</button><button id="random">Random</button>
          </div>
          <div class="hint" id="test-range"></div>
        </div>
        <div data-pane="photo" hidden>
          <div id="drop">Drop a photo here<br>or <input id="file" type="file" accept="image/*"></div>
          <div class="hint" id="photo-hint">Prepared as <code>vizkit.predict</code> prepares photos.</div>
        </div>
        <h2 style="margin-top: 12px">What the model saw <span class="hint" id="seen-size"></span></h2>
        <canvas id="seen" class="pixels" width="140" height="140"></canvas>
      </section>
      <section class="panel" id="result-panel" style="min-width: 300px">
        <h2>Prediction</h2>
        <div id="prediction">–</div>
        <div class="probs" id="probs"></div>
        <h2 style="margin-top: 12px">Grad-CAM <span class="hint" id="cam-layer"></span></h2>
        <label class="hint">for <select id="target"><option value="">the predicted class</option></select></label>
        <div><canvas id="cam" class="pixels" width="140" height="140"></canvas></div>
        <div class="hint" id="timing"></div>
      </section>
      <section class="panel" id="card" hidden>
        <h2><span id="card-title"></span><button id="card-close" aria-label="close the card">×</button></h2>
        <div class="row">
          <figure><canvas id="card-map" class="pixels" width="196" height="196"></canvas>
            <figcaption id="card-map-label">move the pointer over the map</figcaption></figure>
          <figure><canvas id="card-input" class="pixels" width="196" height="196"></canvas>
            <figcaption id="card-input-label">what that unit sees of the input</figcaption></figure>
        </div>
        <h3>Kernels <span class="hint" id="card-kernel-note"></span></h3>
        <div id="card-kernels"></div>
        <h3>The arithmetic at the pointer</h3>
        <div id="card-sums"></div>
        <h3>Top test images <span class="hint" id="card-examples-note"></span></h3>
        <div id="card-examples"></div>
      </section>
    </main>
    <section id="layers"></section>`;
  wireInputs();
  wireCard();
  const select = byId('run');
  select.addEventListener('change', () => openRun(select.value));
  // a run trained after this page opened shows up: on TensorBoard's own reload period, and when the person
  // reaches for the list (the answer may come while it is open)
  for (const event of ['pointerdown', 'focus']) select.addEventListener(event, () => refreshRuns());
  setInterval(refreshRuns, RUNS_EVERY_MS);
  await refreshRuns();
}

async function refreshRuns() {
  const asked = ++state.listings;
  const listing = await getJSON('./runs');
  if (asked !== state.listings) return;  // a newer listing is on its way: it decides, whatever arrives first
  if (!listing.runs) {
    state.unreachable = true;
    return setStatus(listing.reason, true);
  }
  const recovered = state.unreachable;  // the status line still says TensorBoard did not answer
  state.unreachable = false;
  const select = byId('run');
  const label = ({run, checkpoint}) => checkpoint ? run : `${run} (no checkpoint)`;
  const before = new Map([...select.options].map((o) => [o.value, o.text]));
  if (listing.runs.map(label).join('\n') !== [...before.values()].join('\n')) {
    select.replaceChildren(...listing.runs.map((r) => new Option(label(r), r.run)));
    select.value = state.run ?? '';
  }
  if (!listing.runs.length) {
    return setStatus(`No runs under ${listing.logdir}: train one with python -m vizkit.train`, true);
  }
  const opened = listing.runs.find((r) => r.run === state.run);
  if (opened) {  // open it again if its first checkpoint has been written since, or TensorBoard is back
    const firstCheckpoint = opened.checkpoint && before.get(opened.run) !== opened.run;
    return firstCheckpoint || recovered ? openRun(opened.run) : refreshEpochs();
  }
  const withCheckpoint = listing.runs.filter((r) => r.checkpoint);
  select.value = (withCheckpoint.length ? withCheckpoint : listing.runs).at(-1).run;  // the newest run
  return openRun(select.value);
}

function byId(id) { return document.getElementById(id); }

async function getJSON(url, body) {
  const init = body === undefined ? {} : {method: 'POST', headers: {'Content-Type': 'application/json'},
                                          body: JSON.stringify(body)};
  let response;
  try {
    response = await fetch(url, init);
  } catch (e) {
    return {ok: false, reason: `TensorBoard did not answer (${e.message}); is it still running?`};
  }
  try {
    return await response.json();
  } catch (e) {
    return {ok: false, reason: `the server answered ${response.status} ${response.statusText}`};
  }
}

function setStatus(text, error = false) {
  const status = byId('status');
  status.textContent = text;
  status.classList.toggle('error', error);
}

async function openRun(run) {
  state.run = run;
  state.model = null;
  state.epoch = null;
  closeCard();
  clearResult();
  setStatus(`Opening ${run}…`);
  const model = await getJSON('./model?' + new URLSearchParams({run}));
  if (state.run !== run) return;
  if (!model.ok) return setStatus(model.reason, true);
  state.model = model;
  state.lut = hexTable(model.viridis);
  window.vizkitViridis = model.viridis;  // for the browser tests' pixel checks
  const target = byId('target');
  target.replaceChildren(new Option('the predicted class', ''));
  model.classes.forEach((name, k) => target.appendChild(new Option(`class ${name}`, String(k))));
  state.target = null;
  openRunStatus();
  byId('test-range').textContent = model.test_images || 'no test images known for this model';
  const [channels, height, width] = model.input_shape;
  byId('photo-hint').textContent = 'Prepared as vizkit.predict prepares photos: ' + (model.digits ?
    'light ink on black, the digit 20 px, centred.' : `fitted to ${width}×${height}${channels === 1 ? ', grey' : ''}.`);
  if (state.source === 'test' && !model.test_images) state.source = 'draw';
  selectSource(state.source);
  showEpochs(model);
  schedule();
}

// The epoch slider: the run's kept weights (epochs/epoch-N.pth), starting at best.pth's epoch.
function showEpochs(model) {
  const box = byId('epoch-box'), slider = byId('epoch');
  box.hidden = !model.epochs || model.epochs.length < 2;
  if (box.hidden) return;
  slider.max = String(model.epochs.length - 1);
  const best = model.epochs.indexOf(model.epoch);
  slider.value = String(best >= 0 ? best : model.epochs.length - 1);
  labelEpoch();
}

// A run still training keeps an epoch more, and may have a new best, since the page opened it.
async function refreshEpochs() {
  const run = state.run;
  if (!state.model) return;
  const model = await getJSON('./model?' + new URLSearchParams({run}));
  if (!model.ok || run !== state.run || !state.model) return;
  if (String(model.epochs) === String(state.model.epochs) && model.epoch === state.model.epoch) return;
  Object.assign(state.model, {epochs: model.epochs, epoch: model.epoch, checkpoint: model.checkpoint});
  showEpochs(state.model);
  if (state.epoch !== null && model.epochs.includes(state.epoch)) {  // the slider's epoch stays chosen
    byId('epoch').value = String(model.epochs.indexOf(state.epoch));
    labelEpoch();
  }
  openRunStatus();
}

function labelEpoch() {
  const epochs = state.model.epochs, shown = epochs[Number(byId('epoch').value)];
  const best = shown === state.model.epoch ? ' (best)' : '';
  byId('epoch-label').textContent = `${shown} of ${epochs.at(-1)}${best}`;
  return shown;
}

function hexTable(hex) {
  const table = new Uint8Array(hex.length / 2);
  for (let i = 0; i < table.length; i++) table[i] = parseInt(hex.substr(2 * i, 2), 16);
  return table;  // 256 x RGB
}

// --- inputs ---------------------------------------------------------------------------------------------

function wireInputs() {
  for (const button of document.querySelectorAll('.tabs button')) {
    button.addEventListener('click', () => { selectSource(button.dataset.source); schedule(); });
  }
  const pad = byId('pad');
  const ctx = pad.getContext('2d');
  clearPad(ctx);
  let stroke = null;
  const point = (e) => {
    const box = pad.getBoundingClientRect();
    return [(e.clientX - box.left) * pad.width / box.width, (e.clientY - box.top) * pad.height / box.height];
  };
  pad.addEventListener('pointerdown', (e) => {
    pad.setPointerCapture(e.pointerId);
    stroke = {width: state.penWidth, points: [point(e)]};
    state.strokes.push(stroke);
    state.source = 'draw';
    drawStrokes(ctx);
    schedule();
  });
  pad.addEventListener('pointermove', (e) => {
    if (!stroke) return;
    stroke.points.push(point(e));
    drawStrokes(ctx);
    schedule();  // the model answers while the person draws; at most one request is in flight
  });
  const end = () => { if (stroke) { stroke = null; schedule(); } };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);
  byId('clear').addEventListener('click', () => { state.strokes = []; drawStrokes(ctx); schedule(); });
  byId('undo').addEventListener('click', () => { state.strokes.pop(); drawStrokes(ctx); schedule(); });
  byId('pen').addEventListener('input', (e) => { state.penWidth = Number(e.target.value); });
  byId('show').addEventListener('click', () => { state.index = Math.trunc(Number(byId('index').value)) || 0; schedule(); });
  byId('index').addEventListener('change', () => { state.index = Math.trunc(Number(byId('index').value)) || 0; schedule(); });
  byId('random').addEventListener('click', () => {
    state.index = Math.floor(Math.random() * 10000);
    byId('index').value = state.index;
    schedule();
  });
  const drop = byId('drop');
  drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    if (e.dataTransfer.files.length) readPhoto(e.dataTransfer.files[0]);
  });
  byId('file').addEventListener('change', (e) => { if (e.target.files.length) readPhoto(e.target.files[0]); });
  byId('target').addEventListener('change', (e) => {
    state.target = e.target.value === '' ? null : Number(e.target.value);
    schedule();
  });
}

function selectSource(source) {
  state.source = source;
  for (const button of document.querySelectorAll('.tabs button')) {
    button.classList.toggle('active', button.dataset.source === source);
  }
  for (const pane of document.querySelectorAll('[data-pane]')) pane.hidden = pane.dataset.pane !== source;
}

function clearPad(ctx) {
  ctx.fillStyle = '#000';
  ctx.fillRect(0, 0, ctx.canvas.width, ctx.canvas.height);
}

function drawStrokes(ctx) {
  clearPad(ctx);
  ctx.strokeStyle = ctx.fillStyle = '#fff';
  ctx.lineCap = ctx.lineJoin = 'round';
  for (const {width, points} of state.strokes) {
    ctx.lineWidth = width;
    ctx.beginPath();
    ctx.moveTo(...points[0]);
    if (points.length === 1) {
      ctx.arc(points[0][0], points[0][1], width / 2, 0, 2 * Math.PI);
      ctx.fill();
      continue;
    }
    for (const p of points.slice(1)) ctx.lineTo(...p);
    ctx.stroke();
  }
}

function readPhoto(file) {
  const reader = new FileReader();
  reader.onload = () => {
    state.photo = reader.result;
    state.source = 'photo';
    byId('drop').firstChild.textContent = `${file.name} `;
    schedule();
  };
  reader.readAsDataURL(file);
}

function request() {
  const body = {run: state.run, source: state.source, target: state.target, epoch: state.epoch};
  if (state.source === 'test') body.index = state.index;
  if (state.source === 'draw') {
    if (!state.strokes.length) return null;
    body.image = byId('pad').toDataURL('image/png');
  }
  if (state.source === 'photo') {
    if (!state.photo) return null;
    body.image = state.photo;
  }
  return body;
}

// One request in flight at a time; whatever changed meanwhile is sent as soon as it answers.
async function schedule() {
  if (!state.model) return;
  if (state.busy) { state.again = true; return; }
  const body = request();
  if (!body) {
    clearResult();
    const what = state.model.digits ? 'a digit' : `one of: ${state.model.classes.join(', ')}`;
    if (state.card) blankCard('Give the model an input: its arithmetic shows here.');
    return setStatusHint(state.source === 'draw' ? `Draw ${what} on the black square.` : 'Drop a photo.');
  }
  state.busy = true;
  const started = performance.now();
  let answer;
  try {
    answer = await getJSON('./update', body);
  } catch (e) {
    answer = {ok: false, reason: `the server did not answer (${e.message})`};
  }
  state.busy = false;
  if (body.run === state.run) show(answer, performance.now() - started);
  if (state.again) { state.again = false; schedule(); }
}

function setStatusHint(text) { byId('timing').textContent = text; }

// Nothing of an earlier input or run stays on screen once it no longer applies.
function clearResult() {
  state.layers = null;
  byId('prediction').textContent = '–';
  byId('probs').replaceChildren();
  byId('layers').replaceChildren();
  byId('cam-layer').textContent = '';
  byId('timing').textContent = '';
  for (const id of ['seen', 'cam']) {
    const canvas = byId(id);
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  }
}

// --- what the model made of it --------------------------------------------------------------------------

function show(answer, roundTrip) {
  if (!answer.ok) {
    clearResult();
    setStatus(answer.reason, true);
    if (state.card) blankCard(answer.reason, true);
    return;
  }
  if (byId('status').classList.contains('error')) openRunStatus();
  const {classes, probs, prediction} = answer;
  const label = answer.label === null || answer.label === undefined ? '' :
                ` <small>label ${escape(classes[answer.label])}</small>`;
  byId('prediction').innerHTML = `${escape(classes[prediction])} <small>${(100 * probs[prediction]).toFixed(1)}%</small>${label}`;
  const rows = [];
  probs.forEach((p, k) => {
    rows.push(`<span>${escape(classes[k])}</span><div class="bar${k === prediction ? ' best' : ''}" ` +
              `style="width: ${Math.max(1, 160 * p)}px"></div><span class="pct">${(100 * p).toFixed(1)}%</span>`);
  });
  byId('probs').innerHTML = rows.join('');
  drawInput(byId('seen'), answer.input);
  byId('seen-size').textContent = `(${answer.input.width}×${answer.input.height})`;
  drawCam(byId('cam'), answer.input, answer.cam);
  byId('cam-layer').textContent = answer.cam ? `on ${answer.cam.layer}, for class ${classes[answer.target]}` :
                                               `(${answer.cam_error || 'this model has no conv step'})`;
  const epoch = state.epoch !== null && answer.epoch ? `epoch ${answer.epoch}'s weights; ` : '';  // the slider's
  byId('timing').textContent = `${epoch}update: ${answer.server_ms.toFixed(1)} ms on the server, ` +
                               `${roundTrip.toFixed(0)} ms round trip`;
  state.layers = answer.layers;
  drawLayers(answer.layers);
  scheduleCard();  // the card follows the input and the epoch too
}

// Which weights answer: best.pth (and its epoch), or the epoch the slider is on.
function openRunStatus() {
  const m = state.model;
  const weights = state.epoch === null ? `${m.checkpoint}${m.epoch ? `, epoch ${m.epoch}` : ''}` :
                                         `epochs/epoch-${state.epoch}.pth`;
  setStatus(`${m.model} from ${state.run}/${weights}; ${m.input_shape.join('×')} inputs, ` +
            `normalised with mean ${m.mean.join(', ')}, std ${m.std.join(', ')}`);
}

function escape(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
}

function bytes(base64) {
  const raw = atob(base64);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

function drawInput(canvas, input) {
  const data = bytes(input.data);  // H x W x C
  const image = new ImageData(input.width, input.height);
  for (let i = 0; i < input.width * input.height; i++) {
    for (let k = 0; k < 3; k++) image.data[4 * i + k] = data[i * input.channels + (input.channels === 3 ? k : 0)];
    image.data[4 * i + 3] = 255;
  }
  blit(canvas, image, 0, 0, canvas.width, canvas.height, true);
}

function jet(v) {  // v in [0, 1] -> [r, g, b], the colour map explain's figure uses for Grad-CAM
  const c = (x) => Math.round(255 * Math.min(1, Math.max(0, x)));
  return [c(1.5 - Math.abs(4 * v - 3)), c(1.5 - Math.abs(4 * v - 2)), c(1.5 - Math.abs(4 * v - 1))];
}

function drawCam(canvas, input, cam) {
  drawInput(canvas, input);
  if (!cam) return;
  const heat = bytes(cam.data);
  const image = new ImageData(input.width, input.height);
  for (let i = 0; i < heat.length; i++) {
    const [r, g, b] = jet(heat[i] / 255);
    image.data.set([r, g, b, 128], 4 * i);  // half transparent over the input
  }
  blit(canvas, image, 0, 0, canvas.width, canvas.height, false);
}

// Draw an ImageData scaled into a canvas with no smoothing: each pixel stays a sharp square.
function blit(canvas, image, x, y, w, h, replace) {
  const scratch = document.createElement('canvas');
  scratch.width = image.width;
  scratch.height = image.height;
  scratch.getContext('2d').putImageData(image, 0, 0);
  const ctx = canvas.getContext('2d');
  ctx.imageSmoothingEnabled = false;
  if (replace) ctx.clearRect(x, y, w, h);
  ctx.drawImage(scratch, x, y, w, h);
}

const GAP = 4, LABEL = 12;

function formatCount(n) {  // 1806336 -> 1.8M
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

function drawLayers(layers) {
  const box = byId('layers');
  const width = Math.max(320, box.clientWidth - 32);
  const cards = layers.map((layer) => {
    let card = box.querySelector(`[data-layer="${CSS.escape(layer.name)}"]`);
    if (!card) {
      card = document.createElement('div');
      card.className = 'layer';
      card.dataset.layer = layer.name;
      card.innerHTML = '<h3></h3><div class="scale"></div><canvas></canvas>';
      const canvas = card.querySelector(':scope > canvas');
      canvas.addEventListener('click', (e) => {  // a tile opens that channel's card
        const at = canvas.layout, box = canvas.getBoundingClientRect();
        if (!at) return;
        const x = (e.clientX - box.left) * canvas.width / box.width, y = (e.clientY - box.top) * canvas.height / box.height;
        const col = Math.floor(x / (at.tw + GAP)), row = Math.floor(y / (at.th + LABEL + GAP));
        const channel = row * at.cols + col;
        if (col < at.cols && channel < at.channels) openCard(card.dataset.layer, channel);
      });
    }
    // what the step is (conv, activation, pool, add, ...), what was called, and which steps feed it
    const blocks = layer.blocks.length ? ` = output of ${layer.blocks.join(', ')}` : '';
    const what = layer.output ? `${layer.output}, one bar per class` : layer.kind;
    const from = layer.inputs.length ? ` · from ${layer.inputs.join(' + ')}` : '';
    // what one unit sees of the input, and what the step costs (units.model_map: the same as --list-layers)
    const place = (state.model && state.model.map && state.model.map[layer.name]) || {};
    const rf = place.receptive_field ? ` · sees ${place.receptive_field}×${place.receptive_field} px` : '';
    const flops = place.flops ? ` · ${formatCount(place.flops)} FLOPs` : '';
    card.querySelector('h3').innerHTML = `${escape(layer.name)} <span class="meta">${escape(layer.op)}` +
      `${escape(blocks)} · ${layer.shape.join('×')} · ${escape(what)}${escape(from)}${escape(rf)}${escape(flops)}</span>`;
    if (layer.data) drawMaps(card, layer, width);
    else drawBars(card, layer, width);
    return card;
  });
  // the cards stay where they are when the steps are the same (each update): a click on a tile is not lost
  // to its card being taken out and put back between the press and the release
  const same = cards.length === box.children.length && cards.every((c, i) => box.children[i] === c);
  if (!same) box.replaceChildren(...cards);
}

function scaleBar(card, layer) {
  const bar = document.createElement('canvas');
  bar.width = 160;
  bar.height = 10;
  const image = new ImageData(160, 1);
  for (let i = 0; i < 160; i++) {
    const v = Math.round(i / 159 * 255);
    image.data.set([state.lut[3 * v], state.lut[3 * v + 1], state.lut[3 * v + 2], 255], 4 * i);
  }
  blit(bar, image, 0, 0, 160, 10, true);
  const fmt = (v) => Math.abs(v) >= 100 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(1) : v.toFixed(2);
  const scale = card.querySelector('.scale');
  scale.replaceChildren(`one colour scale for the layer: ${fmt(layer.min)}`, bar, fmt(layer.max));
}

function drawMaps(card, layer, width) {
  const [channels, h, w] = layer.shape;
  const zoom = Math.max(1, Math.ceil(36 / Math.min(h, w)));  // at least 36 px a tile
  const tw = w * zoom, th = h * zoom;
  const cols = Math.max(1, Math.min(channels, Math.floor((width + GAP) / (tw + GAP))));
  const rows = Math.ceil(channels / cols);
  const canvas = card.querySelector(':scope > canvas');  // not the colour bar's
  canvas.layout = {cols, tw, th, channels};  // for a click on a tile
  canvas.width = cols * (tw + GAP);
  canvas.height = rows * (th + LABEL + GAP);
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.font = '10px sans-serif';
  ctx.fillStyle = '#555';
  const data = bytes(layer.data);
  const lut = state.lut;
  for (let c = 0; c < channels; c++) {
    const image = new ImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      const v = data[c * h * w + i];
      image.data[4 * i] = lut[3 * v];
      image.data[4 * i + 1] = lut[3 * v + 1];
      image.data[4 * i + 2] = lut[3 * v + 2];
      image.data[4 * i + 3] = 255;
    }
    const x = (c % cols) * (tw + GAP), y = Math.floor(c / cols) * (th + LABEL + GAP);
    ctx.fillText(String(c), x, y + 10);
    blit(canvas, image, x, y + LABEL, tw, th, false);
  }
  scaleBar(card, layer);
}

function drawBars(card, layer, width) {
  const values = layer.values;
  const labelled = Boolean(layer.labels);
  const step = Math.max(2, Math.min(labelled ? 40 : 14, Math.floor(width / values.length)));
  const canvas = card.querySelector(':scope > canvas');  // not the colour bar's
  canvas.layout = null;  // units have no card
  canvas.width = Math.max(200, values.length * step);
  canvas.height = labelled ? 130 : 110;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const lo = Math.min(0, layer.min), hi = Math.max(0, layer.max);
  const plot = 90, zero = 4 + plot * hi / ((hi - lo) || 1);
  ctx.strokeStyle = '#9e9e9e';
  ctx.beginPath(); ctx.moveTo(0, zero); ctx.lineTo(canvas.width, zero); ctx.stroke();
  const best = labelled ? values.indexOf(Math.max(...values)) : -1;
  values.forEach((v, i) => {
    const top = 4 + plot * (hi - Math.max(v, 0)) / ((hi - lo) || 1);
    const bottom = 4 + plot * (hi - Math.min(v, 0)) / ((hi - lo) || 1);
    ctx.fillStyle = i === best ? '#f57c00' : v >= 0 ? '#1f77b4' : '#d62728';
    ctx.fillRect(i * step + 1, top, Math.max(1, step - 2), Math.max(1, bottom - top));
    if (labelled) {
      ctx.fillStyle = '#212121';
      ctx.font = '11px sans-serif';
      ctx.fillText(layer.labels[i].slice(0, 6), i * step + 2, 4 + plot + 16);
    }
  });
  const scale = card.querySelector('.scale');
  const shown = layer.shape[0] > values.length ? ` (first ${values.length} of ${layer.shape[0]} units)` : '';
  scale.textContent = `${labelled ? 'logit' : 'value'} per ${labelled ? 'class' : 'unit'}: ` +
                      `from ${layer.min.toFixed(3)} to ${layer.max.toFixed(3)}; blue ≥ 0, red < 0${shown}`;
}

// --- a channel's card: its kernels, the arithmetic under the pointer, its top test images --------------

function wireCard() {
  byId('card-close').addEventListener('click', closeCard);
  const map = byId('card-map');
  map.addEventListener('pointermove', (e) => {  // the unit under the pointer: its arithmetic, its field
    const shown = state.card && state.card.shown;
    if (!shown) return;
    const box = map.getBoundingClientRect();
    const row = Math.min(shown.height - 1, Math.floor((e.clientY - box.top) / box.height * shown.height));
    const col = Math.min(shown.width - 1, Math.floor((e.clientX - box.left) / box.width * shown.width));
    if (row === state.card.row && col === state.card.col) return;
    Object.assign(state.card, {row: Math.max(0, row), col: Math.max(0, col)});
    scheduleCard();
  });
  const slider = byId('epoch');
  slider.addEventListener('input', () => {  // the drawing through epoch N's model, while the slider moves
    state.epoch = labelEpoch();
    openRunStatus();
    schedule();
  });
  slider.addEventListener('change', () => loadExamples());  // the top images once it stops (seconds, once)
}

function openCard(layer, channel) {
  state.card = {layer, channel, row: null, col: null, shown: null};
  byId('card').hidden = false;
  if (!document.body.classList.contains('with-card')) {
    document.body.classList.add('with-card');
    if (state.layers) drawLayers(state.layers);  // narrower now: the tiles wrap beside the card
  }
  byId('card-title').textContent = `${layer} · channel ${channel}`;
  for (const id of ['card-kernels', 'card-sums', 'card-examples']) byId(id).replaceChildren();
  scheduleCard();
  loadExamples();
}

// The card without an input (cleared drawing, a failed update): nothing of an earlier input stays on it.
function blankCard(text, error = false) {
  for (const id of ['card-map', 'card-input']) {
    const canvas = byId(id);
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
  }
  byId('card-sums').innerHTML = error ? `<span class="off">${escape(text)}</span>` : escape(text);
}

function closeCard() {
  state.card = null;
  byId('card').hidden = true;
  if (document.body.classList.contains('with-card')) {
    document.body.classList.remove('with-card');
    if (state.layers) drawLayers(state.layers);
  }
}

// As the page's updates: one request in flight, and whatever changed meanwhile is asked for when it answers.
async function scheduleCard() {
  if (!state.card || !state.model) return;
  if (state.cardBusy) { state.cardAgain = true; return; }
  const body = request();
  if (!body) return blankCard('Give the model an input: its arithmetic shows here.');
  const {layer, channel, row, col} = state.card;
  Object.assign(body, {layer, channel, row, col});
  state.cardBusy = true;
  const answer = await getJSON('./card', body);
  state.cardBusy = false;
  const card = state.card;
  // an answer for what the card is still on; one for an earlier pointer position, epoch or run is dropped
  // (the pointer's newest position was asked for meanwhile, or is now)
  const current = card && body.run === state.run && body.epoch === state.epoch && layer === card.layer &&
                  channel === card.channel && row === card.row && col === card.col;  // null: the server's choice
  if (current) showCard(answer, row === null);
  else if (card) state.cardAgain = true;
  if (state.cardAgain) { state.cardAgain = false; scheduleCard(); }
}

function number(v) {  // 4 decimals, or exponent form for what that would hide
  return v === null || v === undefined ? '?' : Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ?
    v.toExponential(2) : v.toFixed(4);
}

function showCard(answer, placed) {
  window.vizkitCard = answer;  // for the browser tests
  if (!answer.ok) return blankCard(answer.reason, true);
  const {shown, row, col} = answer;
  state.card.shown = shown;
  if (placed) Object.assign(state.card, {row, col});  // the server chose the unit: the channel's strongest
  const from = shown.name !== answer.layer ? ` (${shown.name}'s channel ${answer.channel})` : '';
  const epoch = answer.epoch ? ` · epoch ${answer.epoch}` : '';
  byId('card-title').textContent = `${answer.layer} · channel ${answer.channel}${from}${epoch}`;
  drawUnitMap(byId('card-map'), shown, row, col);
  byId('card-map-label').textContent = `${shown.name}, channel ${answer.channel}: unit (${row}, ${col}); ` +
    `${number(shown.min)} to ${number(shown.max)}`;
  drawInput(byId('card-input'), answer.input);
  if (answer.box) outline(byId('card-input'), answer.box, answer.input);
  byId('card-input-label').textContent = answer.field ?
    `unit (${row}, ${col}) sees ${answer.field.size}×${answer.field.size} px of the input` : 'its field is not known';
  drawKernels(answer.kernels, answer.note);
  byId('card-sums').innerHTML = answer.arithmetic ? sums(answer.arithmetic) : escape(answer.note || '');
}

function drawUnitMap(canvas, shown, row, col) {
  const data = bytes(shown.data), lut = state.lut;
  const image = new ImageData(shown.width, shown.height);
  for (let i = 0; i < data.length; i++) image.data.set([lut[3 * data[i]], lut[3 * data[i] + 1], lut[3 * data[i] + 2], 255], 4 * i);
  blit(canvas, image, 0, 0, canvas.width, canvas.height, true);
  const ctx = canvas.getContext('2d'), sx = canvas.width / shown.width, sy = canvas.height / shown.height;
  ctx.strokeStyle = '#ff5252';
  ctx.lineWidth = 2;
  ctx.strokeRect(col * sx + 1, row * sy + 1, sx - 2, sy - 2);
}

// The receptive field [top, left, bottom, right] (input pixels, may pass the border) as an orange frame.
function outline(canvas, box, input) {
  const ctx = canvas.getContext('2d'), sx = canvas.width / input.width, sy = canvas.height / input.height;
  const [top, left, bottom, right] = box;
  ctx.strokeStyle = '#ff9800';
  ctx.lineWidth = 2;
  ctx.strokeRect(left * sx + 1, top * sy + 1, (right - left + 1) * sx - 2, (bottom - top + 1) * sy - 2);
}

function diverging(v) {  // v in [-1, 1] -> blue (< 0), white (0), red (> 0): ColorBrewer's RdBu ends
  const t = Math.min(1, Math.abs(v)), end = v < 0 ? [33, 102, 172] : [178, 24, 43];
  return end.map((c) => Math.round(255 + t * (c - 255)));
}

function drawKernels(kernels, note) {
  const box = byId('card-kernels');
  if (!kernels) {
    box.replaceChildren();
    byId('card-kernel-note').textContent = note || '';
    return;
  }
  const [kh, kw] = kernels.shape, zoom = Math.max(4, Math.floor(28 / Math.max(kh, kw)));
  byId('card-kernel-note').textContent = `one per input channel, one scale: blue −${number(kernels.scale)}, ` +
    `white 0, red +${number(kernels.scale)}; ` + (kernels.bias === null ? 'no bias' : `bias ${number(kernels.bias)}`);
  const figures = kernels.values.map((values, i) => {
    const canvas = document.createElement('canvas');
    canvas.width = kw * zoom;
    canvas.height = kh * zoom;
    const image = new ImageData(kw, kh);
    values.forEach((v, j) => image.data.set([...diverging(v / (kernels.scale || 1)), 255], 4 * j));
    blit(canvas, image, 0, 0, canvas.width, canvas.height, true);
    const figure = document.createElement('figure');
    figure.append(canvas, document.createElement('br'), String(kernels.inputs[i]));
    return figure;
  });
  box.replaceChildren(...figures);
}

function grid(rows) {  // 3 decimals: a 5 x 5 patch and its kernel side by side fit the card
  const cell = (v) => v === null ? '<td class="hint">pad</td>' :
                      `<td>${Math.abs(v) >= 1e3 ? v.toExponential(1) : v.toFixed(3)}</td>`;
  return `<table class="grid">${rows.map((r) => `<tr>${r.map(cell).join('')}</tr>`).join('')}</table>`;
}

// CNN Explainer's arithmetic: each input channel's patch times the kernel, summed; plus the bias; then what follows.
function sums(a) {
  const shownTerms = a.terms.slice(0, 3);
  const lines = shownTerms.map((t) => `<div class="term"><div class="hint">input channel ${t.channel}: the patch ` +
    `× the kernel, summed</div>${grid(t.patch)} × ${grid(t.kernel)} = ${number(t.total)}</div>`);
  const rest = a.terms.slice(3).reduce((s, t) => s + t.total, 0) + (a.inputs > a.terms.length ? NaN : 0);
  if (a.inputs > shownTerms.length) {
    const more = a.inputs - shownTerms.length;
    lines.push(`<div class="term">… and ${more} more input channel${more > 1 ? 's' : ''}` +
               (Number.isNaN(rest) ? '' : `: ${number(rest)} together`) + '</div>');
  }
  const agree = (v, f) => v !== null && Math.abs(v - f) <= 1e-4 * Math.max(1, Math.abs(f));
  const check = (v, f) => agree(v, f) ? `<span class="check">= the forward pass's ${number(f)}</span>` :
                                        `<span class="off">the forward pass gives ${number(f)}</span>`;
  lines.push(`<div class="total">sum over ${a.inputs} input channel${a.inputs > 1 ? 's' : ''} ${number(a.sum)} ` +
             `+ bias ${number(a.bias)} = ${number(a.value)} ${check(a.value, a.forward)}</div>`);
  for (const t of a.then) {
    const what = `${escape(t.name)} (${escape(t.op)})`;
    if (t.window) {
      lines.push(`<div class="then">then ${what}: the ${t.how} of ${grid(t.window)} = ${number(t.value)} ` +
                 `at (${t.row}, ${t.col}) ${check(t.value, t.forward)}</div>`);
    } else if (t.value === null) {
      lines.push(`<div class="then">then ${what}: ${number(t.forward)} (the forward pass's)</div>`);
    } else {
      lines.push(`<div class="then">then ${what}: ${number(t.value)} ${check(t.value, t.forward)}</div>`);
    }
  }
  if (a.note) lines.push(`<div class="then hint">${escape(a.note)}</div>`);
  return lines.join('');
}

async function loadExamples() {
  if (!state.card || !state.model) return;
  const asked = ++state.examplesAsked;
  const {layer, channel} = state.card;
  const epoch = state.epoch ? ` with epoch ${state.epoch}'s weights` : '';
  byId('card-examples-note').textContent = `working them out over the test set${epoch} (seconds, once a layer)…`;
  const answer = await getJSON('./examples', {run: state.run, epoch: state.epoch, layer, channel});
  if (asked !== state.examplesAsked || !state.card) return;
  window.vizkitExamples = answer;  // for the browser tests
  if (!answer.ok) {
    byId('card-examples-note').textContent = answer.reason;
    return byId('card-examples').replaceChildren();
  }
  const [channels, height, width] = state.model.input_shape;
  const tile = (data, box, caption) => {
    const canvas = document.createElement('canvas');
    canvas.width = canvas.height = 56;
    canvas.className = 'pixels';
    const input = {channels, height, width, data};
    drawInput(canvas, input);
    if (box) outline(canvas, box, input);
    const figure = document.createElement('figure');
    figure.append(canvas, document.createElement('br'), caption);
    return figure;
  };
  const figures = [tile(answer.optimised, null, 'optimised')];
  for (const t of answer.top) figures.push(tile(t.data, t.box, `#${t.index}: ${number(t.value)}`));
  byId('card-examples').replaceChildren(...figures);
  const at = answer.epoch ? `, epoch ${answer.epoch}` : '';
  byId('card-examples-note').textContent = `the ${answer.top.length} that drive ${answer.layer}'s channel ` +
    `${answer.channel} hardest${at}, each framed where its maximum sees; first, the input optimised for it`;
}
