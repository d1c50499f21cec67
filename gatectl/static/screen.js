// The guard's screen: live lanes over server-sent events (/api/v1/stream), alarms with
// acknowledgement, emergency-release accounts. Vanilla JS, no libraries, nothing fetched
// from outside this lane PC. Every text from the daemon goes in with textContent.
"use strict";

(() => {
  const TOKEN_KEY = "gatectl.token";
  const NAME_KEY = "gatectl.guard";
  const USER_KEY = "gatectl.user"; // {name, role} of the kept token (GET /api/v1/whoami)
  const QUIET = new Set(["loop.changed", "barrier.position"]);
  const MAX_EVENTS = 14;
  const MAX_ACKED_SHOWN = 6;

  const S = {
    labels: {},
    site: null,
    lanes: new Map(), // lane_id -> view
    passages: [],
    owed: [],
    approvals: [],
    alarms: new Map(), // event_id -> alarm
    events: [],
    alarmsApi: "unknown", // "ok" | "missing" | "error"
    today: "",
    skewMs: 0, // server clock - browser clock
    offsetMin: null, // the site's UTC offset, from the server's ISO time
  };

  // ------------------------------------------------------------------ helpers

  function h(tag, attrs, ...kids) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : String(kid));
    }
    return el;
  }
  const $ = (sel) => document.querySelector(sel);
  const label = (group, key, fallback) => {
    const table = S.labels[group] || {};
    return table[key] !== undefined ? table[key] : fallback !== undefined ? fallback : key;
  };
  // Times are the site's own (ISO with the site's offset): show them as written.
  function fmtTime(iso) {
    if (!iso) return "";
    const day = iso.slice(0, 10);
    const time = iso.slice(11, 19);
    return day === S.today ? time : `${iso.slice(5, 10)} ${time}`;
  }
  const fmtKg = (kg) => (kg === null || kg === undefined ? "—" : `${Math.round(kg).toLocaleString("zh-CN")} kg`);
  const laneName = (id) => (S.lanes.get(id) || {}).name || id;

  function getToken() { return sessionStorage.getItem(TOKEN_KEY) || ""; }
  function setToken(t) {
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(USER_KEY);
    updateTokenButton();
  }
  // The user of the kept token: {name, role}; name null for the site's full-access token.
  function getUser() {
    try { return JSON.parse(sessionStorage.getItem(USER_KEY) || "null"); } catch (err) { return null; }
  }
  const ROLE_ZH = { guard: "保安", customs: "海关", park: "园区管理方", maintenance: "运维", camera: "相机", full: "全部权限" };
  function updateTokenButton() {
    const u = getUser();
    $("#token-button").textContent = !getToken() ? "登录" : u && u.name ? `${u.name}（${ROLE_ZH[u.role] || u.role}）` : "访问令牌 ✓";
  }

  // Log in: who the token is (GET /api/v1/whoami). Returns {ok, user} or {ok: false, message}.
  async function identify(token) {
    let resp;
    try {
      resp = await fetch("/api/v1/whoami", { headers: { Authorization: `Bearer ${token}` } });
    } catch (err) {
      return { ok: false, message: "无法连接本机服务，请检查网络后重试" };
    }
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    if (!resp.ok) {
      const why = data && data.error ? ` — ${data.error}` : "";
      return { ok: false, auth: resp.status === 401 || resp.status === 403, message: `访问令牌无效（${resp.status}）${why}，请重新输入` };
    }
    sessionStorage.setItem(USER_KEY, JSON.stringify({ name: data.name, role: data.role }));
    updateTokenButton();
    return { ok: true, user: data };
  }
  // The name a record is made in: the logged-in user's (fixed), else the one typed.
  // keep: leave a typed name as it is unless the user has one of their own.
  function fillName(input, keep) {
    const u = getUser();
    if (u && u.name) input.value = u.name;
    else if (!keep) input.value = sessionStorage.getItem(NAME_KEY) || "";
    input.readOnly = Boolean(u && u.name);
  }

  function notice(text, bad) {
    const el = $("#notice");
    if (!text) { el.hidden = true; return; }
    el.textContent = text;
    el.className = bad ? "notice bad" : "notice";
    el.hidden = false;
  }

  // A POST with the bearer token; returns {ok, status, body, message} with a clear Chinese
  // message for what went wrong.
  async function post(path, body, token) {
    let resp;
    try {
      resp = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
      });
    } catch (err) {
      return { ok: false, status: 0, message: "无法连接本机服务，请检查网络后重试" };
    }
    let data = null;
    try { data = await resp.json(); } catch (err) { data = null; }
    const reason = data && (data.message || data.error || data.reason) ? ` — ${data.message || data.error || data.reason}` : "";
    if (resp.status === 401) return { ok: false, status: 401, auth: true, message: `未提供访问令牌（401）${reason}，请输入令牌` };
    if (resp.status === 403 && data && data.reason === "actor_mismatch") return { ok: false, status: 403, message: `不能以他人名义登记（403）${reason}` };
    if (resp.status === 403) return { ok: false, status: 403, auth: true, message: `访问令牌错误、权限不足或本机未配置令牌（403）${reason}，请重新输入` };
    if (resp.ok && !(data && data.status === "refused")) return { ok: true, status: resp.status, body: data };
    if (resp.status === 404) return { ok: false, status: 404, message: `接口或记录不存在（404）${reason}` };
    return { ok: false, status: resp.status, body: data, message: `提交被拒绝（${resp.status}）${reason}` };
  }

  // ------------------------------------------------------------------ lanes

  function renderLane(v) {
    const p = v.passage || {};
    const inputs = v.inputs || {};
    const faults = Object.entries(v.faults || {});
    const loops = [["arrival_loop", "到达"], ["safety_loop", "安全"]];
    if (v.has_exit_loop) loops.push(["exit_loop", "出口"]);
    const decision = p.decision;
    const holdText = p.hold_reason ? label("hold", p.hold_reason) : null;
    const arrow = { up: "▲ ", down: "▼ ", moving: "↕ ", conflict: "⚠ " }[v.barrier] || "";
    const devs = (v.devices || []).map((d) => {
      const health = d.health || "unknown";
      return h("span", { class: `dev h-${health}`, title: d.reason || "", dataset: { device: d.name } },
        `${d.label} ${label("health", health)}`, d.reason && health !== "ok" ? `：${d.reason}` : null);
    });
    const spot = v.spot_checks || {};
    const footer = [];
    if (v.open_now === false) footer.push(h("span", { class: "warn" }, "非开放时间：暂停自动放行"));
    if (spot.hold_next) footer.push(h("span", { class: "warn" }, `海关抽查：后续 ${spot.hold_next} 辆`));
    if (spot.fraction) footer.push(h("span", { class: "warn" }, `海关随机抽查 ${Math.round(spot.fraction * 100)}%`));
    if (v.lift && v.lift.outcome === "emergency") footer.push(h("span", { class: "warn" }, "紧急放行中"));
    if (v.lift && v.lift.outcome === "manual") footer.push(h("span", { class: "warn" }, label("outcome", "manual")));
    const direction = v.direction === "in" ? "进区" : v.direction === "out" ? "出区" : "";
    return h("article", { class: `lane${faults.length ? " has-fault" : ""}`, dataset: { lane: v.lane_id, state: v.state } },
      h("header", {},
        h("h3", {}, v.name || v.lane_id),
        h("span", { class: "lane-id" }, `${v.lane_id} · ${label("kind", v.kind)} · ${direction}`),
        h("span", { class: `state s-${v.state}` }, label("state", v.state))),
      h("div", { class: "led", title: "通道显示屏" }, v.display || " "),
      h("dl", { class: "facts" },
        h("div", {}, h("dt", {}, "车辆"),
          h("dd", { class: "vehicle", dataset: { present: v.vehicle_present ? "1" : "0" } },
            v.vehicle_present ? "有车" : "无车",
            h("span", { class: "loops" }, loops.map(([k, name]) => h("span", { class: `loop${inputs[k] ? " on" : ""}` }, name))))),
        h("div", {}, h("dt", {}, "道闸"),
          h("dd", { class: `barrier b-${v.barrier}`, dataset: { barrier: v.barrier } }, arrow + label("barrier", v.barrier))),
        h("div", {}, h("dt", {}, "IC卡"), h("dd", { class: `card${p.card ? "" : " none"}` }, p.card || "—")),
        h("div", {}, h("dt", {}, "重量"), h("dd", { class: `weight${p.weight_kg ? "" : " none"}` }, fmtKg(p.weight_kg))),
        h("div", { class: "wide" }, h("dt", {}, "海关指令"),
          h("dd", { class: `decision${decision ? ` d-${decision}` : " none"}`, dataset: { decision: decision || "" } },
            decision ? label("decision", decision) : v.state === "deciding" ? "等待海关系统答复…" : "—",
            p.hint ? h("span", { class: "hint" }, p.hint) : null,
            holdText && holdText !== p.hint ? h("span", { class: "hint" }, holdText) : null))),
      h("div", { class: "devices" }, devs),
      faults.length ? h("div", { class: "faults" }, "故障：", faults.map(([dev, why]) => `${label("device", dev)} ${why}`).join("；")) : null,
      footer.length ? h("footer", {}, footer) : null);
  }

  function putLane(v) {
    S.lanes.set(v.lane_id, v);
    const el = renderLane(v);
    const old = document.querySelector(`.lane[data-lane="${CSS.escape(v.lane_id)}"]`);
    if (old) old.replaceWith(el); else $("#lanes").append(el);
  }

  // ------------------------------------------------------------------ alarms

  function alarmFrom(ev, extra) {
    return Object.assign({
      event_id: ev.event_id,
      lane_id: ev.lane_id,
      alarm: ev.alarm,
      ts: ev.ts,
      detail_zh: ev.detail_zh || "",
      acknowledged_at: ev.acknowledged_at || null,
      acknowledged_by: ev.acknowledged_by || ev.by || null,
      ack_note: ev.ack_note || null,
      known_at: Date.now(),
    }, extra || {});
  }

  function upsertAlarm(a) {
    const old = S.alarms.get(a.event_id);
    if (!old) { S.alarms.set(a.event_id, a); return; }
    // Never take back an acknowledgement; keep what the journal said about the alarm.
    S.alarms.set(a.event_id, Object.assign({}, old, a, {
      detail_zh: a.detail_zh || old.detail_zh,
      acknowledged_at: a.acknowledged_at || old.acknowledged_at,
      acknowledged_by: a.acknowledged_by || old.acknowledged_by,
      ack_note: a.ack_note || old.ack_note,
      known_at: old.known_at,
    }));
  }

  function renderAlarms() {
    const all = [...S.alarms.values()].sort((a, b) => (a.ts < b.ts ? 1 : -1));
    const open = all.filter((a) => !a.acknowledged_at);
    const acked = all.filter((a) => a.acknowledged_at).slice(0, MAX_ACKED_SHOWN);
    const list = $("#alarms");
    list.replaceChildren(...open.map(alarmItem), ...acked.map(alarmItem));
    $("#alarms-section").hidden = open.length + acked.length === 0;
    const count = $("#alarm-count");
    count.textContent = open.length ? `未确认报警 ${open.length}` : "无未确认报警";
    count.className = open.length ? "pill bad" : "pill ok";
    $("#alarms-api-note").textContent = S.alarmsApi === "missing" ? "（本机未启用报警确认接口）" : "";
  }

  function alarmItem(a) {
    const isOpen = !a.acknowledged_at;
    return h("li", { class: `alarm ${isOpen ? "open" : "acked"}`, dataset: { eventId: a.event_id, alarm: a.alarm } },
      h("span", { class: "time" }, fmtTime(a.ts)),
      h("span", { class: "lane-tag" }, a.lane_id),
      h("span", { class: "what" }, label("alarm", a.alarm)),
      h("span", { class: "detail" }, a.detail_zh || ""),
      isOpen
        ? h("button", { class: "ack", type: "button", onclick: () => openAck(a.event_id) }, "确认")
        : h("span", { class: "ackinfo" }, "已确认",
          a.acknowledged_by ? ` · ${a.acknowledged_by}` : "",
          a.ack_note ? ` · ${a.ack_note}` : "",
          a.acknowledged_at && a.acknowledged_at !== true ? ` · ${fmtTime(a.acknowledged_at)}` : ""));
  }

  // GET /api/v1/alarms?open=1 is the word on which alarms are still open.
  let alarmsTimer = null;
  function refreshAlarmsSoon() {
    clearTimeout(alarmsTimer);
    alarmsTimer = setTimeout(refreshAlarms, 300);
  }
  async function refreshAlarms() {
    const started = Date.now();
    let resp;
    try { resp = await fetch("/api/v1/alarms?open=1", { headers: { Accept: "application/json" } }); } catch (err) { return; }
    if (resp.status === 404 || resp.status === 405) { S.alarmsApi = "missing"; renderAlarms(); return; }
    if (!resp.ok) { S.alarmsApi = "error"; return; }
    let data;
    try { data = await resp.json(); } catch (err) { return; }
    const items = Array.isArray(data) ? data : data.alarms || data.items || [];
    S.alarmsApi = "ok";
    const openIds = new Set();
    for (const it of items) {
      if (!it || !it.event_id) continue;
      if (!it.acknowledged_at) openIds.add(it.event_id);
      upsertAlarm(alarmFrom(it, { detail_zh: it.detail_zh || "" }));
    }
    // Known before we asked, open here, not open there: it has been acknowledged.
    for (const a of S.alarms.values()) {
      if (!a.acknowledged_at && !openIds.has(a.event_id) && a.known_at < started) a.acknowledged_at = true;
    }
    renderAlarms();
  }

  // ------------------------------------------------------------------ lists

  function renderPassages() {
    const rows = S.passages.map((p) => {
      const outcome = p.closed_at ? p.outcome : "open";
      const text = p.closed_at ? label("outcome", p.outcome) : "进行中";
      return h("tr", { dataset: { passage: p.passage_id, outcome } },
        h("td", {}, fmtTime(p.closed_at || p.opened_at)),
        h("td", {}, p.lane_id),
        h("td", { class: "card" }, p.card || "—"),
        h("td", {}, p.gross_weight_kg ? fmtKg(p.gross_weight_kg) : "—"),
        h("td", { class: p.decision ? `decision d-${p.decision}` : "" }, p.decision ? label("decision", p.decision) : "—"),
        h("td", { class: `outcome o-${outcome}` }, text,
          p.reason ? h("span", { class: "muted" }, ` ${label("hold", p.reason)}`) : null,
          p.account_owed ? h("button", { class: "small", type: "button", onclick: () => openAccount(p) }, "登记") : null));
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "6", class: "muted" }, "暂无通行记录")));
    $("#passages tbody").replaceChildren(...rows);

    const owed = S.owed.map((p) => h("li", { class: "owed", dataset: { passage: p.passage_id } },
      h("span", {}, `${fmtTime(p.closed_at || p.opened_at)} · ${laneName(p.lane_id)} · 紧急放行未登记`),
      h("button", { class: "small", type: "button", onclick: () => openAccount(p) }, "登记")));
    $("#owed").replaceChildren(...(owed.length ? owed : [h("li", { class: "empty" }, "无")]));
  }

  function renderApprovals() {
    const items = S.approvals.map((a) => {
      const who = a.approved_by ? `${a.approved_by.org || ""} ${a.approved_by.name || ""}`.trim() : "";
      return h("li", { dataset: { approval: a.approval_id } },
        h("div", {}, h("b", {}, a.lane_id), ` · ${label("trigger", a.trigger)} · 剩余 ${a.lifts_left}/${a.max_lifts} 次`),
        h("div", { class: "muted" }, `${a.approval_id} · 至 ${fmtTime(a.valid_until)}`,
          a.reason ? ` · ${label("reason", a.reason)}` : "", a.detail ? `：${a.detail}` : "",
          a.plate ? ` · ${a.plate}` : "", who ? ` · 批准：${who}` : ""));
    });
    $("#approvals").replaceChildren(...(items.length ? items : [h("li", { class: "empty" }, "无有效审批")]));
  }

  function renderEvents() {
    $("#events").replaceChildren(...S.events.map((e) => h("li", { class: e.type === "alarm.raised" ? "alarm-ev" : "" },
      h("span", { class: "t" }, fmtTime(e.ts)), `${e.lane_id} `, e.zh || e.type)));
  }

  // ------------------------------------------------------------------ the stream

  function onState(st) {
    S.labels = st.labels || S.labels;
    S.site = st.site;
    S.today = (st.server_time || "").slice(0, 10);
    const m = /([+-])(\d\d):(\d\d)$/.exec(st.server_time || "");
    if (m) {
      S.offsetMin = (m[1] === "-" ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3]));
      S.skewMs = Date.parse(st.server_time) - Date.now();
    }
    $("#site-name").textContent = st.site ? `${st.site.name} 卡口监控` : "卡口监控";
    document.title = `${st.site ? st.site.name : ""} 卡口监控`;
    S.lanes.clear();
    $("#lanes").replaceChildren();
    for (const v of st.lanes || []) putLane(v);
    S.passages = st.passages || [];
    S.owed = st.emergency_owed || [];
    S.approvals = st.approvals || [];
    for (const a of st.alarms || []) upsertAlarm(alarmFrom(a));
    tick();
    if (!st.token_configured) notice("本机未配置访问令牌（local_api.token）：无法确认报警或登记紧急放行", true);
    renderPassages(); renderApprovals(); renderAlarms(); renderEvents();
    refreshAlarmsSoon();
  }

  function onJournal(events) {
    let alarmsChanged = false;
    for (const e of events) {
      if (e.ts) S.today = e.ts.slice(0, 10);
      if (!QUIET.has(e.type)) S.events.unshift(e);
      if (e.type === "alarm.raised") {
        upsertAlarm(alarmFrom(e, { detail_zh: (e.zh || "").split(" — ")[1] || "" }));
        alarmsChanged = true;
      } else if (e.type === "alarm.acknowledged") {
        for (const [k, val] of Object.entries(e)) {
          if (k === "event_id" || typeof val !== "string") continue;
          const a = S.alarms.get(val);
          if (a) Object.assign(a, { acknowledged_at: e.ts, acknowledged_by: e.by || a.acknowledged_by, ack_note: e.note || a.ack_note });
        }
        alarmsChanged = true;
      }
    }
    S.events.length = Math.min(S.events.length, MAX_EVENTS);
    renderEvents();
    if (alarmsChanged) { renderAlarms(); refreshAlarmsSoon(); }
  }

  function connect() {
    const conn = $("#conn");
    const es = new EventSource("/api/v1/stream");
    const parse = (fn) => (msg) => { try { fn(JSON.parse(msg.data)); } catch (err) { console.error(err); } };
    es.addEventListener("open", () => { conn.dataset.state = "live"; conn.textContent = "实时"; });
    es.addEventListener("error", () => {
      conn.dataset.state = es.readyState === EventSource.CLOSED ? "lost" : "lost";
      conn.textContent = "连接中断，正在重连…";
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
    });
    es.addEventListener("state", parse(onState));
    es.addEventListener("lanes", parse((d) => { for (const v of d.lanes || []) putLane(v); }));
    es.addEventListener("journal", parse(onJournal));
    es.addEventListener("passages", parse((d) => { S.passages = d.passages || []; S.owed = d.emergency_owed || []; renderPassages(); }));
    es.addEventListener("approvals", parse((d) => { S.approvals = d.approvals || []; renderApprovals(); }));
  }

  // ------------------------------------------------------------------ dialogs

  // Show the token row when none is kept; return the token to use (stores a typed one).
  function prepareToken(prefix) {
    const row = $(`#${prefix}-token`).closest(".token-row");
    row.hidden = Boolean(getToken());
    $(`#${prefix}-token`).value = "";
  }
  function takeToken(prefix) {
    const typed = $(`#${prefix}-token`).value.trim();
    if (typed) setToken(typed);
    return getToken();
  }
  function showError(prefix, text) {
    const el = $(`#${prefix}-error`);
    el.textContent = text || "";
    el.hidden = !text;
  }

  let ackId = null;
  function openAck(id) {
    const a = S.alarms.get(id);
    if (!a) return;
    ackId = id;
    $("#ack-summary").textContent = `${fmtTime(a.ts)} · ${laneName(a.lane_id)} · ${label("alarm", a.alarm)} ${a.detail_zh || ""}`;
    prepareToken("ack");
    fillName($("#ack-name"));
    $("#ack-note").value = "";
    showError("ack", "");
    $("#ack-dialog").showModal();
    (getToken() ? $("#ack-name") : $("#ack-token")).focus();
  }

  async function submitAck(ev) {
    ev.preventDefault();
    const note = $("#ack-note").value.trim();
    const token = takeToken("ack");
    if (!token) { showError("ack", "请输入访问令牌"); $("#ack-token").closest(".token-row").hidden = false; return; }
    if (!getUser()) {
      const who = await identify(token);
      if (!who.ok) { if (who.auth) { setToken(""); prepareToken("ack"); } showError("ack", who.message); return; }
      fillName($("#ack-name"), true);
    }
    const by = $("#ack-name").value.trim();
    if (!by) { showError("ack", "请填写值班保安姓名"); return; }
    sessionStorage.setItem(NAME_KEY, by);
    const btn = $("#ack-submit");
    btn.disabled = true;
    const res = await post(`/api/v1/alarms/${encodeURIComponent(ackId)}/ack`, { by, note }, token);
    btn.disabled = false;
    if (res.auth) { setToken(""); prepareToken("ack"); showError("ack", res.message); $("#ack-token").focus(); return; }
    if (!res.ok) { showError("ack", res.message); return; }
    const a = S.alarms.get(ackId);
    if (a) {
      const body = res.body || {};
      Object.assign(a, { acknowledged_at: body.acknowledged_at || a.acknowledged_at || new Date().toISOString(), acknowledged_by: by, ack_note: note });
    }
    $("#ack-dialog").close();
    renderAlarms();
    refreshAlarmsSoon();
  }

  let accountPassage = null;
  function openAccount(p) {
    accountPassage = p;
    $("#account-summary").textContent = `${fmtTime(p.closed_at || p.opened_at)} · ${laneName(p.lane_id)} · 紧急放行（${p.passage_id.slice(0, 8)}）`;
    prepareToken("account");
    $("#account-type").value = "警车";
    $("#account-plate").value = "";
    $("#account-note").value = "";
    fillName($("#account-by"));
    showError("account", "");
    $("#account-dialog").showModal();
    (getToken() ? $("#account-type") : $("#account-token")).focus();
  }

  async function submitAccount(ev) {
    ev.preventDefault();
    const p = accountPassage;
    const token = takeToken("account");
    if (!token) { showError("account", "请输入访问令牌"); $("#account-token").closest(".token-row").hidden = false; return; }
    if (!getUser()) {
      const who = await identify(token);
      if (!who.ok) { if (who.auth) { setToken(""); prepareToken("account"); } showError("account", who.message); return; }
      fillName($("#account-by"), true);
    }
    const body = {
      passage_id: p.passage_id,
      vehicle_type: $("#account-type").value,
      plate: $("#account-plate").value.trim() || null,
      note: $("#account-note").value.trim(),
      by: $("#account-by").value.trim(),
    };
    if (!body.by) { showError("account", "请填写值班保安姓名"); return; }
    sessionStorage.setItem(NAME_KEY, body.by);
    const btn = $("#account-submit");
    btn.disabled = true;
    const res = await post(`/api/v1/lanes/${encodeURIComponent(p.lane_id)}/emergency-accounts`, body, token);
    btn.disabled = false;
    if (res.auth) { setToken(""); prepareToken("account"); showError("account", res.message); $("#account-token").focus(); return; }
    if (!res.ok) { showError("account", res.message); return; }
    $("#account-dialog").close();
    notice(`已登记紧急放行：${body.vehicle_type} ${body.plate || ""}`.trim(), false);
    setTimeout(() => notice(""), 6000);
  }

  function openTokenDialog() {
    $("#token-input").value = "";
    const u = getUser();
    $("#token-status").textContent = !getToken() ? "尚未登录" : u && u.name ? `已登录：${u.name}（${ROLE_ZH[u.role] || u.role}）` : "已保存令牌（本标签页）";
    $("#token-dialog").showModal();
    $("#token-input").focus();
  }

  // ------------------------------------------------------------------ start

  // The site's time (as in the journal), not the browser's zone.
  function tick() {
    const pad = (n) => String(n).padStart(2, "0");
    if (S.offsetMin === null) { $("#clock").textContent = "--:--:--"; return; }
    const t = new Date(Date.now() + S.skewMs + S.offsetMin * 60000);
    $("#clock").textContent = `${pad(t.getUTCHours())}:${pad(t.getUTCMinutes())}:${pad(t.getUTCSeconds())}`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("#ack-form").addEventListener("submit", submitAck);
    $("#ack-cancel").addEventListener("click", () => $("#ack-dialog").close());
    $("#account-form").addEventListener("submit", submitAccount);
    $("#account-cancel").addEventListener("click", () => $("#account-dialog").close());
    $("#token-button").addEventListener("click", openTokenDialog);
    $("#token-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const t = $("#token-input").value.trim();
      if (!t) { $("#token-dialog").close(); return; }
      const who = await identify(t);
      if (!who.ok) { $("#token-status").textContent = who.message; return; }
      setToken(t);
      sessionStorage.setItem(USER_KEY, JSON.stringify({ name: who.user.name, role: who.user.role }));
      updateTokenButton();
      $("#token-dialog").close();
    });
    $("#token-clear").addEventListener("click", () => { setToken(""); $("#token-dialog").close(); });
    $("#token-cancel").addEventListener("click", () => $("#token-dialog").close());
    updateTokenButton();
    tick();
    setInterval(tick, 1000);
    connect();
  });
})();
