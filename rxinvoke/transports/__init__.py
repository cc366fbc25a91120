"""Transports: runs and their events across processes and machines.

- ``base``    the :class:`~rxinvoke.transports.base.Transport` seam (run event streams, the
              run queue with leases, cancel requests) that a broker implements
- ``redis``   :class:`~rxinvoke.transports.redis.RedisTransport`: Redis Streams (extra ``[redis]``)
- ``mirror``  :class:`~rxinvoke.transports.mirror.EventMirror`: a runtime's envelopes to the
              run streams, batched, never blocking a run
- ``remote``  :class:`~rxinvoke.transports.remote.RemoteRuns`: submit, observe with resume,
              cancel; :class:`~rxinvoke.transports.remote.RemoteRunStream`
- ``worker``  :class:`~rxinvoke.transports.worker.Worker`: executes queued runs under leases

Nothing here is imported by ``import rxinvoke``; the broker's client is imported when a
transport is made.
"""
