// "Who can connect": refusals with an Allow button, the lists with Remove buttons.
// Only DOM text is written (textContent): names and ids come from other peers.
"use strict";
(function () {
  const error = document.getElementById("access-error");

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text == null ? "" : String(text);
    return td;
  }

  function button(label, cls, action) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = cls;
    b.textContent = label;
    b.addEventListener("click", action);
    return b;
  }

  async function post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "same-origin",
    });
    const payload = await response.json();
    if (!response.ok) {
      error.textContent = payload.error ? payload.error.message : "HTTP " + response.status;
      return;
    }
    error.textContent = "";
    render(payload);
  }

  function render(state) {
    document.getElementById("share-with").textContent = state.share_with;
    const attempts = document.querySelector("#attempts tbody");
    attempts.replaceChildren(...state.recent.map((a) => {
      const tr = document.createElement("tr");
      tr.dataset.fingerprint = a.fingerprint || "";
      const action = document.createElement("td");
      if (a.allowed) {
        action.textContent = "allowed";
      } else if (a.fingerprint) {
        action.append(button("Allow", "allow", () => post("/api/access/allow", { fingerprint: a.fingerprint })));
      }
      tr.append(cell(a.name || "?", "name"), cell(a.peer_id || "-", "id"),
                cell(a.fingerprint || "(no certificate)", "fp"), cell(a.reason), cell(a.count, "num"), action);
      return tr;
    }));
    if (!state.recent.length) {
      const tr = document.createElement("tr");
      const td = cell("nobody was refused since the daemon started", "muted");
      td.colSpan = 6;
      tr.append(td);
      attempts.replaceChildren(tr);
    }
    for (const list of ["allowed", "denied"]) {
      const body = document.querySelector("#" + list + " tbody");
      body.replaceChildren(...state[list].map((e) => {
        const tr = document.createElement("tr");
        tr.dataset.fingerprint = e.fingerprint;
        const action = document.createElement("td");
        action.append(button("Remove", "remove", () => post("/api/access/remove", { list: list, fingerprint: e.fingerprint })));
        tr.append(cell(e.name || "?", "name"), cell(e.peer_id || "-", "id"), cell(e.fingerprint, "fp"), action);
        return tr;
      }));
    }
    document.body.dataset.accessLoaded = "1";
  }

  async function refresh() {
    const response = await fetch("/api/access", { credentials: "same-origin" });
    if (response.ok) render(await response.json());
  }

  const source = new EventSource("/events");
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "snapshot" || event.event === "access-denied") refresh();
  };
  refresh();
})();
