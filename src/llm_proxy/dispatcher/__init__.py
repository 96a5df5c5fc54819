"""The dispatcher: events from the bus to observability services, at least once.

    runner.py      composition root of a dispatcher process (bus, sink, transformer, health)
    service.py     Dispatcher: collect a batch → transform → deliver → ack / dead-letter
    transform.py   Event → SinkRecord (decode.py, sse_merge.py, shapes.py, tokens.py; cost from
                   telemetry/cost.py)
    delivery.py    RetryingSink, SplittingSink: delivery policy around any sink (backoff.py)
    sinks/         one module per service, named in `sinks.SINKS`
    health.py      /health and /metrics
    deadletter.py  the dead-letter stream; replay.py: send events from a file or dead letters
    daemon.py      --detach
"""
