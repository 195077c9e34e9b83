"""The data path: the client-facing HTTP/1.1 server, the instance-facing upstream client,
and what runs between them (forwarding, tunnels, header rules, body queues). Nothing here
reaches into the pool beyond acquire/release."""
