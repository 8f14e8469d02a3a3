"""Existing access logs (nginx, HAProxy) into connection records: assessment before deployment."""

from connwise.telemetry.ingest.base import FileSummary, IngestSummary, ingest
from connwise.telemetry.ingest.haproxy import HaproxyParser
from connwise.telemetry.ingest.nginx import NginxParser
from connwise.telemetry.ingest.parallel import ingest_sqlite

__all__ = ["FileSummary", "HaproxyParser", "IngestSummary", "NginxParser", "ingest",
           "ingest_sqlite"]
