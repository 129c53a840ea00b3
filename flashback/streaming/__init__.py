"""Dedicated streaming ports (INTERFACE §4): one listener, one file, one token.

A peer asks (through the tracker, or the local ``flashback stream``) for a
file; the owner opens a fresh listener on its host, port 0, guarded by a
``secrets.token_urlsafe(32)`` token, and answers ``file-stream-ready``. The
requester then fetches ``GET http://HOST:PORT/<token>`` directly, with Range
to resume. Modules, from the wire inward::

    manager    the daemon task: requests in, answers out, at most 16 ports,
               each port a task in a nursery the manager owns
    port       one listener: h11 connections, lifetime, stream-closed report
    (the body goes by flashback.zerocopy: os.sendfile, shared with the peer server)
    responses  sans-IO: request line + headers -> status, headers, byte range
               (the file part is flashback.protocol.file_plan, as on the peer server)
    lifetime   sans-IO: when a port has completed or expired (time is a parameter)
    source     safe path resolution + opening the one regular file

The daemon's glue -- feeding the manager the link's requests and routing its
answers (``daemon/stream_ports.py``), and the requester side behind the
control API's ``POST /stream`` (``daemon/stream_request.py``) -- lives in
``flashback.daemon``: this package knows nothing of the daemon, only the
manager's seam (a channel of requests in, a reply callable out).

Rules a user can rely on (the README repeats them):

* **Completed** means the GET responses of this port, counted by the bytes
  really handed to the kernel, have covered every byte of the file at least
  once -- one full download, or a broken one plus the ranged resume of the
  rest -- or a resumed copy (a ranged GET whose ``If-Range`` matched, as
  ``flashback stream`` sends when it finishes a partial file begun on an
  earlier port) has reached the last byte. A player that only probes the
  last few KiB (no If-Range) does not close the port.
  When a port completes it stops accepting at once (connection refused) and
  cuts any other, redundant, transfer still running.
* **Expiry**: the port closes after ``expires_in`` seconds (60) in which no
  right-token request was in flight and none ended; the clock starts at the
  announcement and restarts when a right-token response ends, so a download
  broken late can still resume. A transfer in progress is never cut by
  expiry (a stalled client is, after 30 s without socket progress).
* A wrong token is 403 and changes nothing: it neither spends nor extends
  the port.
"""
