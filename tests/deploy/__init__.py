from typing import Any

FIGURES: dict[str, Any] = {}  # filled by the deployment test, printed in the run's summary
