"""Timer trigger: the daily fleet sweep."""

from __future__ import annotations

import logging

import azure.functions as func

from functions._services import rotation, services, to_jsonable
from shared.domain.rotation import RotationService

logger = logging.getLogger(__name__)

bp = func.Blueprint()


def handle_sweep(timer: func.TimerRequest, service: RotationService) -> dict[str, object]:
    if timer.past_due:
        logger.warning("daily_sweep: the timer is past due; sweeping now")
    plan = to_jsonable(service.sweep())
    summary = plan if isinstance(plan, dict) else {"result": plan}
    counts = summary.get("counts", {})
    logger.info("daily_sweep: done %s", counts if counts else summary)
    return summary


@bp.timer_trigger(schedule="%CERTROLL_SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False)
def daily_sweep(timer: func.TimerRequest) -> None:
    handle_sweep(timer, rotation())
    try:  # a campaign whose chain of messages broke goes on
        services().campaign_service.tick()
    except Exception:
        logger.exception("daily_sweep: campaigns not continued")
    from shared.observability import record_fleet

    record_fleet(services())  # the fleet gauges (docs/operations.md); never raises
