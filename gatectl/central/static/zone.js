// The zone's screen: one EventSource on /api/v1/stream; every element drawn from its messages.
"use strict";
const L = { kind: {}, direction: {}, state: {}, alarm: {}, outcome: {}, decision: {}, health: {} };
const view = { zone: null, sites: new Map(), lanes: new Map(), completeness: new Map(), alarms: [] };
const $ = (id) => document.getElementById(id);
const zh = (table, code) => (code == null ? "" : (L[table][code] || code));
const key = (s, l) => s + "/" + l;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function drawSites() {
  const box = $("sites");
  box.replaceChildren();
  for (const s of [...view.sites.values()].sort((a, b) => a.site_id.localeCompare(b.site_id))) {
    const d = el("span", "site");
    d.dataset.site = s.site_id;
    d.append(el("span", null, s.site_id + " "), el("span", "badge " + (s.online ? "ok" : "bad"), s.online ? "在线" : "离线"));
    box.append(d);
  }
}

function alarmText(a) {
  const what = zh("alarm", a.alarm);
  if (a.source === "zone") {
    let extra = "";
    if (a.card) extra = " 卡号 " + a.card;
    if (a.authorisation) extra = " 指令 " + a.authorisation.id;
    return "【园区】" + what + "：" + (a.site_ids || []).join("、") + extra;
  }
  return "【" + a.site_id + " " + a.lane_id + "】" + what;
}

function drawAlarms() {
  const open = view.alarms.filter((a) => a.open);
  $("alarm-count").textContent = open.length;
  const ul = $("alarms");
  ul.replaceChildren();
  for (const a of open.slice(0, 100)) {
    const li = el("li", a.source === "zone" ? "zone" : "lane", alarmText(a));
    li.dataset.alarm = a.alarm;
    li.title = a.raised_at || "";
    ul.append(li);
  }
}

function drawLanes() {
  const box = $("lanes");
  box.replaceChildren();
  const offline = new Set([...view.sites.values()].filter((s) => s.online === false).map((s) => s.site_id));
  for (const [k, lane] of [...view.lanes.entries()].sort()) {
    const st = lane.state || {};
    const card = el("div", "lane" + (offline.has(lane.site_id) ? " offline" : ""));
    card.dataset.lane = k;
    card.append(el("div", "title", (st.name || lane.lane_id)));
    card.append(el("div", "sub", lane.site_id + " · " + lane.lane_id + " · " + zh("kind", st.kind) + zh("direction", st.direction)));
    card.append(el("div", "state", zh("state", st.state)));
    card.append(el("div", "display", st.display || ""));
    if (st.passage && st.passage.card) card.append(el("div", "sub", "IC卡 " + st.passage.card + (st.passage.decision ? " · " + zh("decision", st.passage.decision) : "")));
    const c = view.completeness.get(k);
    if (c) {
      const gap = c.missing > 0;
      card.append(el("div", "complete" + (gap ? " gap" : ""), "已收 " + c.contiguous_seq + " / " + c.max_seq + (gap ? " · 缺 " + c.missing + (c.replaying ? " · 补传中" : "") : " · 完整")));
    }
    box.append(card);
  }
}

function applyState(s) {
  Object.assign(L, s.labels);
  view.zone = s.zone;
  $("zone-name").textContent = s.zone.name + " · 卡口监控";
  document.title = s.zone.name + " 卡口监控";
  view.sites = new Map(s.sites.map((x) => [x.site_id, x]));
  view.lanes = new Map(s.lanes.map((x) => [key(x.site_id, x.lane_id), x]));
  view.completeness = new Map(s.completeness.map((x) => [key(x.site_id, x.lane_id), x]));
  view.alarms = s.alarms;
  drawSites(); drawAlarms(); drawLanes();
}

function applyUpdate(u) {
  for (const x of u.lanes || []) view.lanes.set(key(x.site_id, x.lane_id), x);
  for (const x of u.sites || []) view.sites.set(x.site_id, x);
  for (const x of u.completeness || []) view.completeness.set(key(x.site_id, x.lane_id), x);
  if (u.sites) drawSites();
  drawLanes();
}

function connect(token) {
  const es = new EventSource("/api/v1/stream?token=" + encodeURIComponent(token));
  es.addEventListener("state", (m) => { $("login").hidden = true; $("main").hidden = false; applyState(JSON.parse(m.data)); });
  es.addEventListener("update", (m) => applyUpdate(JSON.parse(m.data)));
  es.addEventListener("alarm", (m) => { view.alarms.unshift(JSON.parse(m.data)); drawAlarms(); });
  es.onopen = () => { $("conn").textContent = "实时"; $("conn").className = "badge ok"; };
  es.onerror = () => {
    $("conn").textContent = "重连中"; $("conn").className = "badge bad";
    if (view.zone === null) {  // never got in: most likely a wrong token
      es.close();
      $("login").hidden = false;
      $("login-error").textContent = "令牌无效或服务不可用";
    }
  };
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token").value.trim();
  localStorage.setItem("gatectl-zone-token", token);
  connect(token);
});
setInterval(() => { $("clock").textContent = new Date().toLocaleString("zh-CN", { hour12: false }); }, 1000);
const saved = new URLSearchParams(location.hash.slice(1)).get("token") || localStorage.getItem("gatectl-zone-token");
if (saved) connect(saved); else $("login").hidden = false;
