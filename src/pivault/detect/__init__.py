"""Read budgets, the global detector, canary residents and alerts.

:class:`Budgets` charges every read to the caller's, its role's and the
vault's budgets over shared :class:`Counters` (in-process, a file shared by
the node's workers, or Redis; fail closed); :class:`GlobalDetector` watches vault-wide rates, distributed
enumeration and sweeps; :class:`CanaryRegistry` knows (under a keyring-held
key) which residents are canaries; :class:`AlertDispatcher` sends
:class:`Alert` s to a JSON-lines file, the ``alerts`` table and a signed
webhook. :class:`DetectGuard` wires all of it, and the audit trail, into the
Vault's door.
"""

from pivault.detect.alerts import (
    Alert,
    AlertDispatcher,
    JsonlSink,
    LogSink,
    TableSink,
    WebhookSignatureError,
    WebhookSink,
    ack_alert,
    list_alerts,
    sign_webhook,
    verify_webhook,
)
from pivault.detect.budgets import Budget, BudgetExceeded, BudgetPolicy, Budgets, Charge
from pivault.detect.canary import CanaryRegistry, seed
from pivault.detect.counters import (
    Counters,
    DetectUnavailable,
    MemoryCounters,
    RedisCounters,
    Refusal,
    counters_from_url,
)
from pivault.detect.detector import DetectorConfig, GlobalDetector, cell_of
from pivault.detect.filecounters import FileCounters
from pivault.detect.guard import DetectGuard

__all__ = [
    "Alert",
    "AlertDispatcher",
    "Budget",
    "BudgetExceeded",
    "BudgetPolicy",
    "Budgets",
    "CanaryRegistry",
    "Charge",
    "Counters",
    "DetectGuard",
    "DetectUnavailable",
    "DetectorConfig",
    "FileCounters",
    "GlobalDetector",
    "JsonlSink",
    "LogSink",
    "MemoryCounters",
    "RedisCounters",
    "Refusal",
    "TableSink",
    "WebhookSignatureError",
    "WebhookSink",
    "ack_alert",
    "cell_of",
    "counters_from_url",
    "list_alerts",
    "seed",
    "sign_webhook",
    "verify_webhook",
]
