// The twisted_rp dashboard: polls the admin API every second and renders pools, backends and
// routes; rates are computed from the difference between two polls.  No external assets.
"use strict";

const POLL_MS = 1000;
const previous = new Map(); // key -> {requests, failures, time}
let busy = false;

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function seconds(value) {
  if (value === null || value === undefined) return "–";
  if (value < 1) return (value * 1000).toFixed(value < 0.01 ? 1 : 0) + " ms";
  return value.toFixed(2) + " s";
}

// Requests per second and error share since the previous poll, for one counter pair.
function rates(key, requests, failures, now) {
  const before = previous.get(key);
  previous.set(key, {requests, failures, time: now});
  if (!before || now <= before.time) return {rate: null, errors: null};
  const done = requests - before.requests;
  const failed = failures - before.failures;
  return {
    rate: done / ((now - before.time) / 1000),
    errors: done > 0 ? failed / done : null,
  };
}

function rateText(rate) {
  return rate === null ? "–" : rate.toFixed(rate < 10 ? 1 : 0);
}

function errorCell(errors) {
  const text = errors === null ? "–" : (errors * 100).toFixed(errors < 0.1 ? 1 : 0) + " %";
  return el("td", {class: "num" + (errors ? " bad" : ""), text});
}

function message(text, isError) {
  const node = document.getElementById("message");
  node.hidden = !text;
  node.textContent = text || "";
  node.className = "message" + (isError ? " error" : "");
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: {"Content-Type": "application/json", "Accept": "application/json"},
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.error || response.status + " " + response.statusText);
  return data;
}

async function setState(pool, backend, state) {
  const done = {enabled: "Enabled", draining: "Draining", disabled: "Disabled"}[state];
  const question = state === "draining"
    ? `Drain ${backend} in pool ${pool}? It keeps its current sessions but gets no new ones.`
    : state === "disabled"
      ? `Disable ${backend} in pool ${pool}? It gets no requests at all, sticky ones included.`
      : `Enable ${backend} in pool ${pool}? It takes new requests again.`;
  if (!window.confirm(question)) return;
  try {
    await call("PATCH", `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(backend)}`, {state});
    message(`${done} ${backend} in pool ${pool}.`, false);
  } catch (error) {
    message(`Could not change ${backend}: ${error.message}`, true);
  }
  refresh();
}

async function reloadConfig() {
  if (!window.confirm("Reload the configuration file? An invalid file is refused and the running configuration stays.")) return;
  try {
    await call("POST", "api/reload");
    message("Configuration reloaded.", false);
  } catch (error) {
    message(`Reload refused: ${error.message}`, true);
  }
  refresh();
}

function health(backend) {
  if (!backend.healthy) return "down";
  if (backend.ejected) return "ejected";
  return "up";
}

function backendRow(pool, backend, now) {
  const {rate, errors} = rates(`b:${pool.name}/${backend.name}`, backend.requests, backend.failures, now);
  const state = health(backend);
  const actions = el("td", {class: "actions"});
  const button = (label, target) => el("button", {
    type: "button",
    class: `action action-${label.toLowerCase()}`,
    "data-backend": backend.name,
    onclick: () => setState(pool.name, backend.name, target),
  }, label);
  if (backend.state === "enabled") actions.append(button("Drain", "draining"), " ", button("Disable", "disabled"));
  else actions.append(button("Enable", "enabled"));
  return el("tr", {
      id: `backend-${pool.name}-${backend.name}`,
      class: "backend",
      "data-pool": pool.name,
      "data-backend": backend.name,
      "data-health": state,
      "data-state": backend.state,
    },
    el("td", {text: backend.name + (backend.backup ? " (backup)" : "")}),
    el("td", {text: backend.address}),
    el("td", {}, el("span", {class: `badge health health-${state}`, text: state})),
    el("td", {}, el("span", {class: `badge state state-${backend.state}`, text: backend.state})),
    el("td", {class: "num", text: String(backend.weight)}),
    el("td", {class: "num active", text: String(backend.active)}),
    el("td", {class: "num rate", text: rateText(rate)}),
    errorCell(errors),
    el("td", {class: "num", text: seconds(backend.latency.p50)}),
    el("td", {class: "num", text: seconds(backend.latency.p99)}),
    actions,
  );
}

function poolCard(pool, now) {
  const head = el("tr", {}, ...["Backend", "Address", "Health", "State", "Weight", "Active",
    "Req/s", "Errors", "p50", "p99", ""].map((name, index) =>
    el("th", {class: index >= 4 && index <= 9 ? "num" : "", text: name})));
  const up = pool.backends.filter((b) => b.healthy && !b.ejected).length;
  return el("div", {class: "pool", id: `pool-${pool.name}`, "data-pool": pool.name},
    el("h2", {}, `Pool ${pool.name}`,
      el("span", {class: "summary",
        text: `${up}/${pool.backends.length} healthy · ${pool.usable} usable · ` +
          `${pool.balance || ""} · ${pool.active} active · ${pool.retried} retries`})),
    el("table", {}, el("thead", {}, head),
      el("tbody", {}, ...pool.backends.map((backend) => backendRow(pool, backend, now)))));
}

function routeRow(route, now) {
  const failures = Object.entries(route.responses)
    .filter(([status]) => status.startsWith("5")).reduce((sum, [, count]) => sum + count, 0);
  const {rate, errors} = rates(`r:${route.name}`, route.requests, failures, now);
  return el("tr", {"data-route": route.name},
    el("td", {text: route.name}),
    el("td", {text: route.listeners.join(", ")}),
    el("td", {text: route.hosts.join(", ") || "any"}),
    el("td", {text: route.path_prefix}),
    el("td", {text: route.pool}),
    el("td", {class: "num", text: rateText(rate)}),
    errorCell(errors),
    el("td", {class: "num", text: seconds(route.latency.p50)}),
    el("td", {class: "num", text: seconds(route.latency.p99)}));
}

// Make `current` look like `fresh` in place, replacing only what differs, so that the nodes
// under the pointer (a button half-clicked) survive a refresh.
function morph(current, fresh) {
  if (current.nodeName !== fresh.nodeName ||
      (current.nodeName === "BUTTON" && current.className !== fresh.className)) {
    current.replaceWith(fresh);
    return;
  }
  if (current.nodeType === Node.TEXT_NODE) {
    if (current.data !== fresh.data) current.data = fresh.data;
    return;
  }
  for (const {name, value} of Array.from(fresh.attributes)) {
    if (current.getAttribute(name) !== value) current.setAttribute(name, value);
  }
  for (const {name} of Array.from(current.attributes)) {
    if (!fresh.hasAttribute(name)) current.removeAttribute(name);
  }
  morphChildren(current, Array.from(fresh.childNodes));
}

function morphChildren(parent, children) {
  const current = Array.from(parent.childNodes);
  if (current.length !== children.length) {
    parent.replaceChildren(...children);
    return;
  }
  current.forEach((node, index) => morph(node, children[index]));
}

async function refresh() {
  if (busy) return;
  busy = true;
  const status = document.getElementById("status");
  try {
    const [pools, routes] = await Promise.all([call("GET", "api/pools"), call("GET", "api/routes")]);
    const now = Date.now();
    morphChildren(document.getElementById("pools"), pools.map((pool) => poolCard(pool, now)));
    morphChildren(document.querySelector("#routes tbody"), routes.map((r) => routeRow(r, now)));
    status.dataset.status = "live";
    status.textContent = "live";
    document.getElementById("updated").textContent = "updated " + new Date(now).toLocaleTimeString();
  } catch (error) {
    status.dataset.status = "error";
    status.textContent = "no answer: " + error.message;
  } finally {
    busy = false;
  }
}

document.getElementById("reload").addEventListener("click", reloadConfig);
refresh();
setInterval(refresh, POLL_MS);
