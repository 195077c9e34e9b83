"""The Docker engine substrate the docker and swarm backends share: a lazily connected SDK
client with its health and SDK-error translation (client.py), the threads its blocking
calls run in (threads.py), the ping loop that waits out an engine marked down
(health.py), the raw unpause on the start path and the label of a paused spare
(unpause.py), engine URL schemes (urls.py) and the counted reason a container's or task's
end is reported as (reasons.py). It imports no backend package: both import it."""
