// Live peer list: server-sent events from the daemon (snapshot, then changes).
// Only DOM text is written (textContent), never HTML: names come from other peers.
"use strict";
(function () {
  const body = document.querySelector("#peers tbody");
  const count = document.getElementById("peer-count");
  const trackerState = document.getElementById("tracker-state");
  const live = document.getElementById("live");
  let peers = new Map();

  function cell(text, cls) {
    const td = document.createElement("td");
    if (cls) td.className = cls;
    td.textContent = text;
    return td;
  }

  function render() {
    const rows = [...peers.values()].sort((a, b) =>
      a.name === b.name ? (a.peer_id < b.peer_id ? -1 : 1) : (a.name < b.name ? -1 : 1));
    body.replaceChildren(...rows.map((peer) => {
      const tr = document.createElement("tr");
      tr.dataset.peerId = peer.peer_id;
      const name = cell(peer.name, "name");
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
      action.append(link);
      tr.append(name, cell(peer.peer_id, "id"), cell(peer.address), cell(peer.route, "route"), action);
      return tr;
    }));
    count.textContent = String(peers.size);
  }

  function setTracker(connected) {
    trackerState.textContent = connected ? "connected" : "not connected";
    trackerState.className = "badge " + (connected ? "on" : "off");
  }

  const source = new EventSource("/events");
  source.onopen = () => { live.textContent = "live"; };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  source.onmessage = (message) => {
    const event = JSON.parse(message.data);
    if (event.event === "snapshot") {
      peers = new Map(event.peers.map((p) => [p.peer_id, p]));
      setTracker(event.tracker.connected);
    } else if (event.event === "peer-joined" || event.event === "peer-updated") {
      peers.set(event.peer.peer_id, event.peer);
    } else if (event.event === "peer-left") {
      peers.delete(event.peer_id);
    } else if (event.event === "tracker-connected" || event.event === "tracker-disconnected") {
      setTracker(event.connected);
    }
    render();
    document.body.dataset.live = "1";
  };
})();
