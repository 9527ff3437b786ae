"""Retention over a simulated calendar: exactly what the policy says is kept."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from jobs.backup.backup.retention import backups_to_keep
from jobs.backup.catalog import DatabaseDump, Manifest
from jobs.backup.settings import RetentionPolicy
from jobs.backup.status import human_size, ready_condition

NOW = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)  # a Sunday, an hour after the nightly backup


def _backup(day: date, hour: int = 2) -> Manifest:
    moment = datetime(day.year, day.month, day.day, hour, 0, tzinfo=UTC)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Manifest(
        backup_id=moment.strftime("%Y%m%dT%H%M%SZ"),
        dumps=[DatabaseDump("db", "d", 1, 1, "x", [])],
        server_version="15",
        pg_dump_version="15",
        start_time=stamp,
        end_time=stamp,
        compression="zstd",
        compression_level=3,
        generation=1,
        resource="ns/n",
        run_id="r",
    )


def _nightly(first: date, last: date) -> list[Manifest]:
    days = (last - first).days
    return [_backup(last - timedelta(days=n)) for n in range(days + 1)]  # newest first


def _ids(*days: date) -> set[str]:
    return {_backup(d).backup_id for d in days}


def test_calendar_policy_keeps_exactly_the_union_of_its_rules() -> None:
    backups = _nightly(date(2025, 10, 19), date(2026, 11, 22))
    policy = RetentionPolicy(keep_last=3, keep_daily=7, keep_weekly=4, keep_monthly=6)
    expected = _ids(
        *(date(2026, 11, d) for d in range(16, 23)),  # daily: the last 7 days (covers keepLast 3)
        date(2026, 11, 15),
        date(2026, 11, 8),
        date(2026, 11, 1),  # weekly: newest of ISO weeks 46, 45, 44
        date(2026, 10, 31),
        date(2026, 9, 30),
        date(2026, 8, 31),
        date(2026, 7, 31),
        date(2026, 6, 30),  # monthly
    )
    assert backups_to_keep(backups, policy, NOW) == expected


def test_periods_without_backups_do_not_use_up_the_count() -> None:
    # Backups only on the 1st and 15th: keepDaily 3 keeps the three newest such days.
    backups = [_backup(date(2026, m, d)) for m in (11, 10, 9) for d in (15, 1)]
    assert backups_to_keep(backups, RetentionPolicy(keep_daily=3), NOW) == _ids(
        date(2026, 11, 15), date(2026, 11, 1), date(2026, 10, 15)
    )


def test_max_age_and_keep_last() -> None:
    backups = _nightly(date(2026, 11, 1), date(2026, 11, 22))
    assert backups_to_keep(backups, RetentionPolicy(max_age=timedelta(days=3)), NOW) == _ids(
        date(2026, 11, 22), date(2026, 11, 21), date(2026, 11, 20)
    )
    assert backups_to_keep(backups, RetentionPolicy(keep_last=2), NOW) == _ids(date(2026, 11, 22), date(2026, 11, 21))


def test_the_newest_backup_is_never_deleted() -> None:
    backups = _nightly(date(2026, 10, 1), date(2026, 10, 10))  # all older than the max age
    assert backups_to_keep(backups, RetentionPolicy(max_age=timedelta(days=1)), NOW) == _ids(date(2026, 10, 10))


def test_no_rule_means_keep_everything() -> None:
    backups = _nightly(date(2026, 1, 1), date(2026, 11, 22))
    assert backups_to_keep(backups, RetentionPolicy(), NOW) == {b.backup_id for b in backups}


def test_ready_goes_stale_after_the_bound() -> None:
    newest = _backup(date(2026, 11, 21))
    assert ready_condition(newest, timedelta(hours=26), NOW)[1:3] == ("True", "Completed")
    assert ready_condition(newest, timedelta(hours=12), NOW)[1:3] == ("False", "Stale")
    assert ready_condition(None, timedelta(hours=26), NOW)[1:3] == ("False", "NoBackup")
    assert ready_condition(newest, timedelta(hours=26), NOW, ("DumpFailed", "x"))[1:3] == ("False", "DumpFailed")


def test_human_sizes() -> None:
    assert [human_size(n) for n in (0, 1023, 1024, 5 * 1024**3 // 2)] == ["0 B", "1023 B", "1.0 KiB", "2.5 GiB"]
