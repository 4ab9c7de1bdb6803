"""The requester's side: find nodes, sign jobs, follow them, fail over, verify, fetch.

Data path: ``requester.Requester`` (facade) → ``discovery`` + ``ranking`` (which node) →
``failover`` (the state machine, over the ``transport.NodeTransport`` interface) →
``libp2p_transport`` (the job protocol on the wire) → ``pointillist.network``.
Importing this package loads neither libp2p nor torch; opening a session does.
"""

from .failover import Attempt, Hooks, NoNodeSucceeded, Outcome
from .requester import JobSpec, Requester, Session

__all__ = ["Attempt", "Hooks", "JobSpec", "NoNodeSucceeded", "Outcome", "Requester", "Session"]
