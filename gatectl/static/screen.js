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
  const word = (name, fallback) => (typeof S.labels[name] === "string" ? S.labels[name] : fallback);
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
  const roleZh = (role) => label("role", role);
  function updateTokenButton() {
    const u = getUser();
    $("#token-button").textContent = !getToken() ? "登录" : u && u.name ? `${u.name}（${roleZh(u.role)}）` : "访问令牌 ✓";
    for (const el of document.querySelectorAll(".me")) el.textContent = u && u.name ? u.name : "（未登录）";
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
    // Fields a lane may not give (an older daemon): absent means not shown.
    const open = v.open !== undefined && v.open !== null ? v.open : v.open_now;
    if (open === false) footer.push(h("span", { class: "warn" }, "非开放时间：暂停自动放行"));
    const order = v.hours_order;
    if (order && typeof order === "object" && order.open !== undefined && order.open !== null) {
      footer.push(h("span", { class: "warn hours-order", dataset: { open: order.open ? "1" : "0" } },
        label("hours", String(Boolean(order.open))),
        order.until ? ` 至 ${fmtTime(order.until)}` : "",
        order.reason ? `（${order.reason}）` : "",
        order.by ? ` · ${order.by}` : ""));
    }
    if (spot.hold_next) footer.push(h("span", { class: "warn" }, `海关抽查：后续 ${spot.hold_next} 辆`));
    if (spot.fraction) footer.push(h("span", { class: "warn" }, `海关随机抽查 ${Math.round(spot.fraction * 100)}%`));
    if (v.lift && v.lift.outcome === "emergency") footer.push(h("span", { class: "warn" }, "紧急放行中"));
    if (v.lift && v.lift.outcome === "manual") footer.push(h("span", { class: "warn" }, label("outcome", "manual")));
    const direction = v.direction === "in" ? "进区" : v.direction === "out" ? "出区" : "";
    // {by, note, since} while a drill runs (true from an older daemon), null otherwise.
    const drill = v.drill === true || (v.drill !== null && typeof v.drill === "object");
    const drillTitle = drill && typeof v.drill === "object"
      ? `应急处置演练：${v.drill.by || ""}${v.drill.note ? `（${v.drill.note}）` : ""}${v.drill.since ? ` 自 ${fmtTime(v.drill.since)}` : ""}；本通道此时的记录均标为演练`
      : "应急处置演练：本通道此时的记录均标为演练";
    // A shared lane decides each passage's kind: show it (elsewhere it is the lane's own).
    const passageKind = p.lane_kind && (v.kind === "shared" || p.lane_kind !== v.kind) ? p.lane_kind : null;
    return h("article", { class: `lane${faults.length ? " has-fault" : ""}${drill ? " drill" : ""}`,
      dataset: { lane: v.lane_id, state: v.state } },
      h("header", {},
        h("h3", {}, v.name || v.lane_id),
        drill ? h("span", { class: "drill-badge", title: drillTitle }, word("drill", "演练")) : null,
        h("span", { class: "lane-id" }, `${v.lane_id} · ${label("kind", v.kind)} · ${direction}`),
        open === true || open === false
          ? h("span", { class: `open-badge ${open ? "is-open" : "is-closed"}`, dataset: { open: open ? "1" : "0" } },
            label("lane_open", String(open)))
          : null,
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
        typeof p.plate === "string" && p.plate ? h("div", {}, h("dt", {}, "车牌"), h("dd", { class: "plate" }, p.plate)) : null,
        passageKind ? h("div", {}, h("dt", {}, "本车通道"),
          h("dd", { class: "passage-kind", dataset: { kind: passageKind } }, label("kind", passageKind))) : null,
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

  // The lists are rebuilt only when what they show changed: a rebuild between the press
  // and the release of a button swallows the guard's click.
  let shownPassages = null;
  let shownOwed = null;

  function renderPassages() {
    const passagesKey = JSON.stringify(S.passages);
    const owedKey = JSON.stringify(S.owed);
    if (passagesKey !== shownPassages) {
      shownPassages = passagesKey;
      renderPassageRows();
    }
    if (owedKey !== shownOwed) {
      shownOwed = owedKey;
      renderOwed();
    }
  }

  function renderPassageRows() {
    const rows = S.passages.map((p) => {
      const outcome = p.closed_at ? p.outcome : "open";
      const text = p.closed_at ? label("outcome", p.outcome) : "进行中";
      return h("tr", { dataset: { passage: p.passage_id, outcome } },
        h("td", {}, fmtTime(p.closed_at || p.opened_at)),
        h("td", {}, p.lane_id),
        h("td", { class: "card" }, p.card || "—"),
        h("td", { class: "plate" }, p.plate || "—"),
        h("td", {}, p.gross_weight_kg ? fmtKg(p.gross_weight_kg) : "—"),
        h("td", { class: p.decision ? `decision d-${p.decision}` : "" }, p.decision ? label("decision", p.decision) : "—"),
        h("td", { class: `outcome o-${outcome}` }, text,
          p.reason ? h("span", { class: "muted" }, ` ${label("hold", p.reason)}`) : null,
          p.account_owed ? h("button", { class: "small", type: "button", onclick: () => openAccount(p) }, "登记") : null));
    });
    if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: "7", class: "muted" }, "暂无通行记录")));
    $("#passages tbody").replaceChildren(...rows);
  }

  function renderOwed() {
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
      h("span", { class: "t" }, fmtTime(e.ts)), `${e.lane_id === "_site" ? word("site_wide", "全场") : e.lane_id} `, e.zh || e.type)));
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
    shownPassages = shownOwed = null;  // a fresh snapshot (lane names too): draw it all
    renderPassages(); renderApprovals(); renderAlarms(); renderEvents();
    refreshAlarmsSoon();
    updateTokenButton();
    refreshRecordsSoon();
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
    if (events.some((e) => RECORD_EVENT.test(e.type || ""))) refreshRecordsSoon();
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

  function openTokenDialog(why) {
    $("#token-input").value = "";
    const u = getUser();
    $("#token-status").textContent = typeof why === "string" ? why : !getToken() ? "尚未登录" : u && u.name ? `已登录：${u.name}（${roleZh(u.role)}）` : "已保存令牌（本标签页）";
    $("#token-dialog").showModal();
    $("#token-input").focus();
  }

  // ------------------------------------------------------------------ workstation
  //
  // The guard's duty records (handover, shift checks, video notes, incidents, fault
  // tickets, the ledger) through the records API, in the logged-in user's name: the server
  // takes the actor from the token, so no form has a name field. Each form is checked here
  // (the constraints its fields declare, then its own rules) and again by the server; a
  // refusal is shown under the field it concerns, and nothing typed is cleared until the
  // record is taken.

  const RECORD_EVENT = /^(incident\.|ticket\.|shift\.|video\.note|alarm\.)/;
  const WS = { incidents: [], tickets: [], duty: [], afterLogin: null, itemsKey: null, incident: null, ticket: null };
  const SITE = "_site";

  async function getJSON(path) {
    try {
      const resp = await fetch(path);
      return resp.ok ? await resp.json() : null;
    } catch (err) {
      return null;
    }
  }
  const laneLabel = (id) => (id === SITE || !id ? word("site_wide", "全场") : `${id} ${laneName(id) !== id ? laneName(id) : ""}`.trim());
  const deviceLabel = (name) => label("device", name, `IO模块 ${name}`);
  // An incident opened from an alarm has the alarm's code as its reason: say it, once.
  function incidentText(i) {
    const kind = label("incident_kind", i.kind, "");
    const why = i.reason ? label("hold", i.reason, i.reason) : "";
    return why && why !== kind ? `${kind} · ${why}` : kind;
  }

  let recordsTimer = null;
  function refreshRecordsSoon() {
    clearTimeout(recordsTimer);
    recordsTimer = setTimeout(loadRecords, 200);
  }
  async function loadRecords() {
    const [inc, tic, duty] = await Promise.all([
      getJSON("/api/v1/incidents?open=1&limit=50"),
      getJSON("/api/v1/tickets?open=1&limit=50"),
      getJSON("/api/v1/shifts?limit=8"),
    ]);
    if (inc) WS.incidents = inc.incidents || [];
    if (tic) WS.tickets = tic.tickets || [];
    if (duty) WS.duty = duty.records || [];
    renderRecords();
  }

  function renderRecords() {
    const incidents = WS.incidents.map((i) => {
      const accounts = (i.accounts || []).length;
      return h("li", { class: "record", dataset: { incident: i.incident_id, accounts: String(accounts) } },
        h("div", { class: "rec-main" },
          h("b", {}, i.incident_id), ` · ${laneLabel(i.lane_id)} · ${incidentText(i)}`,
          h("div", { class: "muted" }, `${fmtTime(i.opened_at)}${i.opened_by ? ` · ${i.opened_by}` : ""}`),
          h("div", { class: accounts ? "muted" : "warn-text" }, accounts ? `已有事故记录 ${accounts} 份` : "尚无事故记录：关闭前须填写")),
        h("button", { class: "small account-inc", type: "button", onclick: () => withLogin(() => openAccountInc(i)) }, "填写记录"),
        h("button", { class: "small secondary close-inc", type: "button", disabled: !accounts,
          title: accounts ? "" : "需先填写事故记录", onclick: () => withLogin(() => openCloseInc(i)) }, "关闭"));
    });
    $("#incidents").replaceChildren(...(incidents.length ? incidents : [h("li", { class: "empty" }, "无未结事件")]));

    const tickets = WS.tickets.map((t) => h("li", { class: "record", dataset: { ticket: t.ticket_id, state: t.state } },
      h("div", { class: "rec-main" },
        h("b", {}, t.ticket_id), ` · ${laneLabel(t.lane_id)} ${deviceLabel(t.device)} · `,
        h("span", { class: `tstate t-${t.state}` }, label("ticket_state", t.state)),
        h("div", { class: "muted" }, `${fmtTime(t.opened_at)} ${label("ticket_source", t.source)}：${t.reason || ""}`)),
      (t.next || []).length
        ? h("button", { class: "small advance", type: "button", onclick: () => withLogin(() => openAdvance(t)) }, "处理进度")
        : null));
    $("#tickets").replaceChildren(...(tickets.length ? tickets : [h("li", { class: "empty" }, "无未关闭的故障处理单")]));

    const duty = WS.duty.map((d) => {
      let text;
      if (d.type === "shift.handover") text = `交接班 ${d.outgoing} → ${d.incoming}`;
      else if (d.type === "shift.check") text = `${label("duty", d.phase)} · ${d.guard}`;
      else text = `${label("duty", d.type)} · ${d.guard}：${d.note || ""}`;
      return h("li", { dataset: { type: d.type } }, h("span", { class: "t" }, fmtTime(d.ts)), text);
    });
    $("#duty").replaceChildren(...(duty.length ? duty : [h("li", { class: "empty" }, "暂无值班记录")]));
  }

  // A form needs a named user: open the login first, then the form.
  function withLogin(open) {
    const u = getUser();
    if (getToken() && u && u.name) { open(); return; }
    WS.afterLogin = open;
    openTokenDialog(getToken() && u && !u.name
      ? "值班记录以登录人的姓名登记：请用本人的令牌登录（本机全权令牌没有姓名）"
      : "请先用本人的令牌登录，记录将以您的姓名登记");
  }

  // ---- errors beside the fields

  function clearErrors(form) {
    for (const el of form.querySelectorAll(".field-error, .form-error")) { el.textContent = ""; el.hidden = true; }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const done = form.querySelector(".form-done");
    if (done) done.hidden = true;
  }
  function errorSlot(form, name) {
    return (name && form.querySelector(`[data-error-for="${CSS.escape(name)}"]`)) || null;
  }
  function setError(form, name, text) {
    const el = errorSlot(form, name) || form.querySelector(".form-error");
    el.textContent = el.hidden || !el.textContent ? text : `${el.textContent}；${text}`;
    el.hidden = false;
    const input = name ? form.querySelector(`[name="${CSS.escape(name)}"]`) : null;
    if (input) input.setAttribute("aria-invalid", "true");
  }
  function focusFirstError(form) {
    const bad = form.querySelector("[aria-invalid]");
    if (bad) bad.focus();
  }
  function fieldName(form, name) {
    const el = form.querySelector(`[name="${CSS.escape(name)}"][data-label]`);
    return el ? el.dataset.label : label("field", name);
  }

  // The constraints the fields declare (required, maxlength, type), said in Chinese.
  function checkFields(form) {
    let ok = true;
    for (const el of form.elements) {
      if (!el.name || !el.willValidate || el.checkValidity()) continue;
      const slot = errorSlot(form, el.name);
      if (slot && !slot.hidden) continue; // a radio group: once
      const what = fieldName(form, el.name);
      const v = el.validity;
      let text = `${what}不正确`;
      if (v.valueMissing) text = el.type === "checkbox" ? `请勾选：${what}` : el.tagName === "SELECT" || el.type === "radio" ? `请选择${what}` : `请填写${what}`;
      else if (v.tooLong) text = `${what}过长（最多 ${el.maxLength} 字）`;
      else if (v.badInput || v.typeMismatch || v.patternMismatch) text = `${what}格式不正确`;
      setError(form, el.name, text);
      ok = false;
    }
    return ok;
  }

  // pydantic's words for the usual problems (the field is named in Chinese beside them).
  function zhProblem(text) {
    if (text === "required") return "必填";
    if (text === "unknown field") return "不是本表的字段";
    const long = /at most (\d+) characters/.exec(text);
    if (long) return `过长（最多 ${long[1]} 字）`;
    if (/at least 1 character/.test(text)) return "不能为空";
    return text;
  }
  const FIELD_RES = [/^'([a-z_]+)'/, /^([a-z_]+) must/, /^([a-z_]+):/];

  // A refusal from the server under the field it concerns (its code, or the field its
  // message names), else on the form's own error line.
  function showRefusal(form, res, codeFields) {
    const body = res.body || {};
    if (body.reason === "invalid" && typeof body.error === "string") {
      for (const part of body.error.split("; ")) {
        const m = /^([a-z_]+)(?:\.\d+)?: (.*)$/.exec(part);
        const field = m && errorSlot(form, m[1]) ? m[1] : null;
        setError(form, field, `服务器拒绝：${m ? `${fieldName(form, m[1])}${zhProblem(m[2])}` : part}`);
      }
      return;
    }
    let field = (codeFields || {})[body.code || body.reason];
    if (field === undefined && typeof body.error === "string") {
      for (const re of FIELD_RES) {
        const m = re.exec(body.error);
        if (m) { field = m[1]; break; }
      }
    }
    if (!field || !errorSlot(form, field)) field = null;
    setError(form, field, body.message_zh ? `服务器拒绝：${body.message_zh}（${res.status}）` : res.message);
  }

  // A field's error goes once the guard changes the field.
  function watchEdits(form) {
    const touched = (ev) => {
      const name = ev.target && ev.target.name;
      const slot = name ? errorSlot(form, name) : null;
      if (slot) { slot.hidden = true; slot.textContent = ""; }
      if (name) for (const el of form.querySelectorAll(`[name="${CSS.escape(name)}"]`)) el.removeAttribute("aria-invalid");
    };
    form.addEventListener("input", touched);
    form.addEventListener("change", touched);
  }

  // One workstation form: checked here, sent, refused beside its fields or taken.
  function bindForm(id, opts) {
    const form = document.getElementById(id);
    const dialog = form.closest("dialog");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      const fieldsOk = checkFields(form);
      const ownOk = opts.check ? await opts.check(form) : true;
      if (!fieldsOk || !ownOk) { focusFirstError(form); return; }
      const u = getUser();
      if (!getToken() || !u || !u.name) {
        setError(form, null, "请先用本人的令牌登录（右上角「登录」），记录以登录人的姓名登记");
        return;
      }
      const btn = form.querySelector('button[type="submit"]');
      btn.disabled = true;
      let res;
      try {
        res = await post(opts.path(form), opts.body(form), getToken());
      } finally {
        btn.disabled = false;
      }
      if (!res.ok) { showRefusal(form, res, opts.codeFields); focusFirstError(form); return; }
      form.reset();
      if (opts.afterReset) opts.afterReset(form);
      dialog.close();
      if (opts.done) {
        notice(opts.done(res.body || {}), false);
        clearTimeout(WS.noticeTimer);
        WS.noticeTimer = setTimeout(() => notice(""), 6000);
      }
      refreshRecordsSoon();
    });
    form.querySelector(".cancel").addEventListener("click", () => dialog.close());
    watchEdits(form);
    return form;
  }
  const val = (form, name) => {
    const el = form.elements[name];
    return el && typeof el.value === "string" ? el.value.trim() : "";
  };
  function showDialog(id) {
    updateTokenButton();
    const dialog = document.getElementById(id);
    clearErrors(dialog.querySelector("form"));
    dialog.showModal();
    const first = dialog.querySelector("input:not([type=hidden]):not([readonly]), select, textarea");
    if (first) first.focus();
  }
  function fillLanes(select) {
    const keep = select.value;
    const opts = [...S.lanes.values()].map((v) => h("option", { value: v.lane_id }, `${v.lane_id} ${v.name || ""}`));
    opts.push(h("option", { value: SITE }, word("site_wide", "全场")));
    select.replaceChildren(...opts);
    if (keep && [...select.options].some((o) => o.value === keep)) select.value = keep;
  }
  function fillOptions(select, entries, placeholder) {
    const keep = select.value;
    select.replaceChildren(...(placeholder ? [h("option", { value: "" }, placeholder)] : []),
      ...entries.map(([value, text]) => h("option", { value }, text)));
    if (keep && entries.some(([v]) => v === keep)) select.value = keep;
  }

  // ---- handover: what is carried over, shown and confirmed

  async function openItems() {
    const [ids, alarms, incidents, tickets] = await Promise.all([
      getJSON("/api/v1/shifts/open-items"),
      getJSON("/api/v1/alarms?open=1&limit=200"),
      getJSON("/api/v1/incidents?open=1&limit=200"),
      getJSON("/api/v1/tickets?open=1&limit=200"),
    ]);
    if (!ids) return null;
    const byId = (list, key) => new Map(((list || [])).map((x) => [x[key], x]));
    const a = byId(alarms && alarms.alarms, "event_id");
    const i = byId(incidents && incidents.incidents, "incident_id");
    const t = byId(tickets && tickets.tickets, "ticket_id");
    const items = [];
    for (const id of ids.open_alarms || []) {
      const x = a.get(id) || {};
      items.push({ kind: "alarm", id, text: `未确认报警 · ${fmtTime(x.ts)} · ${laneLabel(x.lane_id)} · ${label("alarm", x.alarm, "报警")}` });
    }
    for (const id of ids.open_incidents || []) {
      const x = i.get(id) || {};
      items.push({ kind: "incident", id, text: `未结事件 ${id} · ${laneLabel(x.lane_id)} · ${incidentText(x)}` });
    }
    for (const id of ids.open_tickets || []) {
      const x = t.get(id) || {};
      items.push({ kind: "ticket", id, text: `故障处理单 ${id} · ${laneLabel(x.lane_id)} ${x.device ? deviceLabel(x.device) : ""} · ${label("ticket_state", x.state, "")}` });
    }
    return { key: JSON.stringify([ids.open_alarms, ids.open_incidents, ids.open_tickets]), items };
  }
  function renderItems(found) {
    const list = $("#handover-items");
    if (!found) { list.replaceChildren(h("li", { class: "empty" }, "无法读取遗留事项，请稍后重试")); return; }
    list.replaceChildren(...(found.items.length
      ? found.items.map((x) => h("li", { class: `carry-${x.kind}`, dataset: { item: x.id } }, x.text))
      : [h("li", { class: "empty" }, "无遗留事项")]));
  }
  async function openHandover() {
    const form = $("#handover-form");
    form.elements.confirmed.checked = false; // confirmed afresh each time
    showDialog("handover-dialog");
    $("#handover-items").replaceChildren(h("li", { class: "empty" }, "读取中…"));
    const found = await openItems();
    WS.itemsKey = found ? found.key : null;
    renderItems(found);
  }

  // ---- shift checks: each device of each lane, ok or faulty with a note

  function checkRows() {
    const rows = [];
    for (const v of S.lanes.values()) {
      const seen = new Map((v.devices || []).map((d) => [d.name, d]));
      for (const dev of v.check_devices || (v.devices || []).map((d) => d.name)) rows.push({ lane: v, dev, seen: seen.get(dev) });
    }
    return rows;
  }
  function buildCheckTable() {
    // What was already chosen or typed survives the rebuild (a lane's view may have changed).
    const old = new Map();
    for (const el of $("#check-devices").querySelectorAll("input")) {
      if (el.type !== "radio") old.set(el.name, el.value);
      else if (el.checked) old.set(el.name, el.value);
    }
    const verdicts = Object.entries(S.labels.verdict || { ok: "正常", faulty: "故障" });
    const rows = checkRows().map(({ lane, dev, seen }) => {
      const key = `${lane.lane_id}/${dev}`;
      const fault = (lane.faults || {})[dev];
      const health = fault ? "faulty" : seen && seen.health ? seen.health : dev === "barrier" && lane.barrier !== "conflict" ? null : "unknown";
      const noteName = `n:${key}`;
      const noteInput = h("input", { name: noteName, maxlength: "200", "data-label": `${key} 情况说明` });
      noteInput.value = old.get(noteName) || "";
      return h("tr", { dataset: { device: key } },
        h("td", {}, `${lane.lane_id}`),
        h("td", {}, deviceLabel(dev)),
        h("td", { class: health ? `h-${health}` : "" }, health ? label("health", health) : label("barrier", lane.barrier, "—")),
        h("td", { class: "verdicts" }, verdicts.map(([value, text]) => h("label", { class: "inline" },
          h("input", { type: "radio", name: `v:${key}`, value, required: true, "data-label": `${key} 检查结果`,
            checked: old.get(`v:${key}`) === value }), ` ${text}`)),
          h("span", { class: "field-error", "data-error-for": `v:${key}`, hidden: true })),
        h("td", {}, noteInput, h("span", { class: "field-error", "data-error-for": noteName, hidden: true })));
    });
    $("#check-devices").replaceChildren(...rows);
  }
  function openCheck(phase) {
    const form = $("#check-form");
    for (const r of form.querySelectorAll('input[name="phase"]')) r.checked = r.value === phase;
    buildCheckTable();
    showDialog("check-dialog");
  }
  function checkRemarks(form) {
    const phase = val(form, "phase") || (form.querySelector('input[name="phase"]:checked') || {}).value;
    const lines = [`${label("duty", phase, "设备检查")} 设备情况：`];
    for (const { lane, dev } of checkRows()) {
      const key = `${lane.lane_id}/${dev}`;
      const verdict = (form.querySelector(`input[name="v:${CSS.escape(key)}"]:checked`) || {}).value;
      const note = val(form, `n:${key}`);
      lines.push(`${key} ${deviceLabel(dev)}：${label("verdict", verdict)}${note ? ` — ${note}` : ""}`);
    }
    const other = val(form, "remarks");
    if (other) lines.push(`其他说明：${other}`);
    return lines.join("\n");
  }

  // ---- incidents and tickets

  function partyBoxes(container, name, values) {
    if (container.children.length) return;
    container.replaceChildren(...Object.entries(S.labels.party || {}).map(([code, text]) =>
      h("label", { class: "inline" }, h("input", { type: "checkbox", name, value: values === "code" ? code : text }), ` ${text}`)));
  }
  function checked(form, name) {
    return [...form.querySelectorAll(`input[name="${name}"]:checked`)].map((el) => el.value);
  }
  function incidentSummary(i) {
    return `${i.incident_id} · ${laneLabel(i.lane_id)} · ${incidentText(i)}`;
  }
  function openAccountInc(i) {
    const form = $("#account-inc-form");
    if (WS.incident !== i.incident_id) { form.reset(); WS.incident = i.incident_id; }
    form.querySelector(".incident-summary").textContent = incidentSummary(i);
    partyBoxes(form.querySelector(".party-boxes"), "notified", "text");
    showDialog("account-inc-dialog");
  }
  let closing = null;
  function openCloseInc(i) {
    const form = $("#close-inc-form");
    if (closing !== i.incident_id) { form.reset(); closing = i.incident_id; }
    form.querySelector(".incident-summary").textContent = incidentSummary(i);
    showDialog("close-inc-dialog");
  }
  function openIncident() {
    const form = $("#incident-form");
    fillLanes(form.elements.lane_id);
    fillOptions(form.elements.kind, Object.entries(S.labels.incident_kind || {}), "请选择");
    showDialog("incident-dialog");
  }
  function ticketDevices(form) {
    const lane = S.lanes.get(form.elements.lane_id.value);
    const devices = lane ? lane.check_devices || (lane.devices || []).map((d) => d.name) : ["journal"];
    fillOptions(form.elements.device, devices.map((d) => [d, deviceLabel(d)]), "请选择");
  }
  function openTicket() {
    const form = $("#ticket-form");
    fillLanes(form.elements.lane_id);
    ticketDevices(form);
    showDialog("ticket-dialog");
  }
  function advanceSections(form) {
    const to = form.elements.to.value;
    const notified = form.querySelector(".for-notified");
    const fixed = form.querySelector(".for-fixed");
    notified.disabled = notified.hidden = to !== "notified";
    fixed.disabled = fixed.hidden = to !== "fixed";
  }
  function openAdvance(t) {
    const form = $("#advance-form");
    if (WS.ticket !== `${t.ticket_id}/${t.state}`) { form.reset(); WS.ticket = `${t.ticket_id}/${t.state}`; }
    form.dataset.ticket = t.ticket_id;
    form.querySelector(".ticket-summary").textContent =
      `${t.ticket_id} · ${laneLabel(t.lane_id)} ${deviceLabel(t.device)} · 当前：${label("ticket_state", t.state)} · ${t.reason || ""}`;
    fillOptions(form.elements.to, (t.next || []).map((s) => [s, label("ticket_state", s)]), (t.next || []).length > 1 ? "请选择" : null);
    fillOptions(form.elements.category, Object.entries(S.labels.category || {}), "请选择");
    partyBoxes(form.querySelector(".party-boxes"), "parties", "code");
    advanceSections(form);
    showDialog("advance-dialog");
  }

  // ---- the checkpoint ledger: a download, refused beside its fields

  const isoDay = (d) => d.toISOString().slice(0, 10);
  function siteToday() {
    return S.today || isoDay(new Date());
  }
  function ledgerUrl(form) {
    const fmt = (form.querySelector('input[name="format"]:checked') || {}).value || "";
    const q = new URLSearchParams({ from: val(form, "from"), to: val(form, "to"), format: fmt });
    return `/api/v1/ledger?${q.toString()}`;
  }
  function openLedger() {
    const form = $("#ledger-form");
    const box = form.querySelector(".format-boxes");
    if (!box.children.length) {
      box.replaceChildren(...Object.entries(S.labels.ledger_format || { xlsx: "xlsx", csv: "csv" }).map(([code, text], n) =>
        h("label", { class: "inline" }, h("input", { type: "radio", name: "format", value: code, required: true,
          checked: n === 0, "data-label": "格式" }), ` ${text}`)));
    }
    if (!form.elements.to.value) {
      const today = siteToday();
      const start = new Date(`${today}T00:00:00Z`);
      start.setUTCDate(start.getUTCDate() - 14); // the regulation's 15-day period, today included
      form.elements.from.value = isoDay(start);
      form.elements.to.value = today;
    }
    showDialog("ledger-dialog");
  }
  async function submitLedger(ev) {
    ev.preventDefault();
    const form = $("#ledger-form");
    clearErrors(form);
    let ok = checkFields(form);
    const from = val(form, "from");
    const to = val(form, "to");
    if (ok && to < from) { setError(form, "to", "截止日期不能早于起始日期"); ok = false; }
    if (ok && (Date.parse(to) - Date.parse(from)) / 86400000 > 366) { setError(form, "to", "一次最多导出 366 天"); ok = false; }
    if (!ok) { focusFirstError(form); return; }
    const url = ledgerUrl(form);
    form.dataset.url = url;
    const btn = form.querySelector('button[type="submit"]');
    btn.disabled = true;
    let resp;
    try {
      resp = await fetch(url, { headers: getToken() ? { Authorization: `Bearer ${getToken()}` } : {} });
    } catch (err) {
      btn.disabled = false;
      setError(form, null, "无法连接本机服务，请检查网络后重试");
      return;
    }
    btn.disabled = false;
    if (!resp.ok) {
      let data = null;
      try { data = await resp.json(); } catch (err) { data = null; }
      const why = data && (data.error || data.message) ? ` — ${data.error || data.message}` : "";
      const message = resp.status === 404 ? `本机没有台账下载接口（404）${why}` : `下载被拒绝（${resp.status}）${why}`;
      showRefusal(form, { status: resp.status, body: data || {}, message }, { format: "format" });
      focusFirstError(form);
      return;
    }
    const blob = await resp.blob();
    const disp = resp.headers.get("Content-Disposition") || "";
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disp);
    const fmt = new URLSearchParams(url.split("?")[1]).get("format");
    const name = m ? decodeURIComponent(m[1]) : `卡口登记台账_${from}_${to}.${fmt}`;
    const link = h("a", { href: URL.createObjectURL(blob), download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60000);
    const done = form.querySelector(".form-done");
    done.textContent = `已下载：${name}（${Math.max(1, Math.round(blob.size / 1024))} KB）`;
    done.hidden = false;
  }

  function setupWorkstation() {
    const open = {
      handover: () => withLogin(openHandover),
      check: (btn) => withLogin(() => openCheck(btn.dataset.phase)),
      video: () => withLogin(() => showDialog("video-dialog")),
      incident: () => withLogin(openIncident),
      ticket: () => withLogin(openTicket),
      ledger: () => openLedger(),
    };
    for (const btn of document.querySelectorAll("#duty-bar button[data-form]")) {
      btn.addEventListener("click", () => open[btn.dataset.form](btn));
    }

    bindForm("handover-form", {
      check: async (form) => {
        const me = (getUser() || {}).name;
        if (me && val(form, "incoming") === me) { setError(form, "incoming", "接班人不能是交班人本人"); return false; }
        if (!form.elements.confirmed.checked) return false; // said by checkFields
        // The server carries over what is open when it records; it must be what was confirmed.
        const found = await openItems();
        if (found && found.key !== WS.itemsKey) {
          WS.itemsKey = found.key;
          renderItems(found);
          form.elements.confirmed.checked = false;
          setError(form, "confirmed", "遗留事项刚有变化，请重新核对后再确认");
          return false;
        }
        return true;
      },
      path: () => "/api/v1/shifts/handover",
      body: (form) => ({ incoming: val(form, "incoming"), notes: val(form, "notes") }),
      codeFields: { malformed: "incoming" },
      done: (b) => `交接班已记录：${(b.event || {}).outgoing || ""} → ${(b.event || {}).incoming || ""}`,
    });

    bindForm("check-form", {
      check: (form) => {
        let ok = true;
        for (const { lane, dev } of checkRows()) {
          const key = `${lane.lane_id}/${dev}`;
          const verdict = (form.querySelector(`input[name="v:${CSS.escape(key)}"]:checked`) || {}).value;
          if (verdict === "faulty" && !val(form, `n:${key}`)) { setError(form, `n:${key}`, "故障须说明情况"); ok = false; }
        }
        if (ok && checkRemarks(form).length > 2000) { setError(form, "remarks", "检查记录过长（最多 2000 字），请精简说明"); ok = false; }
        return ok;
      },
      path: () => "/api/v1/shifts/checks",
      body: (form) => ({ phase: (form.querySelector('input[name="phase"]:checked') || {}).value, remarks: checkRemarks(form) }),
      codeFields: { malformed: "phase" },
      afterReset: () => $("#check-devices").replaceChildren(),
      done: (b) => {
        const faulty = /：故障/.test((b.event || {}).remarks || "");
        return `${label("duty", (b.event || {}).phase, "设备检查")}已记录` + (faulty ? "；发现故障的设备请在「故障上报」登记" : "");
      },
    });

    bindForm("video-form", {
      path: () => "/api/v1/shifts/video-notes",
      body: (form) => ({ note: val(form, "note") }),
      done: () => "视频监控记录已保存",
    });

    bindForm("incident-form", {
      path: () => "/api/v1/incidents",
      body: (form) => ({ lane_id: val(form, "lane_id") || SITE, kind: val(form, "kind"), reason: val(form, "reason") }),
      codeFields: { unknown_lane: "lane_id" },
      done: (b) => `已建立事件记录 ${(b.incident || {}).incident_id || ""}，请填写事故记录`,
    });

    bindForm("account-inc-form", {
      check: (form) => {
        const photos = val(form, "photos").split(/[,，]/).map((x) => x.trim()).filter(Boolean);
        if (photos.some((x) => x.length > 500)) { setError(form, "photos", "每个文件名最多 500 字"); return false; }
        return true;
      },
      path: () => `/api/v1/incidents/${encodeURIComponent(WS.incident)}/account`,
      body: (form) => {
        const body = { what: val(form, "what") };
        if (val(form, "plate")) body.plate = val(form, "plate");
        const photos = val(form, "photos").split(/[,，]/).map((x) => x.trim()).filter(Boolean);
        if (photos.length) body.photos = photos;
        const told = [...checked(form, "notified"), ...val(form, "notified_other").split(/[,，、]/).map((x) => x.trim()).filter(Boolean)];
        if (told.length) body.notified = told;
        return body;
      },
      codeFields: { incident_closed: null, unknown_incident: null },
      done: () => "事故记录已保存",
    });

    bindForm("close-inc-form", {
      path: () => `/api/v1/incidents/${encodeURIComponent(closing)}/close`,
      body: (form) => ({ summary: val(form, "summary") }),
      codeFields: { no_account: null, incident_closed: null },
      done: () => "事件已关闭",
    });

    const ticketForm = bindForm("ticket-form", {
      path: () => "/api/v1/tickets",
      body: (form) => ({ lane_id: val(form, "lane_id") || SITE, device: val(form, "device"), reason: val(form, "reason") }),
      codeFields: { ticket_open: "device", unknown_lane: "lane_id", not_a_fault: null },
      done: (b) => `已提交故障处理单 ${(b.ticket || {}).ticket_id || ""}`,
    });
    ticketForm.elements.lane_id.addEventListener("change", () => ticketDevices(ticketForm));

    const advanceForm = bindForm("advance-form", {
      check: (form) => {
        if (val(form, "to") === "notified" && !checked(form, "parties").length) {
          setError(form, "parties", "请选择已通报的对象"); return false;
        }
        return true;
      },
      path: (form) => `/api/v1/tickets/${encodeURIComponent(form.dataset.ticket)}/advance`,
      body: (form) => {
        const to = val(form, "to");
        const body = { to };
        if (val(form, "note")) body.note = val(form, "note");
        if (to === "notified") {
          body.parties = checked(form, "parties");
          if (val(form, "at")) body.at = val(form, "at");
        } else if (to === "fixed") {
          Object.assign(body, { cause: val(form, "cause"), solution: val(form, "solution"), category: val(form, "category") });
        }
        return body;
      },
      codeFields: { illegal_transition: "to", unknown_ticket: null },
      done: (b) => `故障处理单 ${(b.ticket || {}).ticket_id || ""}：${label("ticket_state", (b.ticket || {}).state, "")}`,
    });
    advanceForm.elements.to.addEventListener("change", () => advanceSections(advanceForm));

    $("#ledger-form").addEventListener("submit", submitLedger);
    watchEdits($("#ledger-form"));
    $("#ledger-form .cancel").addEventListener("click", () => $("#ledger-dialog").close());
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
      const then = WS.afterLogin;
      WS.afterLogin = null;
      if (then && who.user.name) then();
    });
    $("#token-clear").addEventListener("click", () => { setToken(""); $("#token-dialog").close(); });
    $("#token-cancel").addEventListener("click", () => $("#token-dialog").close());
    $("#token-dialog").addEventListener("close", () => { if (!getUser()) WS.afterLogin = null; });
    setupWorkstation();
    updateTokenButton();
    tick();
    setInterval(tick, 1000);
    connect();
  });
})();
