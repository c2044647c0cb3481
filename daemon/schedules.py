"""Work on a clock: the live monitors' scheduled check, the re-check of quarantined symbols,
the optional cron retrain of every symbol and the optional cron tuning (APScheduler; a job
that raises is logged and the scheduler keeps running)."""

from __future__ import annotations

from collections.abc import Callable

from apscheduler.job import Job
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from daemon.settings import Settings
from deploy.quarantine import RECHECK_SECONDS


class Schedules:
    """Starts on construction; ``stop`` does not wait for a job in progress."""

    def __init__(
        self,
        settings: Settings,
        *,
        check: Callable[[], None],
        retrain_all: Callable[[], None],
        recheck: Callable[[], None],
        tune_all: Callable[[], None] | None = None,
    ) -> None:
        self._jobs = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30},
        )
        self._jobs.add_job(
            check, IntervalTrigger(seconds=settings.monitor_check_seconds), id="live-monitors"
        )
        self._jobs.add_job(recheck, IntervalTrigger(seconds=RECHECK_SECONDS), id="quarantine")
        if settings.retrain_cron:
            self._jobs.add_job(
                retrain_all,
                CronTrigger.from_crontab(settings.retrain_cron, timezone="UTC"),
                id="cron-retrain",
            )
        if settings.tune_cron and tune_all is not None:
            # On a pool thread like every job here, never the ingest thread; max_instances 1:
            # a tuning round that outlasts its interval is not started twice.
            self._jobs.add_job(
                tune_all,
                CronTrigger.from_crontab(settings.tune_cron, timezone="UTC"),
                id="cron-tune",
            )
        self._jobs.start()

    def job(self, job_id: str) -> Job | None:
        """A scheduled job by id ("live-monitors", "quarantine", "cron-retrain", "cron-tune"),
        e.g. to run it now."""
        found: Job | None = self._jobs.get_job(job_id)
        return found

    def stop(self) -> None:
        self._jobs.shutdown(wait=False)
