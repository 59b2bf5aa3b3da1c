// tornado-echo console: an echo client on the browser's own WebSocket, and a live view of
// the server's figures polled from console/live once a second. No dependencies, no network
// beyond this server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const LOG_LIMIT = 200; // entries kept on screen
  const SHOWN_BYTES = 64; // of a binary payload, as hex
  const SHOWN_CHARS = 500; // of a text payload
  const POLL_MS = 1000;

  // -- formatting -------------------------------------------------------------------------

  function bytes(n) {
    if (n < 1024) return `${Math.round(n)} B`;
    const units = ["KB", "MB", "GB", "TB"];
    let value = n;
    let unit = -1;
    while (value >= 1024 && unit < units.length - 1) {
      value /= 1024;
      unit += 1;
    }
    return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
  }

  function count(n) {
    return Number(n).toLocaleString("en");
  }

  function rate(n) {
    return n >= 100 ? count(Math.round(n)) : Number(n).toFixed(1);
  }

  function hex(data, limit) {
    const shown = Array.from(data.subarray(0, limit), (b) => b.toString(16).padStart(2, "0"));
    return shown.join(" ") + (data.length > limit ? " …" : "");
  }

  function parseHex(text) {
    const digits = text.replace(/0x/gi, "").replace(/[\s:,-]/g, "");
    if (!/^[0-9a-f]*$/i.test(digits)) throw new Error("hex input may hold only 0-9, a-f, spaces, colons, commas and dashes");
    if (digits.length % 2) throw new Error(`hex input needs an even number of digits, got ${digits.length}`);
    const out = new Uint8Array(digits.length / 2);
    for (let i = 0; i < out.length; i += 1) out[i] = parseInt(digits.substr(2 * i, 2), 16);
    return out;
  }

  function equalBytes(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i += 1) if (a[i] !== b[i]) return false;
    return true;
  }

  // The echo endpoint relative to this page, so the page works wherever it is served from
  // (directly, or behind a proxy, over http or https).
  function defaultUrl() {
    const url = new URL(document.querySelector('meta[name="ws-path"]').content, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    return url.href;
  }

  // -- echo console ----------------------------------------------------------------------

  let socket = null;
  let pending = []; // sent and not yet echoed, in order: the server echoes in order
  const log = $("log");

  function setState(text) {
    $("state").textContent = text;
  }

  function setConnected(connected) {
    $("connect").disabled = connected;
    $("disconnect").disabled = !connected;
    $("send").disabled = !connected;
    $("url").readOnly = connected;
    $("subprotocols").readOnly = connected;
  }

  function addEntry(className, parts) {
    const item = document.createElement("li");
    item.className = className;
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      item.append(span, " ");
    }
    log.prepend(item);
    while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
    return item;
  }

  function describe(kind, data) {
    return kind === "text" ? (data.length > SHOWN_CHARS ? `${data.slice(0, SHOWN_CHARS)}…` : data) : hex(data, SHOWN_BYTES);
  }

  function size(kind, data) {
    return kind === "text" ? new TextEncoder().encode(data).length : data.length;
  }

  function connect(event) {
    event.preventDefault();
    if (socket) return;
    const protocols = $("subprotocols").value.split(",").map((p) => p.trim()).filter(Boolean);
    let ws;
    try {
      ws = new WebSocket($("url").value.trim(), protocols);
    } catch (error) {
      // A malformed URL or subprotocol: say so next to the form, not in the console.
      setState(`cannot connect: ${error.message}`);
      return;
    }
    ws.binaryType = "arraybuffer";
    socket = ws;
    pending = [];
    setConnected(true);
    setState("connecting…");
    $("extensions").textContent = "–";
    $("protocol").textContent = "–";
    $("close").textContent = "–";
    ws.addEventListener("open", () => {
      setState("open");
      $("extensions").textContent = ws.extensions || "none";
      $("protocol").textContent = ws.protocol || "none";
      $("message").focus();
    });
    ws.addEventListener("message", (msg) => received(msg.data));
    ws.addEventListener("close", (ev) => {
      socket = null;
      setConnected(false);
      setState("closed");
      $("close").textContent = `${ev.code}${ev.reason ? ` ${ev.reason}` : ""}${ev.wasClean ? "" : " (not clean)"}`;
      $("close").dataset.code = String(ev.code);
      if (pending.length) addEntry("note", [["meta", `${pending.length} message(s) sent without an echo before the close`]]);
      pending = [];
    });
  }

  function received(data) {
    const now = performance.now();
    const kind = typeof data === "string" ? "text" : "binary";
    const payload = kind === "text" ? data : new Uint8Array(data);
    const sent = pending.shift();
    if (!sent) {
      addEntry("note", [["meta", `unexpected ${kind} message, ${bytes(size(kind, payload))}`], ["payload", describe(kind, payload)]]);
      return;
    }
    const equal = sent.kind === kind && (kind === "text" ? sent.data === payload : equalBytes(sent.data, payload));
    const item = sent.item;
    item.dataset.equal = String(equal);
    item.dataset.rtt = (now - sent.at).toFixed(3);
    item.querySelector(".verdict").textContent = `echo ${equal ? "equal" : "DIFFERENT"} after ${(now - sent.at).toFixed(1)} ms`;
    if (!equal) item.append(Object.assign(document.createElement("span"), { className: "payload", textContent: `got ${kind}: ${describe(kind, payload)}` }));
  }

  async function send(event) {
    event.preventDefault();
    const error = $("send-error");
    error.textContent = "";
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      error.textContent = "not connected";
      return;
    }
    const choice = document.querySelector('input[name="kind"]:checked').value;
    let kind = "binary";
    let data;
    try {
      if (choice === "text") {
        kind = "text";
        data = $("message").value;
      } else if (choice === "hex") {
        data = parseHex($("message").value);
      } else {
        const file = $("file").files[0];
        if (!file) throw new Error("choose a file first");
        data = new Uint8Array(await file.arrayBuffer());
      }
    } catch (problem) {
      error.textContent = problem.message;
      return;
    }
    if (!socket) return; // closed while the file was read
    const item = addEntry("sent", [
      ["meta", `sent ${kind}, ${bytes(size(kind, data))}`],
      ["verdict", "waiting for the echo…"],
      ["payload", describe(kind, data)],
    ]);
    item.dataset.kind = kind;
    item.dataset.size = String(size(kind, data));
    pending.push({ kind, data, item, at: performance.now() });
    socket.send(data);
  }

  function chooseKind() {
    const choice = document.querySelector('input[name="kind"]:checked').value;
    $("file-field").hidden = choice !== "file";
    $("message-field").hidden = choice === "file";
    $("send-error").textContent = "";
  }

  // -- live view ---------------------------------------------------------------------------

  const HANDSHAKES = { accepted: "accepted", 403: "403 origin refused", 500: "500 not a valid upgrade", 503: "503 full or draining" };
  const CLOSE_NAMES = {
    1000: "normal", 1001: "going away", 1002: "protocol error", 1003: "unsupported data", 1005: "no status",
    1006: "abnormal", 1007: "invalid data", 1008: "policy", 1009: "too big", 1011: "server error",
  };
  let token = "";
  let lastHistory = null;

  function fillRows(tbody, rows) {
    const fresh = rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach(([text, numeric]) => {
        const td = document.createElement("td");
        td.textContent = text;
        if (numeric) td.className = "num";
        tr.append(td);
      });
      return tr;
    });
    tbody.replaceChildren(...fresh);
  }

  function drawChart(history) {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, width, height);
    const column = history.fields.indexOf("messages_in");
    const points = history.points;
    if (points.length < 2) {
      canvas.setAttribute("aria-label", "Messages per second: not enough data yet");
      return;
    }
    const span = 300 * history.every_s;
    const end = points[points.length - 1][0];
    const values = points.map((p) => p[column]);
    const peak = Math.max(...values);
    const top = Math.max(1, peak);
    const pad = 4 * ratio;
    const x = (t) => width - ((end - t) / span) * width;
    const y = (v) => height - pad - (v / top) * (height - 2 * pad - 12 * ratio);
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(x(p[0]), y(p[column])) : ctx.moveTo(x(p[0]), y(p[column]))));
    ctx.strokeStyle = "#1f6feb";
    ctx.lineWidth = 1.5 * ratio;
    ctx.stroke();
    ctx.lineTo(x(end), height);
    ctx.lineTo(x(points[0][0]), height);
    ctx.closePath();
    ctx.fillStyle = "rgba(31, 111, 235, 0.12)";
    ctx.fill();
    ctx.fillStyle = "#57606a";
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    ctx.fillText(`max ${rate(peak)}/s`, pad, 11 * ratio);
    const minutes = Math.max(1, Math.round((end - points[0][0]) / 60));
    canvas.setAttribute("aria-label", `Messages per second over the last ${minutes} min: now ${rate(values[values.length - 1])}, at most ${rate(peak)}`);
    canvas.dataset.peak = String(peak);
  }

  function showFigures(f) {
    $("open").textContent = count(f.connections.open);
    $("opened").textContent = count(f.connections.total);
    $("messages").textContent = count(f.traffic.messages_out);
    $("messages").dataset.value = String(f.traffic.messages_out);
    const r = f.rates;
    $("msg-rate").textContent = r ? `${rate(r.messages_in)} · ${rate(r.messages_out)}` : "–";
    $("msg-rate").dataset.value = r ? String(r.messages_in) : "";
    $("byte-rate").textContent = r ? `${bytes(r.bytes_in)} · ${bytes(r.bytes_out)}` : "–";
    $("lag").textContent = r && r.lag_ms !== null ? `${r.lag_ms.toFixed(2)} ms` : "–";
    const store = $("store");
    store.textContent = f.store.available ? `available, ${count(f.store.written)} records written` : "database unreachable";
    store.className = f.store.available ? "" : "down";
    const backlog = $("store-backlog");
    backlog.textContent = `${count(f.store.queued)} · ${count(f.store.spooled)} · ${count(f.store.lost)}`;
    backlog.className = f.store.lost ? "down" : "";
    fillRows($("handshakes"), Object.entries(f.handshakes).map(([k, v]) => [[HANDSHAKES[k] || k], [count(v), true]]));
    fillRows(
      $("close-codes"),
      Object.entries(f.close_codes).map(([key, v]) => {
        const [code, end] = key.split(" ");
        return [[`${code} ${CLOSE_NAMES[code] || ""}`.trim()], [end.replace("_", " ")], [count(v), true]];
      }),
    );
    lastHistory = f.history;
    drawChart(f.history);
    if (f.sessions) showSessions(f.sessions);
  }

  function showSessions(sessions) {
    const table = $("sessions");
    if (sessions.error) {
      $("sessions-status").textContent = sessions.error;
      table.hidden = true;
      return;
    }
    $("sessions-status").textContent = `${sessions.rows.length} most recent sessions`;
    table.hidden = false;
    fillRows(
      table.tBodies[0],
      sessions.rows.map((s) => [
        [s.opened_at.replace("T", " ").replace(/\.\d+/, "")],
        [s.peer || ""],
        [s.close_code === null ? "open" : `${s.close_code} ${s.end_state || ""}`],
        [count(s.messages_in || 0), true],
        [bytes(s.bytes_in || 0), true],
      ]),
    );
  }

  async function poll() {
    const status = $("live-status");
    if (document.hidden) {
      // A tab nobody looks at asks for nothing; it catches up when shown again.
      window.setTimeout(poll, POLL_MS);
      return;
    }
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const answer = await fetch("console/live", { headers, cache: "no-store" });
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      const figures = await answer.json();
      showFigures(figures);
      status.textContent = `updated ${new Date(figures.time * 1000).toLocaleTimeString("en-GB")}`;
      status.className = "";
    } catch (problem) {
      status.textContent = `server unreachable (${problem.message}); retrying`;
      status.className = "down";
    }
    window.setTimeout(poll, POLL_MS);
  }

  // -- wiring ------------------------------------------------------------------------------

  $("url").value = defaultUrl();
  $("connect-form").addEventListener("submit", connect);
  $("disconnect").addEventListener("click", () => socket && socket.close(1000, "closed from the console"));
  $("send-form").addEventListener("submit", send);
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) $("send-form").requestSubmit();
  });
  document.querySelectorAll('input[name="kind"]').forEach((radio) => radio.addEventListener("change", chooseKind));
  $("clear").addEventListener("click", () => log.replaceChildren());
  $("token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    $("sessions-status").textContent = token ? "loading…" : "enter the admin token";
  });
  window.addEventListener("resize", () => lastHistory && drawChart(lastHistory));
  setConnected(false);
  chooseKind();
  poll();
})();
