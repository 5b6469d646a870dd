"""Parses Prometheus text (0.0.4) from stdin with prometheus_client's own parser, as a scraper
would: prints "ok <families>", or the parser's error and exits 1. Used by t/009-metrics.t."""
import sys

from prometheus_client.parser import text_string_to_metric_families

try:
    families = list(text_string_to_metric_families(sys.stdin.read()))
except Exception as e:  # the parser raises ValueError and others on bad input
    print(f"unparsable: {e}")
    sys.exit(1)
print(f"ok {len(families)}")
