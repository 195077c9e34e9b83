"""Between a parsed request and an instance: hold it for a slot, lease one, send (and
retry what is safe to retry), relay the answer, release; websocket tunnels the same way.
proxy/http is the protocol library this uses; the pool is reached only through its lease."""
