// facestream live dashboard. Plain JavaScript, no build step, no dependencies.
// Everything from the network is put into the page with textContent (never as HTML).
"use strict";

const FEED_MAX = 500;          // events kept in the feed (newest first)
const RENDER_EVERY_MS = 250;   // at most four re-renders a second, however busy the feed
const EMOTION_CLASSES = new Set([
  "happy", "sad", "angry", "fearful", "surprised", "disgusted", "neutral", "contemptuous",
]);
const KNOWN_STREAM_FIELDS = new Set([
  "stream_id", "state", "worker_id", "updated_s", "url", "fps", "decode_fps",
  "last_frame_wall_s", "error", "reason", "labels", "written_state",
]);

const model = {
  streams: {},        // stream id -> status hash fields (strings)
  people: {},         // person key -> {fields, tasks, expires_s, first_seen_s}
  feed: [],           // newest first: {id, event}
  timelines: {},      // "stream\u001ftrack" -> [{t, label}]
  lastId: null,       // [ms, seq] of the newest event received
  personTtlS: 30,
  timelineS: 300,
  clockSkewS: 0,      // server time - browser time
  redisUp: null,
  connection: "connecting",   // connecting | live | reconnecting
  received: 0,
};
let dirty = true;

function now() { return Date.now() / 1000 + model.clockSkewS; }

function parseId(text) {
  const [ms, seq] = String(text).split("-");
  return [Number(ms), Number(seq || 0)];
}
function idAfter(a, b) { return a[0] > b[0] || (a[0] === b[0] && a[1] > b[1]); }

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function ago(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  const s = Math.max(0, seconds);
  if (s < 1) return "now";
  if (s < 90) return `${Math.round(s)} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}
function span(seconds) {
  if (!isFinite(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  return s < 90 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}
function num(text) {
  if (text === undefined || text === null || text === "") return null;
  const value = Number(text);
  return isFinite(value) ? value : null;
}

// -- what a result says, as text -------------------------------------------------------------

function resultText(task, event) {
  if (!event || typeof event !== "object") return "—";
  const r = event.result;
  if (!r) return "(unparsed) " + (event.answer_text || "");
  switch (r.kind) {
    case "emotion": return r.label;
    case "age": return r.range_years ? `${r.years} (${r.range_years[0]}–${r.range_years[1]})` : `${r.years}`;
    case "attributes": return (r.present || []).join(", ") || "none";
    case "action_units": return (r.units || []).map((u) => `AU${u.number} ${u.name}`).join(", ") || "none";
    default: return JSON.stringify(r);
  }
}
function personKeyOf(stream, session, track) { return `${stream}\u001f${session || ""}\u001f${track}`; }

// -- incoming messages ------------------------------------------------------------------------

function onState(data) {
  model.streams = data.streams || {};
  model.people = data.people || {};
  model.personTtlS = data.person_ttl_s || model.personTtlS;
  model.timelineS = data.timeline_s || model.timelineS;
  model.clockSkewS = (data.server_time_s || Date.now() / 1000) - Date.now() / 1000;
  model.redisUp = data.redis_up;
  dirty = true;
}

function onDiff(target, data) {
  for (const [key, value] of Object.entries(data.changed || {})) target[key] = value;
  for (const key of data.removed || []) delete target[key];
  dirty = true;
}

function onFace(message) {
  const id = parseId(message.lastEventId);
  if (model.lastId && !idAfter(id, model.lastId)) return;  // already shown
  model.lastId = id;
  let event;
  try { event = JSON.parse(message.data); } catch (err) { return; }
  model.received += 1;
  model.feed.unshift({ id: message.lastEventId, event });
  if (model.feed.length > FEED_MAX) model.feed.length = FEED_MAX;
  if (event.task === "emotion" && event.result && event.result.label) {
    const key = personKeyOf(event.stream_id, event.session, event.track_id);
    (model.timelines[key] = model.timelines[key] || []).push({
      t: event.frame_wall_time_s, label: event.result.label,
    });
  }
  window.facestreamLastEvent = { id: message.lastEventId, receivedMs: Date.now(), event };
  dirty = true;
}

function renderConnection() {
  const node = document.getElementById("connection");
  let state = model.connection;
  let text = { connecting: "connecting…", live: "live", reconnecting: "reconnecting…" }[state];
  if (state === "live" && model.redisUp === false) {
    state = "error";
    text = "Redis unreachable";
  }
  node.className = `conn conn-${state}`;
  node.dataset.state = state;
  node.textContent = text;
}

function connect() {
  // A fresh page asks for recent history; the browser itself sends Last-Event-ID when it
  // reconnects this EventSource, and the server resumes from the Redis stream there.
  const source = new EventSource("/events");
  source.addEventListener("open", () => { model.connection = "live"; dirty = true; });
  source.addEventListener("error", () => { model.connection = "reconnecting"; dirty = true; });
  source.addEventListener("state", (m) => onState(JSON.parse(m.data)));
  source.addEventListener("streams", (m) => onDiff(model.streams, JSON.parse(m.data)));
  source.addEventListener("people", (m) => onDiff(model.people, JSON.parse(m.data)));
  source.addEventListener("face", onFace);
  source.addEventListener("hub", (m) => { model.redisUp = JSON.parse(m.data).redis_up; dirty = true; });
  source.addEventListener("gap", (m) => {
    const notice = document.getElementById("notice");
    notice.hidden = false;
    notice.textContent = "Some events were missed: " + JSON.parse(m.data).reason;
  });
}

// -- rendering --------------------------------------------------------------------------------

function filters() {
  return {
    stream: document.getElementById("filter-stream").value,
    task: document.getElementById("filter-task").value,
  };
}

function renderStreamFilter() {
  const select = document.getElementById("filter-stream");
  const ids = new Set(Object.keys(model.streams));
  for (const p of Object.values(model.people)) if (p.fields.stream_id) ids.add(p.fields.stream_id);
  const wanted = [...ids].sort();
  const have = [...select.options].slice(1).map((o) => o.value);
  if (wanted.join("\u001f") === have.join("\u001f")) return;
  const chosen = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const id of wanted) select.add(new Option(id, id));
  select.value = wanted.includes(chosen) ? chosen : "";
}

function stateClass(state) {
  const known = [
    "starting", "running", "reconnecting", "stalled", "degraded", "done", "error", "stopped",
    "released", "owner_gone",
  ];
  return known.includes(state) ? `state-${state}` : "state-other";
}

function renderStreams(f, peopleByStream) {
  const body = document.querySelector("#streams tbody");
  const rows = [];
  const t = now();
  for (const id of Object.keys(model.streams).sort()) {
    if (f.stream && f.stream !== id) continue;
    const s = model.streams[id];
    const tr = el("tr");
    tr.dataset.stream = id;
    tr.appendChild(el("td", "mono", id));
    const stateCell = el("td");
    const badge = el("span", `badge ${stateClass(s.state)}`, s.state || "unknown");
    stateCell.appendChild(badge);
    // owner_gone: the hub found the worker's liveness key gone; the hash still says `written_state`.
    const gone = s.state === "owner_gone" ? `worker gone; last written: ${s.written_state || "?"}` : "";
    const reason = gone || s.error || s.reason || s.degraded_reason || "";
    if (reason) stateCell.appendChild(el("div", "reason", reason));
    tr.appendChild(stateCell);
    // `fps` is the detection rate (frames detected per second), `decode_fps` the decode rate.
    const detected = num(s.fps), decoded = num(s.decode_fps);
    const rates = [];
    if (detected !== null) rates.push(`${detected.toFixed(1)} detected`);
    if (decoded !== null) rates.push(`${decoded.toFixed(1)} decoded`);
    tr.appendChild(el("td", "num", rates.length ? rates.join(" · ") : "—"));
    const lastFrame = num(s.last_frame_wall_s);
    tr.appendChild(el("td", "num", lastFrame === null ? "—" : ago(t - lastFrame)));
    tr.appendChild(el("td", "mono", s.worker_id || "—"));
    tr.appendChild(el("td", "num", String(peopleByStream[id] || 0)));
    const details = el("td", "details");
    if (s.labels) {
      let labels = null;
      try { labels = JSON.parse(s.labels); } catch (err) { labels = null; }
      if (labels && typeof labels === "object") {
        for (const [k, v] of Object.entries(labels)) details.appendChild(el("span", "chip", `${k}=${v}`));
      } else {
        details.appendChild(el("span", "chip", `labels=${s.labels}`));
      }
    }
    for (const [k, v] of Object.entries(s)) {
      if (KNOWN_STREAM_FIELDS.has(k) || k === "degraded_reason" || v === "") continue;
      details.appendChild(el("span", "chip", `${k}=${v}`));
    }
    if (s.url) details.appendChild(el("span", "chip url", s.url));
    tr.appendChild(details);
    rows.push(tr);
  }
  body.replaceChildren(...rows);
  document.getElementById("streams-empty").hidden = rows.length > 0;
}

function renderTimeline(container, key, t) {
  const points = model.timelines[key] || [];
  const from = t - model.timelineS;
  const blocks = [];
  for (let i = 0; i < points.length; i += 1) {
    const p = points[i];
    if (p.t < from) continue;
    const next = i + 1 < points.length ? points[i + 1].t : t;
    const block = el("span", `tl tl-${EMOTION_CLASSES.has(p.label) ? p.label : "other"}`);
    block.style.left = `${(100 * (p.t - from)) / model.timelineS}%`;
    block.style.width = `${Math.max(0.6, (100 * (Math.min(next, t) - p.t)) / model.timelineS)}%`;
    block.title = `${p.label} · ${ago(t - p.t)}`;
    blocks.push(block);
  }
  container.replaceChildren(...blocks);
  container.title = `emotion over the last ${Math.round(model.timelineS / 60)} min`;
}

function renderPeople(f) {
  const container = document.getElementById("people");
  const template = document.getElementById("person-card");
  const t = now();
  const cards = [];
  const keys = Object.keys(model.people).sort((a, b) => {
    const pa = model.people[a].fields, pb = model.people[b].fields;
    return (pa.stream_id || "").localeCompare(pb.stream_id || "") || Number(pa.track_id) - Number(pb.track_id);
  });
  for (const key of keys) {
    const p = model.people[key];
    const stream = p.fields.stream_id || "";
    if (f.stream && f.stream !== stream) continue;
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.stream = stream;
    card.dataset.track = p.fields.track_id || "";
    card.querySelector(".track").textContent = `#${p.fields.track_id || "?"}`;
    card.querySelector(".stream").textContent = stream;
    const lastSeen = num(p.fields.last_seen_s);
    card.querySelector(".seen").textContent =
      `in view ${span((lastSeen ?? t) - p.first_seen_s)} · last ${ago(t - (lastSeen ?? t))}`;
    const emotion = p.tasks.emotion;
    const emotionCell = card.querySelector(".emotion");
    if (emotion) {
      const label = resultText("emotion", emotion);
      const chip = el("span", `emo tl-${EMOTION_CLASSES.has(label) ? label : "other"}`, label);
      emotionCell.appendChild(chip);
      emotionCell.appendChild(el("span", "when", ` ${ago(t - emotion.frame_wall_time_s)}`));
    } else {
      emotionCell.textContent = "—";
    }
    card.querySelector(".age").textContent = p.tasks.age ? resultText("age", p.tasks.age) : "—";
    card.querySelector(".attributes").textContent =
      p.tasks.attributes ? resultText("attributes", p.tasks.attributes) : "—";
    card.querySelector(".aus").textContent =
      p.tasks.action_units ? resultText("action_units", p.tasks.action_units) : "—";
    const newest = Object.values(p.tasks).filter((e) => e && e.answer_text)
      .sort((a, b) => b.wall_time_s - a.wall_time_s)[0];
    card.querySelector(".answer").textContent = newest ? `“${newest.answer_text}”` : "";
    // People who left fade out as their hash's TTL runs down, then the server removes them.
    if (p.expires_s) {
      const left = (p.expires_s - t) / model.personTtlS;
      card.style.opacity = String(Math.max(0.2, Math.min(1, 0.2 + left)));
      if (left < 0.8) card.classList.add("leaving");
    }
    renderTimeline(
      card.querySelector(".timeline"), personKeyOf(stream, p.fields.session, p.fields.track_id), t);
    if (p.thumbnail) card.querySelector("header").prepend(thumbnailOf(key, p.fields.last_seen_s));
    cards.push(card);
  }
  container.replaceChildren(...cards);
  forgetThumbnails();
  document.getElementById("people-empty").hidden = cards.length > 0;
}

// One <img> per person, reused across renders; it reloads only when the person was seen
// again (the server sends the JPEG as an image with nosniff; nothing is inlined).
const thumbnails = new Map();
function thumbnailOf(key, version) {
  let img = thumbnails.get(key);
  if (!img) {
    img = el("img", "thumb");
    img.alt = "face";
    img.width = 48;
    img.height = 48;
    thumbnails.set(key, img);
  }
  const src = `/api/thumbnail?person=${encodeURIComponent(key)}&v=${encodeURIComponent(version || "")}`;
  if (img.getAttribute("src") !== src) img.setAttribute("src", src);
  return img;
}
function forgetThumbnails() {
  for (const key of thumbnails.keys()) if (!(key in model.people)) thumbnails.delete(key);
}

function renderFeed(f) {
  const list = document.getElementById("feed");
  const items = [];
  const t = now();
  for (const { id, event } of model.feed) {
    if (f.stream && event.stream_id !== f.stream) continue;
    if (f.task && event.task !== f.task) continue;
    const li = el("li", "event");
    li.dataset.id = id;
    li.dataset.stream = event.stream_id;
    li.dataset.task = event.task;
    li.appendChild(el("span", "when", ago(t - event.wall_time_s)));
    li.appendChild(el("span", "mono", event.stream_id));
    li.appendChild(el("span", "track", `#${event.track_id}`));
    li.appendChild(el("span", "task", event.task));
    li.appendChild(el("span", "result", resultText(event.task, event)));
    li.appendChild(el("span", "answer", event.answer_text));
    items.push(li);
    if (items.length >= 200) break;
  }
  list.replaceChildren(...items);
  document.getElementById("feed-empty").hidden = items.length > 0;
}

function pruneTimelines() {
  const from = now() - model.timelineS;
  for (const [key, points] of Object.entries(model.timelines)) {
    while (points.length && points[0].t < from) points.shift();
    if (!points.length) delete model.timelines[key];
  }
}

function render() {
  pruneTimelines();
  const f = filters();
  const peopleByStream = {};
  for (const p of Object.values(model.people)) {
    const s = p.fields.stream_id || "";
    peopleByStream[s] = (peopleByStream[s] || 0) + 1;
  }
  renderStreamFilter();
  renderStreams(f, peopleByStream);
  renderPeople(f);
  renderFeed(f);
  const counts = document.getElementById("counts");
  counts.textContent = `${Object.keys(model.streams).length} streams · ` +
    `${Object.keys(model.people).length} people · ${model.received} events received`;
  renderConnection();
  dirty = false;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["filter-stream", "filter-task"]) {
    document.getElementById(id).addEventListener("change", () => { dirty = true; });
  }
  connect();
  let lastRender = 0;
  setInterval(() => {
    // Ages and fading move with the clock: re-render at least once a second.
    if (dirty || Date.now() - lastRender > 1000) {
      render();
      lastRender = Date.now();
    }
  }, RENDER_EVERY_MS);
});
