// The replay suite's app on node's http server: `node node_app.js PORT` (see marker.py).
"use strict";
const http = require("http");
const crypto = require("crypto");

const DELAY_MS = 150;
const MISBEHAVE = { "/r/head-body": 200, "/r/head-late": 200, "/r/file": 200, "/r/204-body": 204, "/r/304-body": 304, "/r/overlong": 200 };

function late(rid) {
  const text = "late=" + (rid || "anon");
  return `HTTP/1.1 200 OK\r\nContent-Length: ${text.length}\r\nX-Replay-Late: ${text}\r\n\r\n${text}`;
}

http.createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const rid = req.headers["x-req-id"] || "anon";
    const sha = crypto.createHash("sha256").update(body).digest("hex").slice(0, 12);
    const mark = `seen=${rid};${req.method};${req.url};${body.length};${sha}`;
    const path = req.url.split("?")[0];
    if (path in MISBEHAVE) {
      const out = Buffer.from(late(rid), "latin1");
      const headers = { "X-Replay-Seen": mark };
      if (path === "/r/overlong") {
        res.writeHead(200, { ...headers, "Content-Length": "2" });
        res.end(Buffer.concat([Buffer.from("ok"), out]));
        return;
      }
      if (MISBEHAVE[path] === 200) headers["Content-Length"] = String(out.length);
      res.writeHead(MISBEHAVE[path], headers);
      if (path === "/r/head-late") {
        res.flushHeaders();
        setTimeout(() => res.end(out), DELAY_MS);
        return;
      }
      res.end(out);
      return;
    }
    res.writeHead(200, { "X-Replay-Seen": mark, "Content-Length": String(Buffer.byteLength(mark)) });
    res.end(mark);
  });
}).listen(Number(process.argv[2]), "127.0.0.1");
