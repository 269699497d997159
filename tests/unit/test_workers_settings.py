"""``WORKERS``: ``auto`` from the affinity mask and the cgroup quota (fake cgroup trees), its bounds, and the
``CURSOR_SECRET`` that several processes must share."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.cpus import MAX_WORKERS, affinity_cpus, available_cpus, cgroup_cpu_limit
from service.settings import Settings, SettingsError, load_settings
from service.supervisor import MAX_RESTART_DELAY_S, describe_exit, restart_delay

SECRET = "a-shared-cursor-secret-0123456789"


def fake_root(tmp_path: Path, proc_cgroup: str, files: dict[str, str]) -> Path:
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(proc_cgroup)
    for relative, text in files.items():
        path = tmp_path / "sys/fs/cgroup" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return tmp_path


def test_v2_quota_is_rounded_down(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "150000 100000"})
    assert cgroup_cpu_limit(root) == 1.5
    assert available_cpus(root, affinity=8) == 1


def test_v2_without_a_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "max 100000"})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root, affinity=6) == 6


def test_v2_the_tightest_limit_up_the_hierarchy_applies(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        {
            "kubepods/cpu.max": "300000 100000",
            "kubepods/pod1/cpu.max": "200000 100000",
            "kubepods/pod1/ctr/cpu.max": "max 100000",
        },
    )
    assert available_cpus(root, affinity=16) == 2


def test_v1_cfs_quota(tmp_path: Path) -> None:
    root = fake_root(
        tmp_path,
        "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n",
        {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
    )
    assert cgroup_cpu_limit(root) == 2.5
    assert available_cpus(root, affinity=4) == 2


def test_v1_without_a_quota_leaves_the_affinity(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "1:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"})
    assert cgroup_cpu_limit(root) is None
    assert available_cpus(root, affinity=3) == 3


def test_a_quota_below_one_cpu_still_runs_one_worker_and_the_count_is_bounded(tmp_path: Path) -> None:
    root = fake_root(tmp_path, "0::/\n", {"cpu.max": "50000 100000"})
    assert available_cpus(root, affinity=4) == 1
    unlimited = fake_root(tmp_path / "big", "0::/\n", {})
    assert available_cpus(unlimited, affinity=256) == MAX_WORKERS


def test_no_cgroup_files_at_all_leaves_the_affinity(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == min(affinity_cpus(), MAX_WORKERS)


def test_workers_auto_resolves_on_this_machine() -> None:
    settings = load_settings({"WORKERS": "auto", "CURSOR_SECRET": SECRET})
    assert settings.workers == available_cpus()
    assert 1 <= settings.workers <= MAX_WORKERS


@pytest.mark.parametrize("value", ["0", "65", "-1", "many", "2.5"])
def test_bad_workers_values_are_refused_in_one_line(value: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"WORKERS": value, "CURSOR_SECRET": SECRET})
    assert str(caught.value) == f"WORKERS={value} is invalid: must be auto or an integer >= 1 and <= 64"


def test_workers_default_to_one_and_need_no_cursor_secret() -> None:
    assert load_settings({}).workers == 1
    assert load_settings({"WORKERS": "1"}).workers == 1
    assert Settings(workers=4).workers == 4  # explicit construction: the caller's business


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"WORKERS": "2"}, "WORKERS=2"),
        ({"WORKERS": "auto"}, "WORKERS=auto"),
        ({"DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/db"}, "DATABASE_URL is set"),
        ({"WORKERS": "3", "DATABASE_URL": "postgresql://u:p@h/db"}, "WORKERS=3 and DATABASE_URL is set"),
    ],
)
def test_several_processes_need_a_cursor_secret(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(environ)
    message = str(caught.value)
    assert message.startswith(f"CURSOR_SECRET is required with {named}:"), message
    assert "\n" not in message and "u:p" not in message  # one line, no password from the URL
    with_secret = load_settings({**environ, "cursor_secret": SECRET})  # any case, as every variable
    assert with_secret.cursor_secret.get_secret_value() == SECRET
    # a maintenance command (migrate, copy-to-postgres, cleanup) signs no cursor: a one-off job needs no secret
    assert load_settings(environ, serving=False).workers >= 1


def test_restart_delay_grows_and_is_bounded() -> None:
    delays = [restart_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.0 and delays[1] > 0
    assert delays == sorted(delays) and max(delays) == MAX_RESTART_DELAY_S


def test_exits_are_described_by_code_or_signal() -> None:
    assert describe_exit(3) == "exit 3"
    assert describe_exit(-9) == "killed by SIGKILL"


def test_several_workers_cannot_share_an_in_memory_database() -> None:
    with pytest.raises(SettingsError, match="^WORKERS > 1 needs a database file the workers share"):
        load_settings({"WORKERS": "2", "CURSOR_SECRET": SECRET, "DATABASE_PATH": ":memory:"})
    assert load_settings({"DATABASE_PATH": ":memory:"}).database_path == ":memory:"
