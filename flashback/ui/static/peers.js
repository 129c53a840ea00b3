// Live peer list: server-sent events from the daemon (snapshot, then changes).
// Rows are tracker, LAN and book peers, keyed by `key` (a tracker peer's id, else
// its fingerprint); a tracker change can hide or reveal LAN/book rows, and a LAN
// peer found or lost changes them, so the whole list is fetched again then.
// Only DOM text is written (textContent), never HTML: names come from other peers.
"use strict";
(function () {
  const body = document.querySelector("#peers tbody");
  const count = document.getElementById("peer-count");
  const trackerState = document.getElementById("tracker-state");
  const live = document.getElementById("live");
  let peers = new Map();

  function cell(text, cls, title) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    if (title) td.title = title;
    td.textContent = text;
    return td;
  }

  function render() {
    const rows = [...peers.values()].sort((a, b) =>
      a.name === b.name ? (a.key < b.key ? -1 : 1) : (a.name < b.name ? -1 : 1));
    body.replaceChildren(...rows.map((peer) => {
      const tr = document.createElement("tr");
      tr.dataset.key = peer.key;
      tr.dataset.peerId = peer.peer_id || "";
      tr.dataset.source = peer.source;
      const name = cell("", "name");
      const named = document.createElement("a");
      named.className = "peer-link";
      named.href = peer.browse;
      named.textContent = peer.name;
      name.append(named);
      if (peer.self) {
        const you = document.createElement("span");
        you.className = "badge";
        you.textContent = "you";
        name.append(" ", you);
      }
      const link = document.createElement("a");
      link.className = "browse";
      link.href = peer.browse;
      link.textContent = "browse";
      const action = document.createElement("td");
      action.className = "act";
      action.append(link);
      tr.append(name, cell(peer.source, "source"),
        cell(peer.fingerprint_short, "fp", peer.fingerprint || ""),
        cell(peer.last_seen_human, "seen", peer.last_seen),
        cell(peer.route, "route"),
        cell(peer.address, "addr", "peer id " + (peer.peer_id || "-")), action);
      return tr;
    }));
    count.textContent = String(peers.size);
  }

  // One fetch at a time; changes meanwhile ask for one more after it (a busy LAN
  // announcing and leaving costs one request in flight per page, not one per event).
  let fetching = false;
  let again = false;

  function refetch() {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    fetch("/api/peers", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((state) => {
        if (state) {
          peers = new Map(state.peers.map((p) => [p.key, p]));
          render();
        }
      })
      .catch(() => {})
      .finally(() => {
        fetching = false;
        if (again) {
          again = false;
          refetch();
        }
      });
  }

  function setTracker(connected) {
    trackerState.textContent = connected ? "connected" : "not connected";
    trackerState.className = "badge " + (connected ? "on" : "off");
  }

  // heartbeats move "last seen" without an event: read the list again now and then
  setInterval(refetch, 15000);

  const source = new EventSource("/events");
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "snapshot") {
      peers = new Map(event.peers.map((p) => [p.key, p]));
      setTracker(event.tracker.connected);
    } else if (event.event === "peer-joined" || event.event === "peer-updated") {
      for (const [key, row] of peers) {  // the tracker's row stands for its LAN/book row
        if (row.source !== "tracker" && row.fingerprint && row.fingerprint === event.peer.fingerprint) {
          peers.delete(key);
        }
      }
      peers.set(event.peer.key, event.peer);
    } else if (event.event === "peer-left") {
      peers.delete(event.peer_id);  // a tracker row's key is its peer id
      refetch();  // its LAN or book row, if any, shows again
    } else if (event.event === "tracker-connected" || event.event === "tracker-disconnected") {
      setTracker(event.connected);
      refetch();
    } else if (event.event === "lan-peer-found" || event.event === "lan-peer-lost") {
      refetch();  // the merged list: a LAN row may stand for or behind another source's
    }
    render();
    document.body.dataset.live = "1";
  };
})();
