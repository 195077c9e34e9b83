"""The HTTP/1.1 protocol library of the data path: the client-facing server and request,
parsing and validation, response framing, header rules, flow control and body queues, and
the instance-facing upstream client. It knows nothing of the pool: forwarding and tunnels
over it live in proxy/forwarding."""
