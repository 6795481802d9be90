"""tests/infra: deployment checks (compose file, Prometheus/Grafana config, image entrypoint).

Puts this folder on sys.path so tests here can `import promql` (the dashboard PromQL
helper) whatever pytest's import mode.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
